"""One S3 layer for both roles: the registry's key layout, s3:// URL parsing, client construction
and the one mapping of botocore failures to pifarm errors.

    layout    blobs/blake3/<hex>, models/<name>/<version>.json, snapshot.json (every store's keys)
    bucket    parse_url, make_client, mapped (botocore -> PifarmError), Bucket (keys under a prefix)

A leaf package: it imports only `pifarm.errors` and `pifarm.signed`, so both the registry's S3
store (`pifarm.registry.store_s3`) and the node's S3 source (`pifarm.initiator.s3_source`) build
on it. boto3 is imported only when a client is made or a failure mapped.
"""
