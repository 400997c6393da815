"""The rollout state machine without processes: waves, activation, gates, aborts, promotion."""

from __future__ import annotations

import pytest

from pifarm.errors import UsageError
from pifarm.fleetwire.report import ModelReport, VersionStats
from pifarm.registry.fleet import NodeView
from pifarm.registry.rollout import Gates, new_rollout, parse_waves, step
from pifarm.signed.cohort import member

FAST = (0.001, 0.002, 0.005, 0.01, 0.05, 0.1)


def stats(n: int, latency: float, errors: int = 0) -> VersionStats:
    return VersionStats(n, errors, n * latency, tuple((b, n if latency <= b else 0) for b in FAST))


class Farm:
    """Ten simulated nodes: each serves stable v1 or, in the cohort, the rollout's version."""

    def __init__(self, n=10):
        self.ids = [f"node-{i:02d}" for i in range(n)]
        self.requests = {i: 0 for i in self.ids}
        self.missing: set[str] = set()
        self.fail_load = False
        self.new_latency = 0.0015
        self.new_errors = 0.0  # share of requests failing on the new version

    def views(self, r) -> list[NodeView]:
        out = []
        for i in self.ids:
            inside = r is not None and r["state"] == "running" and member(r["cohort"], r["seed"], i)
            v = 2 if inside else 1
            self.requests[i] += 200
            st = {"1": stats(self.requests[i], 0.0015)}
            error = failed = None
            if inside and self.fail_load:
                v, error, failed = 1, "version 2 (blake3:…) refused: not a TFLite model", 2
            elif inside:
                st["2"] = stats(self.requests[i], self.new_latency, int(self.requests[i] * self.new_errors))
            out.append(NodeView(i, i in self.missing, "stable",
                                ModelReport(active=2 if inside else 1, ready=True, serving=v, error=error,
                                            failed=failed, stats=st)))
        return out


def run(farm: Farm, r: dict, until: float = 200, dt: float = 1.0) -> tuple[dict, list[str]]:
    actions, now = [], r["started"]
    while now < r["started"] + until and r["state"] == "running":
        now += dt
        r, a = step(r, farm.views(r), now)
        if a:
            actions.append(a)
    return r, actions


def start(farm: Farm, waves="1,25%,100%", **gates) -> dict:
    r = new_rollout("m", 2, "blake3:" + "0" * 64, 1, parse_waves(waves), Gates(**{"bake": 10, "min_requests": 10,
                                                                                   **gates}), 1000.0, seed="s")
    r, a = step(r, farm.views(None), 1000.0)
    assert a == "publish" and len(r["members"]) == 1
    return r


def test_a_good_version_goes_through_every_wave_and_is_promoted():
    farm = Farm()
    r, actions = run(farm, start(farm))
    assert r["state"] == "promoted" and actions == ["publish", "publish", "promote"], r["events"]
    assert [res["passed"] for res in r["results"]] == [True, True, True]
    assert [len(res["members"]) for res in r["results"]] == [1, 3, 10]


def test_a_version_that_fails_to_load_aborts_in_the_first_wave():
    farm = Farm()
    farm.fail_load = True
    r, actions = run(farm, start(farm))
    assert r["state"] == "aborted" and actions == ["abort"] and r["wave"] == 0
    assert "failed to load" in r["reason"] and "not a TFLite model" in r["reason"]


def test_a_slower_version_aborts_on_the_latency_gate_with_its_ratio():
    farm = Farm()
    farm.new_latency = 0.04
    r, actions = run(farm, start(farm))
    assert r["state"] == "aborted" and actions == ["abort"]
    assert "latency gate" in r["reason"] and r["numbers"]["latency_ratio"] > 1.5


def test_errors_above_the_stable_rate_abort():
    farm = Farm()
    farm.new_errors = 0.05  # 5 % of requests fail
    r, _ = run(farm, start(farm))
    assert r["state"] == "aborted" and "error gate" in r["reason"]


def test_a_missing_first_wave_node_aborts_but_later_waves_proceed():
    farm = Farm()
    r = start(farm)
    farm.missing = set(r["members"])
    r, _ = run(farm, r)
    assert r["state"] == "aborted" and "missing" in r["reason"]


def test_bad_waves_and_gates():
    for bad in ("", "0", "abc", "150%", "1,,2"):
        with pytest.raises(UsageError):
            parse_waves(bad)
    with pytest.raises(UsageError):
        Gates(max_latency_ratio=0.5)
    assert parse_waves("1,25%,100%") == [["count", 1], ["percent", 25.0], ["percent", 100.0]]
