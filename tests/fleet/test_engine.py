"""The rollout engine over a real registry in a temp dir (no processes): the snapshot carries the
rollout, pause stops the clock, a new engine on the same data dir resumes, promote and abort
move the snapshot, and the history keeps the outcome."""

from __future__ import annotations

import json

import pytest

from pifarm.appliance.demo.samplemodel import write_sample
from pifarm.errors import Conflict, NotFound
from pifarm.fleetwire.report import ModelReport, Report, VersionStats
from pifarm.registry.fleet import Fleet
from pifarm.registry.rollout import Gates, RolloutEngine
from pifarm.registry.service import Registry
from pifarm.signed.cohort import SPACE, member

NODES = [f"node-{i}" for i in range(4)]


class Clock:
    t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(tmp_path):
    reg = Registry.open(tmp_path / "agg")
    for seed, channel in ((1, "stable"), (2, None)):
        reg.publish(write_sample(tmp_path / f"m{seed}.tflite", "linear", seed=seed), "m", channel)
    clock = Clock()
    fleet = Fleet(tmp_path / "agg", clock=clock)
    yield reg, fleet, clock, tmp_path / "agg"
    reg.close()


def report(fleet: Fleet, snap: dict, n: int) -> None:
    """Every node serves what the snapshot tells it, with `n` fast requests on it so far."""
    roll = snap.get("rollouts", {}).get("m")
    for node in NODES:
        v = roll["version"] if roll and member(roll["cohort"], roll["seed"], node) else 1
        stats = {str(v): VersionStats(n, 0, n * 0.001, ((0.001, n), (0.01, n)))}
        fleet.record(Report(node=node, state="ready", models={"m": ModelReport(active=v, ready=True, serving=v,
                                                                               stats=stats)}))


def snapshot(reg: Registry) -> dict:
    return reg.snapshot_document()["signed"]


def test_begin_pause_resume_restart_promote(world):
    reg, fleet, clock, d = world
    report(fleet, snapshot(reg), 0)
    eng = RolloutEngine(reg, fleet, d, clock=clock)
    r = eng.begin("m", 2, "1,100%", Gates(bake=10, min_requests=5))
    roll = snapshot(reg)["rollouts"]["m"]
    assert roll["version"] == 2 and sum(member(roll["cohort"], roll["seed"], n) for n in NODES) == 1
    with pytest.raises(Conflict, match="already running"):
        eng.begin("m", 2)
    n = 0
    for _ in range(3):  # the wave node activates; baking starts
        n += 50
        clock.t += 1
        report(fleet, snapshot(reg), n)
        eng.tick()
    assert eng.status("m")["phase"] == "baking"
    eng.pause("m")
    clock.t += 60  # paused: the bake clock stands still
    eng.tick()
    assert eng.status("m")["state"] == "paused" and eng.status("m")["wave"] == 0
    # a new engine on the same data dir (an aggregator restart) resumes it
    eng2 = RolloutEngine(reg, Fleet(d, clock=clock), d, clock=clock)
    eng2.fleet = fleet
    eng2.resume("m")
    for _ in range(30):
        n += 50
        clock.t += 1
        report(fleet, snapshot(reg), n)
        eng2.tick()
        if eng2.status("m")["state"] == "promoted":
            break
    st = eng2.status("m")
    assert st["state"] == "promoted" and st["synced"] is True, st["events"]
    assert [x["passed"] for x in st["results"]] == [True, True]
    assert reg.models()["m"]["channels"]["stable"] == 2 and "rollouts" not in snapshot(reg)
    assert json.loads((d / "fleet" / "rollouts.json").read_text())["history"][-1]["state"] == "promoted"


def test_abort_drops_the_rollout_from_the_snapshot(world):
    reg, fleet, clock, d = world
    report(fleet, snapshot(reg), 0)
    eng = RolloutEngine(reg, fleet, d, clock=clock)
    eng.begin("m", 2, "100%", Gates(bake=10))
    assert snapshot(reg)["rollouts"]["m"]["cohort"] == SPACE
    st = eng.abort("m")
    assert st["state"] == "aborted" and st["reason"] == "aborted by the operator"
    assert "rollouts" not in snapshot(reg) and reg.models()["m"]["channels"]["stable"] == 1
    with pytest.raises(NotFound):
        eng.pause("m")
    with pytest.raises(NotFound, match="no live version 7"):
        eng.begin("m", 7)
    with pytest.raises(Conflict, match="already stable"):
        eng.begin("m", 1)
