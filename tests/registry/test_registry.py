"""The registry contract, run against the filesystem store and a real SeaweedFS alike."""

from __future__ import annotations

import json
import os

import pytest

from pifarm.errors import Conflict, IntegrityError, NotFound, SignatureError, UsageError
from pifarm.signed.integrity import BlobRef, StreamVerifier, digest_bytes
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_manifest, verify_snapshot
from pifarm.registry.store import SNAPSHOT_KEY, blob_key, manifest_key


def trusted(reg) -> TrustedKeys:
    return TrustedKeys.from_files([reg.pubkey_path])


def stored_snapshot(reg):
    return verify_snapshot(json.loads(reg.store.get_document(SNAPSHOT_KEY)), trusted(reg))


def blob_bytes(reg, digest: str) -> bytes:
    src = reg.blob_path_or_stream(digest)
    return src.read_bytes() if hasattr(src, "read_bytes") else b"".join(src)


def test_publish_tflite_signs_manifest_with_tensor_signature_and_mirrors_store(registry, face_model):
    manifest, doc = registry.publish(face_model, "face", channel="stable", labels={"team": "vision"})
    assert manifest.version == 1 and manifest.format == "tflite"
    assert [(t.name, t.shape, t.dtype) for t in manifest.inputs] == [("input", (1, 128, 128, 3), "float32")]
    assert [t.name for t in manifest.outputs] == ["regressors", "classificators"]
    assert manifest.labels == {"team": "vision"}
    snap = stored_snapshot(registry)
    assert snap.revision == registry.revision == 1
    ptr = snap.channel("face", "stable")
    assert (ptr.version, ptr.manifest_digest) == (1, manifest.digest)
    # a node working from the store alone finds the manifest and verifies every blob
    stored = json.loads(registry.store.get_document(manifest_key("face", 1)))
    m = verify_manifest(stored, trusted(registry), expected_digest=ptr.manifest_digest)
    f = m.files[0]
    v = StreamVerifier(f.ref)
    v.update(blob_bytes(registry, f.digest))
    v.finish()
    assert blob_bytes(registry, f.digest) == face_model.read_bytes()


def test_directory_publish_keeps_relative_paths_and_dedups_blobs(registry, tmp_path):
    d = tmp_path / "bundle"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"same")
    (d / "sub" / "b.bin").write_bytes(b"same")
    (d / "labels.txt").write_text("cat\ndog\n")
    manifest, _ = registry.publish(d, "bundle")
    assert manifest.format == "raw"
    assert [f.path for f in manifest.files] == ["a.bin", "labels.txt", "sub/b.bin"]
    assert manifest.files[0].digest == manifest.files[2].digest == digest_bytes(b"same")
    assert sorted(registry.store.list_blobs()) == sorted({f.digest for f in manifest.files})


def test_identical_republish_is_idempotent_and_new_content_gets_next_version(registry, face_model, tmp_path):
    m1, d1 = registry.publish(face_model, "face")
    rev = registry.revision
    m1b, d1b = registry.publish(face_model, "face")
    assert (m1b.version, d1b) == (1, d1) and registry.revision == rev
    # same content with a channel: nothing new is published, the channel moves
    registry.publish(face_model, "face", channel="canary")
    assert registry.model("face")["channels"] == {"canary": 1}
    assert [v["version"] for v in registry.model("face")["versions"]] == [1]
    other = tmp_path / "face2.tflite"
    other.write_bytes(face_model.read_bytes() + b"\0")
    m2, _ = registry.publish(other, "face")
    assert m2.version == 2 and m2.digest != m1.digest


def test_promote_rollback_and_channel_history(registry, face_model, tmp_path):
    versions = []
    for i in range(3):
        p = tmp_path / f"m{i}.tflite"
        p.write_bytes(face_model.read_bytes() + bytes([i]))
        versions.append(registry.publish(p, "face", channel="stable")[0].version)
    assert versions == [1, 2, 3]
    assert registry.model("face")["channels"]["stable"] == 3
    assert registry.rollback("face", "stable") == 2
    assert registry.rollback("face", "stable") == 1
    assert stored_snapshot(registry).channel("face", "stable").version == 1
    with pytest.raises(Conflict, match="no earlier live version"):
        registry.rollback("face", "stable")
    rev = registry.promote("face", 3, "canary")
    assert stored_snapshot(registry).revision == rev
    assert stored_snapshot(registry).desired("canary")["face"].version == 3
    assert stored_snapshot(registry).desired("stable")["face"].version == 1


def test_retire_drops_version_and_collects_only_unshared_blobs(registry, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, extra in ((a, b"only-in-a"), (b, b"only-in-b")):
        d.mkdir()
        (d / "shared.bin").write_bytes(b"shared bytes")
        (d / "own.bin").write_bytes(extra)
    m1, _ = registry.publish(a, "m", channel="stable")
    m2, _ = registry.publish(b, "m")
    with pytest.raises(Conflict, match="on channel stable"):
        registry.retire("m", 1)
    registry.promote("m", 2, "stable")
    registry.retire("m", 1)
    assert [v.version for v in registry.served_versions()] == [2]
    assert [p.version for p in stored_snapshot(registry).models["m"].versions] == [2]
    assert registry.store.get_document(manifest_key("m", 1)) is None
    blobs = set(registry.store.list_blobs())
    assert digest_bytes(b"only-in-a") not in blobs
    assert {digest_bytes(b"shared bytes"), digest_bytes(b"only-in-b")} <= blobs
    with pytest.raises(NotFound, match="retired"):
        registry.manifest_document("m", 1)
    # a rollback skips the retired version
    with pytest.raises(Conflict):
        registry.rollback("m", "stable")


def test_subscribers_see_every_committed_revision(registry, face_model):
    seen = []
    unsubscribe = registry.subscribe(seen.append)
    registry.publish(face_model, "face", channel="stable")
    registry.publish(face_model, "face")  # idempotent: no change, no notification
    registry.promote("face", 1, "canary")
    unsubscribe()
    assert seen == [1, 2]
    assert [(s.name, s.version) for s in registry.served_versions()] == [("face", 1)]


@pytest.mark.parametrize("name", ["", "Face", "-x", "a" * 65, "a/b", "../x", "a b"])
def test_invalid_model_name_is_refused(registry, face_model, name):
    with pytest.raises(UsageError, match="invalid model name"):
        registry.publish(face_model, name)
    assert registry.revision == 0


def test_missing_file_is_refused(registry, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        registry.publish(tmp_path / "nope.tflite", "m")


def test_non_tflite_published_as_tflite_is_refused_and_nothing_committed(registry, tmp_path):
    p = tmp_path / "fake.tflite"
    p.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(UsageError, match="not a TFLite model"):
        registry.publish(p, "m")
    q = tmp_path / "model.bin"
    q.write_bytes(b"xx")
    with pytest.raises(UsageError, match="not a TFLite model"):
        registry.publish(q, "m", format="tflite")
    assert registry.revision == 0 and registry.served_versions() == []
    assert registry.publish(q, "m", format="raw")[0].format == "raw"


def test_escaping_symlink_in_directory_publish_is_refused(registry, tmp_path):
    secret = tmp_path / "secret.key"
    secret.write_text("do not publish")
    d = tmp_path / "model"
    d.mkdir()
    (d / "ok.bin").write_bytes(b"ok")
    (d / "leak").symlink_to(secret)
    with pytest.raises(UsageError, match="symlink leaving"):
        registry.publish(d, "m")
    (d / "leak").unlink()
    (d / "up").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UsageError, match="symlink leaving"):
        registry.publish(d, "m")
    (d / "up").unlink()
    (d / "inner").symlink_to(d / "ok.bin")  # a link that stays inside is fine
    m, _ = registry.publish(d, "m")
    assert [f.path for f in m.files] == ["inner", "ok.bin"]
    assert registry.store.list_blobs() == [digest_bytes(b"ok")]


def test_path_traversal_in_staged_publish_is_refused(registry):
    from pifarm.signed.manifest import FileEntry

    with pytest.raises(UsageError, match="relative paths only"):
        registry.publish_staged("m", [FileEntry("../etc/passwd", 2, digest_bytes(b"ok"))])


def test_staged_publish_needs_uploaded_blobs(registry, tmp_path):
    from pifarm.signed.manifest import FileEntry

    with pytest.raises(NotFound, match="was not uploaded"):
        registry.publish_staged("m", [FileEntry("x.bin", 2, digest_bytes(b"ok"))])
    p = tmp_path / "up"
    p.write_bytes(b"ok")
    registry.stage_blob(BlobRef(digest_bytes(b"ok"), 2), p)
    m, _ = registry.publish_staged("m", [FileEntry("x.bin", 2, digest_bytes(b"ok"))], channel="stable")
    assert m.version == 1 and m.format == "raw"


def test_unknown_model_version_and_promote_to_missing_version(registry, face_model):
    with pytest.raises(NotFound, match="does not exist"):
        registry.model("ghost")
    registry.publish(face_model, "face")
    with pytest.raises(NotFound, match="has no version 7"):
        registry.manifest_document("face", 7)
    with pytest.raises(NotFound, match="has no version 7"):
        registry.promote("face", 7, "stable")
    with pytest.raises(UsageError, match="unknown channel"):
        registry.promote("face", 1, "beta")
    with pytest.raises(NotFound):
        registry.rollback("ghost", "stable")
    assert registry.revision == 1


def test_tampered_manifest_and_snapshot_fail_verification(registry, face_model):
    manifest, doc = registry.publish(face_model, "face", channel="stable")
    keys = trusted(registry)
    bad = json.loads(json.dumps(doc))
    bad["signed"]["files"][0]["size"] += 1
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(bad, keys)
    snap = registry.snapshot_document()
    snap["signed"]["models"]["face"]["channels"]["stable"]["version"] = 99
    with pytest.raises(SignatureError):
        verify_snapshot(snap, keys)
    # a validly signed manifest that is not the one the snapshot names is refused too
    with pytest.raises(IntegrityError, match="differs"):
        verify_manifest(doc, keys, expected_digest=digest_bytes(b"other"))
    # and documents signed by another registry's key are refused
    other = TrustedKeys.from_files([registry.pubkey_path])
    from pifarm.signed.signing import SigningKey

    forged = SigningKey.generate().sign(doc["signed"])
    with pytest.raises(SignatureError, match="unknown key"):
        verify_manifest(forged, other)


def test_open_recovers_leftovers_and_lagging_snapshot_mirror(open_registry, tmp_path, face_model):
    d = tmp_path / "agg"
    reg = open_registry(d)
    m, _ = reg.publish(face_model, "face", channel="stable")
    good_snapshot = reg.store.get_document(SNAPSHOT_KEY)
    # what crashes leave behind: an orphan blob and manifest of an uncommitted version, a stale mirror
    orphan = tmp_path / "orphan"
    orphan.write_bytes(b"orphan bytes")
    ref = BlobRef(digest_bytes(b"orphan bytes"), 12)
    reg.store.put_blob(ref, orphan)
    reg.store.put_document(manifest_key("face", 2), b'{"half": true}')
    reg.store.put_document(SNAPSHOT_KEY, b'{"stale": true}')
    if hasattr(reg.store, "root"):
        (reg.store.root / "blobs" / "blake3" / ".x.part").write_bytes(b"partial")
    reg.close()
    reg = open_registry(d)
    assert reg.store.get_document(manifest_key("face", 2)) is None
    if reg.log_ is None:
        assert reg.store.list_blobs() == [m.files[0].digest]
    else:  # a shared bucket: an unreferenced blob may be another aggregator's upload in progress
        assert set(reg.store.list_blobs()) == {m.files[0].digest, ref.digest}
    assert reg.store.get_document(SNAPSHOT_KEY) == good_snapshot
    if hasattr(reg.store, "root"):
        assert not list(reg.store.root.rglob("*.part"))
    assert reg.manifest("face", 1).digest == m.digest


def test_data_dir_has_one_writer_but_readers_may_open_beside_it(open_registry, tmp_path, face_model):
    from pifarm.errors import ReadOnlyError
    from pifarm.registry.service import Registry

    reg = open_registry(tmp_path / "agg")
    reg.publish(face_model, "face")
    with pytest.raises(Conflict, match="in use by another pifarm process"):
        Registry.open(tmp_path / "agg")
    ro = Registry.open(tmp_path / "agg", readonly=True)
    try:
        assert [v.version for v in ro.served_versions()] == [1]
        with pytest.raises(ReadOnlyError, match="opened read-only"):
            ro.promote("face", 1, "stable")
    finally:
        ro.close()


def test_snapshot_is_resigned_with_new_revision_before_expiry(open_registry, face_model):
    reg = open_registry(snapshot_lifetime=3600)
    assert reg.refresh_if_due() is False
    reg.settings = type(reg.settings)(snapshot_lifetime=10**9)  # now more than half the lifetime has passed
    assert reg.refresh_if_due() is True
    assert stored_snapshot(reg).revision == reg.revision == 1


def test_keys_and_token_files_are_private(registry):
    from pifarm.registry.service import ensure_api_token
    from pifarm.registry.settings import ApiSettings

    assert oct(os.stat(registry.data_dir / "keys" / "signing.key").st_mode & 0o777) == "0o600"
    tok = ensure_api_token(registry.data_dir, ApiSettings())
    assert oct(os.stat(registry.data_dir / "api-token").st_mode & 0o777) == "0o600"
    assert ensure_api_token(registry.data_dir, ApiSettings()) == tok
    assert ensure_api_token(registry.data_dir, ApiSettings(token="configured")) == "configured"


def test_blob_keys_follow_the_shared_layout(registry, face_model):
    m, _ = registry.publish(face_model, "face")
    assert blob_key(m.files[0].digest) == "blobs/blake3/" + m.files[0].digest.removeprefix("blake3:")
    assert manifest_key("face", 1) == "models/face/1.json"
    assert registry.store.get_document(manifest_key("face", 1)) == registry.manifest_bytes("face", 1)
