"""The aggregator as tracker (issue 16), on a real aggregator: node auth, bounded shuffled lists
with the caller's rack first, the swarm token, bans after a bad piece, holders from reports."""

from __future__ import annotations

import httpx

from pifarm.registry.fleet_api import load_token_key, node_token

BLOB = "blake3:" + "ab" * 32


def ask(agg, node: str, port: int = 8070, token: str | None = None, **params):
    key = load_token_key(agg.data_dir)
    headers = {"Authorization": f"Bearer {token or node_token(key, node)}", "X-Pifarm-Node": node}
    return httpx.get(agg.url + "/v1/peers", params={"blob": BLOB, "port": port, **params}, headers=headers,
                     timeout=10)


def test_tracker_needs_a_node(aggregator):
    r = httpx.get(aggregator.url + "/v1/peers", params={"blob": BLOB, "port": 1}, timeout=10)
    assert r.status_code == 401
    assert ask(aggregator, "n1", token="wrong").status_code == 403
    assert ask(aggregator, "n1", blob="sha256:x").status_code == 400
    assert ask(aggregator, "n1", port=0).status_code == 400


def test_swarm_lists_others_rack_first_bounded_and_bans_bad_peers(aggregator):
    for i in range(8):
        assert ask(aggregator, f"n{i}", port=9000 + i, rack="r1" if i < 3 else "r2").status_code == 200
    r = ask(aggregator, "n0", port=9000, rack="r1", limit=5).json()
    assert len(r["peers"]) == 5 and "n0" not in {p["node"] for p in r["peers"]}
    assert [p["rack"] for p in r["peers"][:2]] == ["r1", "r1"]
    assert all(p["url"].startswith("http://127.0.0.1:90") for p in r["peers"])
    token = r["token"]
    assert ask(aggregator, "n5", port=9005).json()["token"] == token  # one token per blob, for every node
    key = load_token_key(aggregator.data_dir)
    bad = httpx.post(aggregator.url + "/v1/peers/bad", json={"blob": BLOB, "node": "n1", "reason": "piece 3"},
                     headers={"Authorization": f"Bearer {node_token(key, 'n0')}", "X-Pifarm-Node": "n0"}, timeout=10)
    assert bad.status_code == 200
    listed = {p["node"] for p in ask(aggregator, "n2", port=9002, limit=50).json()["peers"]}
    assert "n1" not in listed and len(listed) == 6


def test_reports_make_holders_and_silent_nodes_age_out(tmp_path):
    """In-process on a real registry and fleet, with the clock in the test's hand: nodes whose
    reports name a version holding the blob stay holders after their announces lapsed (bounded,
    shuffled, same rack first), and a node that stops reporting is no longer handed out."""
    import json
    import os

    from pifarm.registry.fleet_api import FleetService
    from pifarm.registry.service import Registry
    from pifarm.registry.tracker import TTL, Tracker

    now = [1_000_000.0]
    clock = lambda: now[0]  # noqa: E731
    f = tmp_path / "m.bin"
    f.write_bytes(os.urandom(100_000))
    with Registry.open(tmp_path / "agg") as reg:
        manifest, _ = reg.publish(f, "m", "stable", format="raw")
        blob = manifest.files[0].digest
        svc = FleetService(reg, tmp_path / "agg", "admin-token")
        svc.fleet.clock = clock
        tracker = Tracker(svc, clock=clock)
        seq = [0]

        def report(node: str) -> None:
            seq[0] += 1
            body = {"type": "node-report", "format": 1, "node": node, "interval": 10, "seq": seq[0], "state": "ready",
                    "channel": "stable", "revision": reg.revision, "models": {"m": {"active": manifest.version}}}
            svc.report(json.dumps(body).encode(), f"Bearer {node_token(svc.key, node)}", None)

        nodes = [f"n{i}" for i in range(12)]
        for i, n in enumerate(nodes):  # each announced its piece address once (as its seeding does) ...
            tracker.peers(n, blob, f"10.0.0.{i}", 8472, rack="r1" if i < 3 else "r2", complete=True)
            report(n)
        now[0] += TTL + 5  # ... long ago: only the reports keep them listed now
        for n in nodes:
            report(n)

        def ask(limit: int = 50) -> list[dict]:
            return tracker.peers("asker", blob, "10.0.1.1", 8472, rack="r1", limit=limit)["peers"]

        got = ask(limit=5)
        assert len(got) == 5 and all(p["complete"] for p in got)
        assert [p["rack"] for p in got[:3]] == ["r1"] * 3  # the asker's rack first
        assert got[0]["url"].startswith("http://10.0.0.")
        tails = {tuple(p["node"] for p in ask()[3:]) for _ in range(20)}
        assert len(tails) > 1  # shuffled, not the same order for everyone
        assert {p["node"] for p in ask()} == set(nodes)
        for _ in range(4):  # n0 falls silent for 4 report intervals; the rest keep reporting
            now[0] += 10
            for n in nodes[1:]:
                report(n)
        assert {p["node"] for p in ask()} == set(nodes[1:])
        report("n0")  # it comes back: listed again
        assert "n0" in {p["node"] for p in ask()}
