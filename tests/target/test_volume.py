"""The volume format: round trip, alignment, and every kind of damage is refused clearly."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from pifarm.errors import IntegrityError, NotFound
from pifarm.signed.integrity import digest_bytes
from pifarm.signed.manifest import manifest_digest, namespace_uuid
from pifarm.signed.signing import SigningKey, TrustedKeys
from pifarm.volume.format import BLOCK, MAGIC, VolumeReader, write_volume

from .helpers import blob_path_in, make_store, signed_manifest


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


def build(tmp_path, key, files, name="mobilenet", version=1):
    make_store(tmp_path, files)
    doc = signed_manifest(key, name, version, files)
    info = write_volume(tmp_path / "vols" / f"{name}-v{version}.vol", doc, blob_path_in(tmp_path))
    return doc, info


def test_round_trip_layout_and_verification(tmp_path, key):
    files = {"model.tflite": os.urandom(10_000), "labels.txt": b"cat\ndog\n", "empty": b"", "copy.tflite": b""}
    files["copy.tflite"] = files["model.tflite"]  # same digest: stored once
    doc, info = build(tmp_path, key, files)
    assert info.size % BLOCK == 0 and info.path.stat().st_size == info.size
    assert info.blobs == 3
    assert info.manifest_digest == manifest_digest(doc["signed"])
    assert info.namespace_uuid == namespace_uuid(info.manifest_digest)
    with VolumeReader.from_file(info.path) as r:
        assert r.superblock.toc_offset == BLOCK
        assert r.manifest_document == doc
        assert TrustedKeys([key.public]).verify(r.manifest_document, "manifest")["name"] == "mobilenet"
        assert [e[0] for e in r.entries] == list(files)
        for path, digest, off, size in r.entries:
            assert off % BLOCK == 0 and digest == digest_bytes(files[path]) and size == len(files[path])
            assert b"".join(r.chunks(digest, chunk=999)) == files[path]
            r.verify_blob(digest)
        assert r.extent(digest_bytes(files["model.tflite"])) == r.extent(digest_bytes(files["copy.tflite"]))
        with pytest.raises(NotFound):
            r.extent(digest_bytes(b"not here"))
    assert info.path.read_bytes()[:8] == MAGIC
    assert not [p for p in info.path.parent.iterdir() if p.name.endswith(".part")]


def test_corrupt_store_blob_never_yields_a_volume(tmp_path, key):
    files = {"a": b"a" * 5000}
    make_store(tmp_path, files)
    doc = signed_manifest(key, "m", 1, files)
    blob_path_in(tmp_path)(digest_bytes(files["a"])).write_bytes(b"b" * 5000)
    out = tmp_path / "vols" / "m-v1.vol"
    with pytest.raises(IntegrityError, match="corrupt or tampered"):
        write_volume(out, doc, blob_path_in(tmp_path))
    assert not out.exists() and os.listdir(out.parent) == []


def test_missing_blob_is_not_found(tmp_path, key):
    files = {"a": b"abc"}
    doc = signed_manifest(key, "m", 1, files)
    with pytest.raises(NotFound, match="missing"):
        write_volume(tmp_path / "m.vol", doc, blob_path_in(tmp_path))


@pytest.mark.parametrize("where,msg", [
    (0, "not a pifarm volume"),
    (20, "header digest"),
    (BLOCK + 10, "table of contents hashes"),
])
def test_damage_is_refused_with_a_clear_message(tmp_path, key, where, msg):
    _, info = build(tmp_path, key, {"a": os.urandom(3000)})
    data = bytearray(info.path.read_bytes())
    data[where] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=msg):
        VolumeReader.from_file(info.path)


def test_damaged_blob_is_caught_by_the_verifier(tmp_path, key):
    files = {"a": os.urandom(3000)}
    _, info = build(tmp_path, key, files)
    with VolumeReader.from_file(info.path) as r:
        off, _ = r.extent(digest_bytes(files["a"]))
    data = bytearray(info.path.read_bytes())
    data[off + 7] ^= 1
    info.path.write_bytes(bytes(data))
    with VolumeReader.from_file(info.path) as r, pytest.raises(IntegrityError, match="corrupt or tampered"):
        r.verify_blob(digest_bytes(files["a"]))


def test_truncated_volume_is_refused(tmp_path, key):
    _, info = build(tmp_path, key, {"a": os.urandom(3000)})
    with open(info.path, "r+b") as f:
        f.truncate(BLOCK + 100)
    with pytest.raises(IntegrityError, match="short read"):
        VolumeReader.from_file(info.path)


def test_missing_file_and_not_a_volume(tmp_path):
    with pytest.raises(NotFound):
        VolumeReader.from_file(tmp_path / "nope.vol")
    (tmp_path / "x").write_bytes(b"\0" * 10)
    with pytest.raises(IntegrityError, match="too short"):
        VolumeReader.from_file(tmp_path / "x")


def test_reader_over_plain_callable(tmp_path, key):
    files = {"a": os.urandom(5000)}
    _, info = build(tmp_path, key, files)
    data = info.path.read_bytes()
    r = VolumeReader(lambda off, n: data[off:off + n], where="mem")
    assert r.info().manifest_digest == info.manifest_digest and r.info().size == len(data)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=9000), min_size=1, max_size=6))
def test_any_blob_set_round_trips(tmp_path_factory, blobs):
    tmp = tmp_path_factory.mktemp("vol")
    key = SigningKey.generate()
    files = {f"f{i}": b for i, b in enumerate(blobs)}
    _, info = build(tmp, key, files)
    with VolumeReader.from_file(info.path) as r:
        for path, digest, off, size in r.entries:
            assert b"".join(r.chunks(digest)) == files[path]
        ends = sorted((o, o + s) for o, s in r._extents.values())
        assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
