import pytest
from botocore.exceptions import ClientError


@pytest.mark.s3
def test_seaweed_refuses_unsigned_and_serves_signed(seaweed, s3_bucket):
    c = seaweed.client()
    c.create_bucket(Bucket=s3_bucket)
    c.put_object(Bucket=s3_bucket, Key="k", Body=b"hello")
    assert c.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"hello"
    import httpx

    r = httpx.get(f"{seaweed.endpoint}/{s3_bucket}/k")
    assert r.status_code == 403
    with pytest.raises(ClientError):
        seaweed.client(reader=True).put_object(Bucket=s3_bucket, Key="x", Body=b"no")
