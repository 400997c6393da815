"""S3 specifics on a real SeaweedFS: prefix, bucket versioning, and a layout a node can use alone."""

from __future__ import annotations

import json
import os

import pytest

from pifarm.errors import ConfigError, ReadOnlyError
from pifarm.signed.integrity import BlobRef, StreamVerifier, digest_file
from pifarm.registry.service import Registry
from pifarm.registry.settings import RegistrySettings
from pifarm.s3.bucket import parse_url as parse_s3_url
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_manifest, verify_snapshot
from tests.registry.conftest import s3_settings
from tests.support.wait import wait_for

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


def test_orphan_grace_below_upload_grace_is_refused():
    with pytest.raises(ConfigError, match="orphan_grace .* must be at least upload_grace"):
        RegistrySettings(upload_grace=3600, orphan_grace=60)


def test_shared_bucket_collects_an_abandoned_upload_and_a_reused_one_is_written_again(seaweed, s3_bucket, tmp_path,
                                                                                       face_model):
    """An upload no revision committed (a crash between upload and commit, on any aggregator) is
    collected once older than orphan_grace by the bucket's clock; a live blob never is; a publish
    reusing an old orphan writes it again, so its collection cannot race the publish."""
    reg = Registry.open(tmp_path / "agg", {"registry": RegistrySettings(upload_grace=0, orphan_grace=2),
                                           "store": s3_settings(seaweed, s3_bucket)})
    try:
        assert reg.log_ is not None  # the bucket is the commit point: the shared-bucket rules apply
        m, _ = reg.publish(face_model, "face", channel="stable")
        live = m.files[0].digest
        orphans = []
        for i in range(2):
            p = tmp_path / f"orphan{i}.bin"
            p.write_bytes(os.urandom(1000))
            ref = BlobRef(*digest_file(p))
            reg.store.put_blob(ref, p)  # uploaded, never committed: what a crash leaves behind
            orphans.append((ref, p))
        (gone_ref, _), (reused_ref, reused_src) = orphans
        wait_for(lambda: reg.store.blob_age(gone_ref.digest) > 2.0, "the orphan to pass its grace", 60, interval=0.2)
        before = reg.store.blob_age(reused_ref.digest)
        reg.publish(reused_src, "reused")  # half its grace is gone: written again, not trusted as is
        assert reg.store.blob_age(reused_ref.digest) < before
        assert gone_ref.digest in reg.collect_garbage()
        stored = set(reg.store.list_blobs())
        assert live in stored and reused_ref.digest in stored and gone_ref.digest not in stored
    finally:
        reg.close()


def test_a_single_writer_bucket_is_joined_only_after_its_writer_seeded_the_log(seaweed, s3_bucket, tmp_path,
                                                                                face_model):
    """A bucket written in single-writer mode has snapshot.json but no revisions/: a new aggregator
    starting first would seed the log with its empty state and fork the history. It is refused with
    what to do; once the original writer has started in shared mode, the newcomer joins."""
    single = s3_settings(seaweed, s3_bucket, shared="no")
    reg = Registry.open(tmp_path / "old", {"registry": RegistrySettings(), "store": single})
    try:
        reg.publish(face_model, "face", channel="stable")
        rev = reg.revision
    finally:
        reg.close()
    shared = s3_settings(seaweed, s3_bucket, shared="yes")
    keys = {"registry": RegistrySettings(signing_key=str(tmp_path / "old" / "keys" / "signing.key")), "store": shared}
    with pytest.raises(ConfigError, match=f"revision {rev} written in single-writer mode.*start the aggregator that "
                                          "wrote it first"):
        Registry.open(tmp_path / "new", keys)
    old = Registry.open(tmp_path / "old", {"registry": RegistrySettings(), "store": shared})
    try:
        new = Registry.open(tmp_path / "new", keys)  # the refused attempt left nothing in the way
        try:
            assert new.revision == old.revision >= rev and new.snapshot_bytes() == old.snapshot_bytes()
        finally:
            new.close()
    finally:
        old.close()
