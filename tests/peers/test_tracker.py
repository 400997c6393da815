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
