"""Issue 11, finding 8 (store part): a blob's bytes are on disk before its name is. An upload is
received without fsync and then renamed into the store (consume=True); the rename must not come
before the data's fsync, or a crash leaves a torn blob of the right size that the store's
size-only start-up check keeps."""

from __future__ import annotations

import os

from pifarm.registry.store_fs import FsStore
from pifarm.signed.integrity import BlobRef, digest_bytes


def test_a_consumed_upload_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    store = FsStore(tmp_path / "store")
    data = os.urandom(300_000)
    upload = tmp_path / "store" / "upload.part"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(data)  # like the API's receive_to_file: written, never fsynced
    inode = upload.stat().st_ino
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if os.fstat(fd).st_ino == inode:
            events.append("fsync")
        return real_fsync(fd)

    def replace(src, dst, *a, **k):
        if os.path.exists(src) and os.stat(src).st_ino == inode and os.path.basename(dst) == ref.digest.split(":")[1]:
            events.append("rename")
        return real_replace(src, dst, *a, **k)

    ref = BlobRef(digest_bytes(data), len(data))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.put_blob(ref, upload, consume=True)
    assert store.has_blob(ref)
    assert "rename" in events and "fsync" in events[:events.index("rename")], events
