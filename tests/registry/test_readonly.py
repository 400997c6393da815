"""Store unreachable: writes are refused with the reason, nothing half-written, reads keep working."""

from __future__ import annotations

import pytest

from pifarm.errors import ReadOnlyError
from pifarm.registry.service import Registry
from pifarm.registry.settings import RegistrySettings, StoreSettings
from pifarm.registry.store import SNAPSHOT_KEY
from tests.registry.conftest import s3_settings
from tests.support.procs import free_port


def _break_fs_store(reg) -> None:
    root = reg.store.root
    root.rename(root.with_name("store.away"))
    root.write_text("not a directory any more")  # so nothing can silently recreate it


def _repair_fs_store(reg) -> None:
    root = reg.store.root
    root.unlink()
    root.with_name("store.away").rename(root)


def test_fs_store_gone_refuses_publish_and_promote_but_serves_metadata(tmp_path, face_model):
    reg = Registry.open(tmp_path / "agg")
    try:
        m, doc = reg.publish(face_model, "face", channel="stable")
        _break_fs_store(reg)
        other = tmp_path / "v2.tflite"
        other.write_bytes(face_model.read_bytes() + b"2")
        with pytest.raises(ReadOnlyError, match="unreachable"):
            reg.publish(other, "face")
        with pytest.raises(ReadOnlyError, match="read-only"):
            reg.promote("face", 1, "canary")
        assert "store.away" not in (reg.read_only_reason or "") and "unreachable" in reg.read_only_reason
        assert reg.revision == 1 and reg.manifest_document("face", 1) == doc
        _repair_fs_store(reg)
        assert reg.check_store() is True and reg.read_only_reason is None
        assert reg.publish(other, "face")[0].version == 2
    finally:
        reg.close()


def test_store_failing_between_blob_upload_and_manifest_leaves_nothing_half_written(tmp_path, face_model):
    """Pins the publish order: the store vanishes right after the blobs are up (hook in progress)."""
    reg = Registry.open(tmp_path / "agg")
    try:
        reg.publish(face_model, "face", channel="stable")
        before = (reg.revision, reg.snapshot_bytes(), reg.store.get_document(SNAPSHOT_KEY))
        d = tmp_path / "v2"
        d.mkdir()
        (d / "model.tflite").write_bytes(face_model.read_bytes() + b"v2")
        (d / "extra.bin").write_bytes(b"extra")

        def hook(phase, n, total):
            if phase == "upload" and not reg.store.root.with_name("store.away").exists():
                if len(reg.store.list_blobs()) == 3:  # both new blobs are stored
                    _break_fs_store(reg)

        with pytest.raises(ReadOnlyError, match="nothing was committed"):
            reg.publish(d, "face", progress=hook)
        assert (reg.revision, reg.snapshot_bytes()) == before[:2]
        assert [v.version for v in reg.served_versions()] == [1]
        _repair_fs_store(reg)
        assert reg.check_store()
        # the blobs of the refused publish were collected; the mirror still shows the old state
        assert len(reg.store.list_blobs()) == 1
        assert reg.store.get_document(SNAPSHOT_KEY) == before[2]
        assert reg.store.list_documents("models/") == ["models/face/1.json"]
    finally:
        reg.close()


@pytest.mark.s3
def test_s3_endpoint_unreachable_opens_read_only(tmp_path, face_model):
    settings = StoreSettings(url="s3://bucket/p", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                             access_key_id="x", secret_access_key="y", connect_timeout=1)
    reg = Registry.open(tmp_path / "agg", {"registry": RegistrySettings(), "store": settings})
    try:
        assert "unreachable" in reg.read_only_reason
        with pytest.raises(ReadOnlyError, match="unreachable"):
            reg.publish(face_model, "face")
        assert reg.revision == 0 and reg.snapshot_document()["signed"]["revision"] == 0
    finally:
        reg.close()


@pytest.mark.s3
@pytest.mark.slow
def test_seaweedfs_stopped_and_restarted(tmp_path, face_model):
    """A real SeaweedFS of our own goes away mid-life and comes back."""
    from tests.support.seaweed import start_seaweed

    server = start_seaweed(tmp_path / "weed")
    try:
        settings = s3_settings(server, "pifarm-ro", prefix="x")
        reg = Registry.open(tmp_path / "agg", {"registry": RegistrySettings(), "store": settings})
        try:
            reg.publish(face_model, "face", channel="stable")
            server.stop()
            other = tmp_path / "v2.tflite"
            other.write_bytes(face_model.read_bytes() + b"2")
            with pytest.raises(ReadOnlyError, match="unreachable"):
                reg.publish(other, "face")
            assert reg.manifest("face", 1).version == 1 and reg.revision == 1
            server.start()
            assert reg.check_store()
            assert reg.publish(other, "face", channel="stable")[0].version == 2
            body = server.client().get_object(Bucket="pifarm-ro", Key="x/snapshot.json")["Body"].read()
            assert body == reg.snapshot_bytes()[1]
        finally:
            reg.close()
    finally:
        server.stop()
