"""Issue 11: the volume reader fed mutated volumes (a namespace an allowed host wrote into). Raw bit
flips, truncation, and forged volumes whose superblock and TOC digests were recomputed (they are
unkeyed: anyone can re-seal them). Properties: opening and reading either work or raise a
PifarmError with a message, every read stays bounded (no read past what the superblock allows,
no giant allocation), and a changed blob never verifies."""

from __future__ import annotations

import json

import blake3
from hypothesis import HealthCheck, given, settings, strategies as st

from pifarm.errors import PifarmError
from pifarm.signed.canonical import canonical_bytes
from pifarm.signed.integrity import make_digest
from pifarm.volume.format import BLOCK, CHUNK, MAX_TOC, Superblock, VolumeReader
from tests.nvme.conftest import make_volume

_VOL: dict[str, bytes] = {}


def original(tmp_path_factory) -> bytes:
    if "v" not in _VOL:
        v = make_volume(tmp_path_factory.mktemp("fuzzvol"), sizes=(5000, 4096, 1, 9000))
        _VOL["v"] = v.path.read_bytes()
    return _VOL["v"]


class Reads:
    """read_at over bytes, recording every request so the test can bound them."""

    def __init__(self, data: bytes):
        self.data, self.calls = data, []

    def __call__(self, off: int, n: int) -> bytes:
        self.calls.append((off, n))
        assert off >= 0 and 0 <= n <= max(CHUNK, MAX_TOC, BLOCK), f"unbounded read {off}+{n}"
        return self.data[off:off + n]


def read_all(data: bytes) -> list[str]:
    """Open and verify every blob; return the digests that verified."""
    r = Reads(data)
    ok = []
    try:
        reader = VolumeReader(r, where="fuzz")
    except PifarmError as e:
        assert str(e)
        return ok
    for _path, digest, _off, _size in reader.entries:
        try:
            reader.verify_blob(digest)
            ok.append(digest)
        except PifarmError as e:
            assert str(e)
    return ok


def reseal(data: bytearray, toc_doc: dict | None = None, **sb_fields) -> bytes:
    """Forge: rewrite the TOC (optional) and superblock fields, recompute both digests."""
    sb = Superblock.unpack(bytes(data[:BLOCK]))
    toc = bytes(data[sb.toc_offset: sb.toc_offset + sb.toc_length])
    if toc_doc is not None:
        toc = canonical_bytes(toc_doc)
        end = sb.toc_offset + len(toc)
        if end > len(data):
            data.extend(bytes(end - len(data)))
        data[sb.toc_offset:end] = toc
    fields = dict(format_version=sb.format_version, volume_size=sb.volume_size, toc_offset=sb.toc_offset,
                  toc_length=len(toc), toc_digest=make_digest(blake3.blake3(toc).hexdigest()),
                  manifest_digest=sb.manifest_digest)
    fields.update(sb_fields)
    data[:BLOCK] = Superblock(**fields).pack()
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 2**31)))
def test_bit_flips_and_truncation(tmp_path_factory, flips, cut):
    data = bytearray(original(tmp_path_factory))
    clean = {d for _p, d, _o, _s in VolumeReader(Reads(bytes(data))).entries}
    for pos, byte in flips:
        data[pos % len(data)] = byte
    if cut is not None:
        del data[cut % len(data):]
    good = read_all(bytes(data))
    assert set(good) <= clean


toc_values = st.one_of(st.integers(-2**70, 2**70), st.text(max_size=20), st.none(), st.booleans(),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 50), field=st.sampled_from(["digest", "offset", "size", "extra", "drop"]), value=toc_values,
       vsize=st.one_of(st.none(), st.integers(0, 2**62).map(lambda n: n // BLOCK * BLOCK)))
def test_forged_tables_of_contents(tmp_path_factory, which, field, value, vsize):
    data = bytearray(original(tmp_path_factory))
    sb = Superblock.unpack(bytes(data[:BLOCK]))
    doc = json.loads(bytes(data[sb.toc_offset: sb.toc_offset + sb.toc_length]))
    blobs = doc["blobs"]
    b = blobs[which % len(blobs)]
    if field == "drop":
        blobs.remove(b)
    elif field == "extra":
        blobs.append({"digest": b["digest"], "offset": value, "size": b["size"]})
    else:
        b[field] = value
    try:
        forged = reseal(data, doc, **({"volume_size": max(vsize, sb.toc_offset + BLOCK)} if vsize else {}))
    except (PifarmError, ValueError, TypeError):
        return  # not even representable as a volume: nothing to read
    read_all(forged)  # only PifarmErrors, bounded reads


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(blob=st.integers(0, 3), pos=st.integers(0, 2**20), byte=st.integers(1, 255))
def test_a_changed_blob_never_verifies_even_in_a_resealed_volume(tmp_path_factory, blob, pos, byte):
    data = bytearray(original(tmp_path_factory))
    reader = VolumeReader(Reads(bytes(data)))
    _p, digest, off, size = reader.entries[blob % len(reader.entries)]
    i = off + pos % size
    data[i] ^= byte
    forged = reseal(data)  # header and TOC digests consistent again: only the blob hash can tell
    assert digest not in read_all(forged)


def test_reads_are_bounded_by_the_superblock(tmp_path_factory):
    data = bytearray(original(tmp_path_factory))
    forged = reseal(data, volume_size=2**62 // BLOCK * BLOCK)  # claims an exabyte
    r = Reads(forged)
    VolumeReader(r)
    assert all(n <= max(CHUNK, MAX_TOC, BLOCK) for _o, n in r.calls)
