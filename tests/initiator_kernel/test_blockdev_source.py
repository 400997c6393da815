"""The nvme-kernel source against a regular file holding a volume (the same reader code the
node runs on /dev/nvmeXnY), feeding the real cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pifarm.cache.store import Cache
from pifarm.errors import ConfigError, SourceError
from pifarm.initiator.blockdev_source import BlockDeviceSource, DirectFile, make_source, open_volume
from pifarm.initiator.namespaces import Namespace
from pifarm.initiator.settings import SourceContext, SourceSpec
from pifarm.signed.integrity import BlobRef, digest_bytes
from pifarm.signed.manifest import namespace_uuid
from pifarm.signed.signing import SigningKey
from tests.initiator_kernel.helpers import build_volume, flip_byte, model_files, trusted


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


@pytest.fixture
def vol(tmp_path, key):
    return build_volume(tmp_path / "vols" / "m-1.vol", key, "m", 1, model_files(1))


def files_source(paths, key, **kw) -> BlockDeviceSource:
    src = BlockDeviceSource(trusted(key), lambda: [(str(p), None) for p in paths if Path(p).exists()], **kw)
    src.refresh()
    return src


def refs(v):
    return [BlobRef(digest_bytes(b), len(b)) for b in v.files.values()]


def test_every_blob_installs_into_the_cache_verified_and_labelled_nvme_kernel(tmp_path, vol, key):
    src = files_source([vol.path], key)
    cache = Cache(tmp_path / "cache")
    for path, data in vol.files.items():
        res = cache.install(BlobRef(digest_bytes(data), len(data)), [src])
        assert res.source == "nvme-kernel"
        assert Path(res.path).read_bytes() == data, path
    assert src.served == len(vol.files)
    assert src.status()["volumes"][0]["name"] == "m"


def test_reads_resume_from_any_offset(vol, key):
    src = files_source([vol.path], key)
    data = vol.files["part4.bin"]
    ref = BlobRef(digest_bytes(data), len(data))
    for start in (0, 1, 4095, 4096, 1 << 20, len(data) - 1, len(data)):
        assert b"".join(src.chunks(ref, start)) == data[start:], start


def test_direct_reads_are_block_aligned_and_return_exact_ranges(vol):
    f = DirectFile(vol.path)
    raw = vol.path.read_bytes()
    try:
        for off, n in ((0, 1), (4097, 10), (8191, 2), (4096 * 3 + 5, 1 << 20 | 7)):
            assert f.read_at(off, n) == raw[off:off + n]
        assert f.read_at(len(raw) - 3, 10) == raw[-3:]  # end of device: short, not garbage
    finally:
        f.close()


def test_a_blob_no_volume_holds_is_a_source_error_so_the_chain_moves_on(vol, key):
    src = files_source([vol.path], key)
    with pytest.raises(SourceError, match="no attached NVMe volume holds blob"):
        list(src.chunks(BlobRef(digest_bytes(b"elsewhere"), 9)))


def test_a_volume_signed_by_an_unknown_key_is_never_served(tmp_path, vol):
    other = SigningKey.generate()
    src = files_source([vol.path], other)
    assert src.status()["volumes"] == []
    assert "unknown key" in src.problems[str(vol.path)]
    with pytest.raises(SourceError):
        list(src.chunks(refs(vol)[0]))


def test_a_damaged_table_of_contents_refuses_the_whole_volume(vol, key):
    flip_byte(vol.path, 4096 + 20)
    src = files_source([vol.path], key)
    assert "table of contents" in src.problems[str(vol.path)]


def test_a_namespace_uuid_that_does_not_match_the_volume_is_refused(vol, key):
    wrong = Namespace("nvme9n1", vol.path, namespace_uuid("blake3:" + "ab" * 32), "", "nqn.x", 1)
    with pytest.raises(Exception, match="does not belong to the volume"):
        open_volume(vol.path, trusted(key), wrong)
    right = Namespace("nvme9n1", vol.path, namespace_uuid(vol.digest), "", "nqn.x", 1)
    v = open_volume(vol.path, trusted(key), right)
    assert v.describe()["uuid"] == str(namespace_uuid(vol.digest))
    v.file.close()


def test_bytes_flipped_in_a_blob_are_caught_served_by_the_next_source_and_reported(tmp_path, vol, key):
    """Issue 6: a blob altered on the target is detected, served from the next source, and the
    node names the corrupt volume."""
    pristine = tmp_path / "pristine.vol"
    pristine.write_bytes(vol.path.read_bytes())
    data = vol.files["part3.bin"]
    ref = BlobRef(digest_bytes(data), len(data))
    damaged = files_source([vol.path], key, status_path=tmp_path / "state" / "nvme.json")
    off, _size = damaged._find(ref).reader.extent(ref.digest)
    flip_byte(vol.path, off + 1234)
    backup = files_source([pristine], key)
    backup.name = "backup"
    cache = Cache(tmp_path / "cache")
    res = cache.install(ref, [damaged, backup])
    assert res.source == "backup"
    assert Path(res.path).read_bytes() == data
    assert cache.metrics.rejected.labels("nvme-kernel")._value.get() == 1
    status = json.loads((tmp_path / "state" / "nvme.json").read_text())
    assert str(vol.path) in status["corrupt"][ref.digest] and "m v1" in status["corrupt"][ref.digest]
    with pytest.raises(SourceError, match="corrupt volume"):  # known bad: refused at once next time
        next(damaged.chunks(ref))
    other = vol.files["part0.bin"]  # the rest of the volume still serves
    assert b"".join(damaged.chunks(BlobRef(digest_bytes(other), len(other)))) == other


def test_a_volume_that_disappears_is_dropped_and_one_that_appears_is_picked_up(tmp_path, vol, key):
    v2 = build_volume(tmp_path / "vols" / "m-2.vol", key, "m", 2, model_files(2, (10, 20000)))
    paths = [vol.path, v2.path]
    v2.path.rename(tmp_path / "hidden")
    src = files_source(paths, key)
    assert [v["version"] for v in src.status()["volumes"]] == [1]
    (tmp_path / "hidden").rename(v2.path)
    # not known yet: a miss triggers a rescan before giving up
    got = b"".join(src.chunks(refs(v2)[1]))
    assert got == v2.files["part1.bin"]
    vol.path.unlink()
    assert [v["version"] for v in src.refresh()] == [2]


def test_make_source_serves_configured_volume_files(tmp_path, vol, key):
    ctx = SourceContext(trusted=trusted(key), state_dir=tmp_path / "state")
    src = make_source(SourceSpec("nvme-kernel", options={"volumes": [str(vol.path)]}), ctx)
    try:
        data = vol.files["part1.bin"]
        assert b"".join(src.chunks(BlobRef(digest_bytes(data), len(data)))) == data
        assert src.name == "nvme-kernel" and src.path_state == "live"
        assert json.loads((tmp_path / "state" / "nvme.json").read_text())["volumes"][0]["version"] == 1
    finally:
        src.close()


@pytest.mark.parametrize("spec,needle", [
    (SourceSpec("nvme-kernel"), "set address"),
    (SourceSpec("nvme-kernel", address="127.0.0.1:4420", options={"ctrl_loss": 5}), "unknown option ctrl_loss"),
])
def test_make_source_rejects_bad_config_with_one_clear_line(tmp_path, key, spec, needle):
    ctx = SourceContext(trusted=trusted(key), state_dir=tmp_path)
    with pytest.raises(ConfigError, match=needle) as e:
        make_source(spec, ctx)
    assert "\n" not in str(e.value)


def test_the_chain_loads_this_factory_by_its_dotted_path():
    from pifarm.initiator.chain import load_factory

    assert load_factory("nvme-kernel") is make_source


def test_path_state_volumes_and_corrupt_blobs_are_metrics(tmp_path, vol, key):
    from prometheus_client import CollectorRegistry, generate_latest

    from pifarm.initiator.blockdev_source import NvmeMetrics

    reg = CollectorRegistry()
    src = files_source([vol.path], key)
    src.metrics = NvmeMetrics(reg)
    data = vol.files["part2.bin"]
    ref = BlobRef(digest_bytes(data), len(data))
    off, _ = src._find(ref).reader.extent(ref.digest)
    flip_byte(vol.path, off)
    list(src.chunks(ref))
    text = generate_latest(reg).decode()
    assert 'pifarm_nvme_path{state="live"} 1.0' in text and 'pifarm_nvme_path{state="unreachable"} 0.0' in text
    assert "pifarm_nvme_volumes 1.0" in text and "pifarm_nvme_corrupt_blobs 1.0" in text
