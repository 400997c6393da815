"""S3 specifics on a real SeaweedFS: prefix, bucket versioning, and a layout a node can use alone."""

from __future__ import annotations

import json

import pytest

from pifarm.errors import ReadOnlyError
from pifarm.signed.integrity import StreamVerifier
from pifarm.registry.service import Registry
from pifarm.registry.settings import RegistrySettings
from pifarm.s3.bucket import parse_url as parse_s3_url
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_manifest, verify_snapshot
from tests.registry.conftest import s3_settings

pytestmark = pytest.mark.s3


@pytest.mark.parametrize("url,expect", [("s3://b", ("b", "")), ("s3://b/", ("b", "")),
                                        ("s3://b/farm/a/", ("b", "farm/a/")), ("s3://b/x", ("b", "x/"))])
def test_parse_s3_url(url, expect):
    assert parse_s3_url(url) == expect


def test_prefix_layout_versioning_and_reader_only_node(seaweed, s3_bucket, tmp_path, face_model):
    reg = Registry.open(tmp_path / "agg", {"registry": RegistrySettings(), "store": s3_settings(seaweed, s3_bucket)})
    try:
        m, _ = reg.publish(face_model, "face", channel="stable")
    finally:
        reg.close()
    admin = seaweed.client()
    assert admin.get_bucket_versioning(Bucket=s3_bucket)["Status"] == "Enabled"
    keys = sorted(o["Key"] for o in admin.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["farm/a/" + k for k in sorted([f"blobs/blake3/{m.files[0].digest[7:]}", "models/face/1.json",
                                                    "snapshot.json", "revisions/0.json", "revisions/1.json"])]
    # a node with read-only credentials works from S3 alone: snapshot -> manifest -> verified blob
    node = seaweed.client(reader=True)
    trusted = TrustedKeys.from_files([tmp_path / "agg" / "keys" / "signing.pub"])
    get = lambda k: node.get_object(Bucket=s3_bucket, Key="farm/a/" + k)["Body"].read()  # noqa: E731
    snap = verify_snapshot(json.loads(get("snapshot.json")), trusted)
    ptr = snap.channel("face", "stable")
    manifest = verify_manifest(json.loads(get(f"models/face/{ptr.version}.json")), trusted, ptr.manifest_digest)
    v = StreamVerifier(manifest.files[0].ref, source="s3")
    v.update(get(f"blobs/blake3/{manifest.files[0].ref.hex}"))
    v.finish()


def test_reader_credentials_make_the_registry_read_only(seaweed, s3_bucket, tmp_path, face_model):
    admin = seaweed.client()
    admin.create_bucket(Bucket=s3_bucket)
    st = s3_settings(seaweed, s3_bucket)
    st = type(st)(**{**st.__dict__, "access_key_id": seaweed.reader_key, "secret_access_key": seaweed.reader_secret})
    reg = Registry.open(tmp_path / "agg", {"registry": RegistrySettings(), "store": st})
    try:
        with pytest.raises(ReadOnlyError, match="unreachable"):
            reg.publish(face_model, "face")
        assert reg.revision == 0
    finally:
        reg.close()
    assert "Contents" not in admin.list_objects_v2(Bucket=s3_bucket)


def test_missing_bucket_without_create_is_read_only(seaweed, s3_bucket, tmp_path):
    st = s3_settings(seaweed, s3_bucket, create_bucket=False)
    reg = Registry.open(tmp_path / "agg", {"registry": RegistrySettings(), "store": st})
    try:
        assert "does not exist" in reg.read_only_reason
    finally:
        reg.close()
