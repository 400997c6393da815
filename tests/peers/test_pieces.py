"""Pieces in manifests, the piece store and the piece server, without a rack (issue 16)."""

from __future__ import annotations

import os

import httpx
import pytest

from pifarm.errors import IntegrityError
from pifarm.initiator.peer_server import PieceServer
from pifarm.initiator.peer_store import PieceStore
from pifarm.signed.integrity import BlobRef, digest_file
from pifarm.signed.manifest import FileEntry, Manifest
from pifarm.signed.pieces import PieceTable, hash_file

P = 64 * 1024


def manifest(files) -> Manifest:
    return Manifest(name="m", version=1, format="raw", files=tuple(files), created="2026-12-04T00:00:00Z")


def test_pieces_cover_the_file_and_each_verifies(tmp_path):
    p = tmp_path / "blob"
    p.write_bytes(os.urandom(5 * P + 123))
    digest, size, table = hash_file(p, P)
    assert (digest, size) == digest_file(p) and table.count == 6
    data = p.read_bytes()
    store = PieceStore(tmp_path / "pieces")
    pf = store.acquire(BlobRef(digest, size), table)
    for i in range(table.count):
        off, n = table.span(i, size)
        pf.verify(i, data[off:off + n])
    with pytest.raises(IntegrityError):
        pf.verify(5, data[5 * P:5 * P + 122] + b"x")


def test_old_manifests_sign_and_parse_as_before(tmp_path):
    plain = manifest([FileEntry("a.bin", 3, "blake3:" + "0" * 64)])
    assert "pieces" not in plain.to_json()["files"][0]
    assert Manifest.from_json(plain.to_json()) == plain
    assert Manifest.from_json(plain.to_json()).digest == plain.digest
    with_pieces = manifest([FileEntry("a.bin", 3, "blake3:" + "0" * 64, PieceTable(P, ("1" * 64,)))])
    assert Manifest.from_json(with_pieces.to_json()) == with_pieces
    assert with_pieces.digest != plain.digest


@pytest.mark.parametrize("pieces", [{"size": 1000, "digests": ["1" * 64]}, {"size": P, "digests": ["1" * 64] * 2},
                                    {"size": P, "digests": ["XYZ"]}, {"size": P}])
def test_malformed_pieces_refuse_the_manifest(pieces):
    doc = manifest([FileEntry("a.bin", 3, "blake3:" + "0" * 64)]).to_json()
    doc["files"][0]["pieces"] = pieces
    with pytest.raises(IntegrityError):
        Manifest.from_json(doc)


def test_store_keeps_only_pieces_that_still_verify(tmp_path):
    data = os.urandom(3 * P)
    (tmp_path / "b").write_bytes(data)
    digest, size, table = hash_file(tmp_path / "b", P)
    ref = BlobRef(digest, size)
    store = PieceStore(tmp_path / "pieces")
    pf = store.acquire(ref, table)
    pf.put(0, data[:P])
    pf.put(2, data[2 * P:])
    pf.close()
    with open(pf.data_path, "r+b") as f:  # a crash tore piece 2
        f.seek(2 * P + 5)
        f.write(b"\0\1")
    again = PieceStore(tmp_path / "pieces").acquire(ref, table)
    assert again.resumed == 1 and again.has(0) and not again.has(2)


def test_piece_server_serves_only_to_the_swarm(tmp_path):
    data = os.urandom(2 * P + 7)
    (tmp_path / "b").write_bytes(data)
    digest, size, table = hash_file(tmp_path / "b", P)
    store = PieceStore(tmp_path / "pieces")
    pf = store.acquire(BlobRef(digest, size), table)
    pf.put(1, data[P:2 * P])
    tokens = {digest: "secret"}
    srv = PieceServer(store, tmp_path / "blobs", tokens, "127.0.0.1", 0, max_connections=2).start()
    try:
        url = f"http://127.0.0.1:{srv.port}/v1/pieces/{digest.split(':')[1]}"
        ok = {"Authorization": "Bearer secret"}
        assert httpx.get(f"{url}/1?size={P}").status_code == 403
        assert httpx.get(f"{url}/1?size={P}", headers={"Authorization": "Bearer nope"}).status_code == 403
        r = httpx.get(f"{url}/1?size={P}", headers=ok)
        assert r.status_code == 200 and r.content == data[P:2 * P] and int(r.headers["X-Pifarm-Have"], 16) == 2
        assert httpx.get(f"{url}/0?size={P}", headers=ok).status_code == 404  # not verified here yet
        assert httpx.get(url, headers=ok).json()["have"] == "2"
        assert httpx.get(f"{url}/1?size={2 * P}", headers=ok).status_code == 400
        assert httpx.get(f"http://127.0.0.1:{srv.port}/etc/passwd", headers=ok).status_code == 404
    finally:
        srv.stop()
