"""The soak (R7) in its short form: 60 s of bench/soak.py (`make soak` runs 600 s and writes
bench/soak.json). Publishes every 15 s with rollouts, a node restart at 30 s, 1,000 parked
watchers, load through HAProxy: zero failed requests, every node on the last promoted version,
and resident memory growth after warm-up under 10 % (the 600 s run's goal is 5 %: a 60 s run's
12 s warm-up leaves more of the allocator's settling in the window)."""

from __future__ import annotations

import pytest

from bench.soak import run
from tests.conftest import require
from tests.haproxy.harness import haproxy_exe

pytestmark = pytest.mark.slow


def test_short_soak(tmp_path):
    require(haproxy_exe() is not None, "haproxy missing (make system-deps installs it)")
    res = run(60.0, tmp_path, log=lambda *_: None)
    assert res["failed"] == 0, res["failed_examples"]
    assert set(res["serving"].values()) == {res["promoted"][-1]}, res
    assert res["rollouts_started"] >= 2 and res["node_restarts"] >= 1 and res["watcher_errors"] == 0
    assert res["watcher_answers"] >= 1000  # every publish answered the parked watchers
    assert res["max_growth"] is not None and res["max_growth"] < 0.10, res["memory"]
