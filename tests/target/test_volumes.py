"""VolumeBuilder against a real registry (filesystem store): build, keep, prune, refuse."""

from __future__ import annotations

import os

import pytest

from pifarm.errors import IntegrityError, NotFound
from pifarm.registry.service import Registry
from pifarm.volume.format import VolumeReader
from pifarm.target.volumes import VolumeBuilder, sync_volumes


@pytest.fixture
def registry(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.tflite").write_bytes(os.urandom(50_000))
    (src / "labels.txt").write_bytes(b"a\nb\n")
    with Registry.open(tmp_path / "agg") as reg:
        reg.publish(src, "mobilenet", format="raw")
        (src / "model.tflite").write_bytes(os.urandom(60_000))
        reg.publish(src, "mobilenet", format="raw")
        yield reg


def test_sync_builds_every_served_version_once(registry, tmp_path):
    vb = VolumeBuilder(registry, tmp_path / "vols")
    exports = vb.sync()
    assert sorted(e.key for e in exports) == ["mobilenet@1", "mobilenet@2"]
    for e in exports:
        with VolumeReader.from_file(e.path) as r:
            assert r.manifest_digest == e.manifest_digest
            assert r.manifest_document == registry.manifest_document(e.name, e.version)
            for _p, d, _o, _s in r.entries:
                r.verify_blob(d)
    mtimes = {e.path: os.stat(e.path).st_mtime_ns for e in exports}
    assert {e.path: os.stat(e.path).st_mtime_ns for e in vb.sync()} == mtimes  # nothing rebuilt


def test_retired_version_loses_its_volume_and_stale_ones_are_rebuilt(registry, tmp_path):
    vb = VolumeBuilder(registry, tmp_path / "vols")
    exports = {e.version: e for e in vb.sync()}
    with open(exports[2].path, "r+b") as f:  # damage the superblock: it must be rebuilt
        f.write(b"garbage!")
    registry.retire("mobilenet", 1)
    left = vb.sync()
    assert [e.version for e in left] == [2]
    assert not os.path.exists(exports[1].path)
    with VolumeReader.from_file(left[0].path) as r:
        assert r.manifest_digest == left[0].manifest_digest


def test_build_one_and_refuse_unknown(registry, tmp_path):
    vb = VolumeBuilder(registry, tmp_path / "vols")
    e = vb.build("mobilenet", 2)
    assert os.path.exists(e.path) and not os.path.exists(tmp_path / "vols" / "mobilenet-v1.vol")
    with pytest.raises(NotFound, match="not a served version"):
        vb.build("mobilenet", 9)


def test_manifest_digest_mismatch_is_refused(registry, tmp_path):
    sv = registry.served_versions()[0]
    items = [(sv.name, sv.version, "blake3:" + "0" * 64, lambda: registry.manifest_document(sv.name, sv.version))]
    with pytest.raises(IntegrityError, match="registry says"):
        sync_volumes(items, registry.blob_path_or_stream, tmp_path / "vols")
    assert not list((tmp_path / "vols").glob("*.vol"))
