"""Fan-out on a simulated rack (issue 16): 4 real nodes in network namespaces share verified pieces.

Links are shaped low (nodes 40 Mbit/s, aggregator 80 Mbit/s) so a 48 MiB model takes long enough
to kill a peer mid-transfer on a busy machine; nothing here asserts a time (bench S1 measures).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pifarm.initiator.settings import PeerOptions
from pifarm.signed.integrity import BlobRef, verify_file
from tests.peers.rack import Rack, have_tools
from tests.support.wait import wait_for

MiB = 1 << 20
SIZE = 48 * MiB
PIECE = 1 * MiB  # what a publish picks for 48 MiB (pifarm.signed.pieces.piece_size_for)
NODES = 4


@pytest.fixture(scope="module")
def rack(tmp_path_factory):
    why = have_tools()
    if why:
        pytest.fail(f"the rack tests need {why}; `make system-deps` installs iproute2")
    with Rack(tmp_path_factory.mktemp("rack"), nodes=NODES, node_mbit=40, agg_mbit=80) as r:
        r.start_aggregator()
        yield r


@pytest.fixture
def fresh(rack):
    """Nodes stopped before and after each test (each test starts the ones it wants)."""
    rack.stop_nodes()
    yield rack
    rack.stop_nodes()


def model(rack: Rack, name: str) -> tuple[Path, BlobRef]:
    from pifarm.signed.integrity import digest_file

    p = rack.root / f"{name}.bin"
    p.write_bytes(os.urandom(SIZE))
    digest, size = digest_file(p)
    return p, BlobRef(digest, size)


def fetched(stats: dict) -> int:
    return stats.get("bytes_from_peers", 0) + stats.get("bytes_from_aggregator", 0)


def check_installed(rack: Rack, ref: BlobRef, nodes) -> None:
    for i in nodes:
        verify_file(rack.blob(i, ref.digest), ref)  # raises unless the very bytes published


def test_every_node_ends_verified_sharing_pieces(fresh):
    rack = fresh
    rack.start_nodes(peers=True)
    path, ref = model(rack, "shared")
    v = rack.publish(path)
    rack.wait_version(v)
    check_installed(rack, ref, range(NODES))
    stats = [rack.stats(i) for i in range(NODES)]
    assert all(s.get("blobs") == 1 for s in stats), stats
    # every verified piece was fetched once, and the nodes did pass pieces to each other
    assert all(fetched(s) == SIZE for s in stats), stats
    assert sum(s["bytes_from_peers"] for s in stats) > 0, stats
    assert not any(s["bad_pieces"] for s in stats), stats


def test_peers_disabled_same_result(fresh):
    rack = fresh
    before = [rack.stats(i) for i in range(NODES)]
    rack.start_nodes(peers=False)
    path, ref = model(rack, "alone")
    v = rack.publish(path)
    rack.wait_version(v)
    check_installed(rack, ref, range(NODES))
    assert [rack.stats(i) for i in range(NODES)] == before  # no peer source ran: the aggregator served all


def test_corrupting_peer_is_dropped_and_nothing_bad_installed(fresh):
    rack = fresh
    path, ref = model(rack, "corrupt")
    rack.start_node(0, peers=True)
    v = rack.publish(path)
    rack.wait_version(v, nodes=[0])
    blob = rack.blob(0, ref.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:  # node 0 now serves every piece from 1 on with one flipped byte
        for k in range(1, SIZE // PIECE):
            f.seek(k * PIECE + 123)
            b = f.read(1)
            f.seek(k * PIECE + 123)
            f.write(bytes([b[0] ^ 0xFF]))
    for i in range(1, NODES):
        rack.start_node(i, peers=True, wait=False)
    for i in range(1, NODES):
        rack.wait_started(rack.boxes[i], True)
    rack.wait_version(v, nodes=[1, 2, 3])
    check_installed(rack, ref, [1, 2, 3])
    stats = [rack.stats(i) for i in (1, 2, 3)]
    bad = [s for s in stats if s.get("bad_pieces")]
    assert bad, f"no node was offered a corrupt piece by node 0: {stats}"
    bad_node = rack.boxes[0].node_id
    assert all(bad_node in s["dropped_peers"] for s in bad), stats
    # each node that met the corrupt peer lost at most the pieces it had in flight from it
    assert all(s["bad_pieces"] <= 2 for s in bad), stats
    assert f"reports peer {bad_node}" in rack.agg.output(200_000)


def test_peer_killed_mid_transfer_costs_only_pieces_in_flight(fresh):
    rack = fresh
    path, ref = model(rack, "killed")
    rack.start_nodes(peers=True)
    v = rack.publish(path)
    have = rack.boxes[1].root / "state" / "pieces" / f"{ref.hex}.have"

    def mid():
        try:
            n = len(have.read_text().split())
        except FileNotFoundError:
            return False
        return 2 <= n < SIZE // PIECE - 2
    wait_for(mid, "node 1 half-way through the blob", 300, interval=0.05)
    kept = len(have.read_text().split())
    rack.kill_node(1)
    rack.wait_version(v, nodes=[0, 2, 3])
    check_installed(rack, ref, [0, 2, 3])
    for i in (0, 2, 3):
        s = rack.stats(i)
        assert fetched(s) == SIZE, s  # no verified piece fetched twice: only requests in flight were lost
        # the requests in flight (`downloads`), and the refusals that show the peer gone
        assert s["failed_requests"] <= PeerOptions().downloads + 2, s
    rack.start_node(1, peers=True)  # resumes from the pieces it verified before the kill
    rack.wait_version(v, nodes=[1])
    check_installed(rack, ref, [1])
    s = rack.stats(1)
    assert s["resumed_pieces"] >= min(kept, 2), s
    assert fetched(s) == SIZE - s["resumed_pieces"] * PIECE, s
