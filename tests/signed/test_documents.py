"""Shared registry documents: manifests, signatures, snapshots, the verification routine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, strategies as st

from pifarm.errors import IntegrityError, SignatureError, UsageError
from pifarm.signed.integrity import BlobRef, StreamVerifier, digest_bytes, digest_file, verify_file
from pifarm.signed.manifest import FileEntry, Manifest, check_name, check_relpath, namespace_nguid, namespace_uuid
from pifarm.signed.signing import SigningKey, TrustedKeys
from pifarm.signed.snapshot import (
    DEFAULT_LIFETIME, ModelEntry, Snapshot, VersionPointer, iso, utcnow, verify_manifest, verify_snapshot,
)


def _manifest(version: int = 1) -> Manifest:
    d = digest_bytes(b"model bytes")
    return Manifest("demo", version, "raw", (FileEntry("model.bin", 11, d),), created="2026-11-27T10:00:00Z")


@pytest.mark.parametrize("name", ["", "A", "-x", "a" * 65, "a/b", "a b", "..", "ä"])
def test_bad_model_names_are_refused(name):
    with pytest.raises(UsageError, match="invalid model name"):
        check_name(name)


@pytest.mark.parametrize("path", ["../x", "a/../../b", "/etc/passwd", "a//b", "./a", "C:/x", "a\\b", "", "a\x00b"])
def test_escaping_paths_are_refused(path):
    with pytest.raises(UsageError, match="invalid file path"):
        check_relpath(path)


def test_stream_verifier_accepts_exact_bytes_and_rejects_flips_and_overruns():
    data = b"x" * 1000
    ref = BlobRef(digest_bytes(data), len(data))
    v = StreamVerifier(ref, source="test")
    v.update(data[:500]); v.update(data[500:]); v.finish()

    flipped = StreamVerifier(ref, source="s3")
    flipped.update(b"y" + data[1:])
    with pytest.raises(IntegrityError, match="from s3.*corrupt or tampered"):
        flipped.finish()

    over = StreamVerifier(ref)
    with pytest.raises(IntegrityError, match="more than the 1000 bytes"):
        over.update(data + b"!")

    short = StreamVerifier(ref)
    short.update(data[:10])
    with pytest.raises(IntegrityError, match="got 10 bytes"):
        short.finish()


@given(st.binary(max_size=4096))
def test_file_and_stream_digests_agree(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("d") / "blob"
    p.write_bytes(data)
    assert digest_file(p) == (digest_bytes(data), len(data))
    verify_file(p, BlobRef(digest_bytes(data), len(data)))


def test_verify_file_reports_size_and_content_damage(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(b"abcdef")
    ref = BlobRef(digest_bytes(b"abcdef"), 6)
    p.write_bytes(b"abcdeX")
    with pytest.raises(IntegrityError, match="corrupt or tampered"):
        verify_file(p, ref)
    p.write_bytes(b"abc")
    with pytest.raises(IntegrityError, match="3 bytes on disk"):
        verify_file(p, ref)


def test_signed_manifest_round_trip_and_tamper_detection():
    key = SigningKey.generate()
    trusted = TrustedKeys([key.public])
    m = _manifest()
    doc = key.sign(m.to_json())
    assert verify_manifest(doc, trusted, expected_digest=m.digest) == m

    doc["signed"]["files"][0]["size"] = 12
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(doc, trusted)

    other = SigningKey.generate()
    with pytest.raises(SignatureError, match="unknown key"):
        verify_manifest(other.sign(m.to_json()), trusted)

    with pytest.raises(IntegrityError, match="differs from"):
        verify_manifest(key.sign(m.to_json()), trusted, expected_digest=_manifest(2).digest)


def test_snapshot_rollback_and_freeze_are_refused():
    key = SigningKey.generate()
    trusted = TrustedKeys([key.public])
    ptr = VersionPointer(1, _manifest().digest)
    snap = Snapshot(5, iso(utcnow() + DEFAULT_LIFETIME), {"demo": ModelEntry({"stable": ptr}, (ptr,))})
    doc = key.sign(snap.to_json())
    assert verify_snapshot(doc, trusted, highest_seen=5).revision == 5
    with pytest.raises(IntegrityError, match="rollback refused"):
        verify_snapshot(doc, trusted, highest_seen=6)
    expired = key.sign(Snapshot(7, iso(utcnow() - timedelta(seconds=1)), {}).to_json())
    with pytest.raises(IntegrityError, match="freeze refused"):
        verify_snapshot(expired, trusted)
    assert snap.desired("canary") == {"demo": ptr}  # canary falls back to stable


def test_namespace_ids_are_stable_and_distinct():
    a, b = _manifest(1).digest, _manifest(2).digest
    assert namespace_uuid(a) == namespace_uuid(a)
    assert namespace_uuid(a) != namespace_uuid(b)
    assert namespace_uuid(a).version == 8
    assert len(namespace_nguid(a)) == 16


def test_key_files_are_private_and_never_overwritten(tmp_path):
    key = SigningKey.generate()
    priv, pub = key.write(tmp_path)
    assert priv.stat().st_mode & 0o777 == 0o600
    assert TrustedKeys.from_files([pub]).keyids == [key.keyid]
    assert SigningKey.load(priv).keyid == key.keyid
    with pytest.raises(FileExistsError):
        SigningKey.generate().write(tmp_path)
