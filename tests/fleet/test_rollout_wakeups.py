"""Issue 19 on the aggregator's fleet side: the rollout engine ticks only while a rollout runs
(reports wake it only to write the fleet state). These count ticks and wake-ups while waiting for
some other event; no bound is a timing: a slow machine only makes them easier to meet."""

from __future__ import annotations

import time

from pifarm.appliance.demo.samplemodel import write_sample
from pifarm.fleetwire.report import ModelReport, Report, VersionStats
from pifarm.registry.fleet import Fleet
from pifarm.registry.rollout import Gates, RolloutEngine
from pifarm.registry.service import Registry


def _until(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _reports(fleet: Fleet, n: int) -> None:
    for node in ("node-0", "node-1"):
        stats = {"1": VersionStats(n, 0, n * 0.001, ((0.001, n), (0.01, n)))}
        fleet.record(Report(node=node, state="ready",
                            models={"m": ModelReport(active=1, ready=True, serving=1, stats=stats)}))


def test_the_rollout_engine_ticks_only_while_a_rollout_runs(tmp_path):
    d = tmp_path / "agg"
    reg = Registry.open(d)
    for seed, channel in ((1, "stable"), (2, None)):
        reg.publish(write_sample(tmp_path / f"m{seed}.tflite", "linear", seed=seed), "m", channel)
    fleet = Fleet(d, flush_interval=0.2)
    eng = RolloutEngine(reg, fleet, d, tick=0.05)  # a short tick: any idle ticking would show at once
    nodes = d / "fleet" / "nodes.json"
    eng.start()
    try:
        def flushed_round(n: int) -> None:
            """Another event the thread has a job for: reports make the fleet state dirty; it writes them."""
            before = fleet.reports
            _reports(fleet, n)
            _until(lambda: nodes.exists() and f'"requests":{n},' in nodes.read_text(), f"reports {n} written")
            assert fleet.reports == before + 2

        for n in (1, 2, 3):
            flushed_round(n)
        assert eng.ticks == 0, f"{eng.ticks} rollout ticks with no rollout"
        assert eng.wakeups <= 3 * 2 * 2 + 1, eng.wakeups  # at most: dirtied, then its flush, per report
        eng.begin("m", 2, "100%", Gates(bake=3600.0))
        _until(lambda: eng.ticks >= 3, "the engine ticking while the rollout runs")
        eng.abort("m")
        after = eng.ticks
        for n in (4, 5):
            flushed_round(n)
        assert eng.ticks <= after + 1, (after, eng.ticks)  # one already under way at most
    finally:
        eng.stop()
        reg.close()
    assert eng._thread is not None and not eng._thread.is_alive()
