"""Issue 19: an idle node's model manager wakes at its poll interval, not at the pace of its own reads.

The ref watch used to call reconcile() on every event under the cache, including the open and
close-without-write of the ref files that reconcile itself reads: each pass started the next (a
core busy, an unbounded event backlog). These tests count passes and watch callbacks; the bounds
follow from the configured interval, so a slow machine only makes them easier to meet.
"""

from __future__ import annotations

import time

import pytest

from pifarm.appliance.demo import samplemodel as sm
from pifarm.inference.manager import ModelManager
from pifarm.inference.metrics import ServerMetrics
from pifarm.inference.settings import InferenceSettings
from tests.inference.helpers import make_cache


def _count(metrics: ServerMetrics, name: str, **labels) -> float:
    v = metrics.registry.get_sample_value(name, labels or None)
    return v or 0.0


def _passes(metrics: ServerMetrics) -> float:
    return sum(_count(metrics, "pifarm_inference_rescans_total", cause=c) for c in ("event", "poll", "direct", "retry", "start"))


def _until(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def manager(tmp_path):
    made = []

    def make(poll: float) -> tuple[ModelManager, object]:
        tc = make_cache(tmp_path / "cache")
        tc.publish("lin", 1, sm.linear_model(16, 4, 1))
        m = ModelManager(InferenceSettings(state_poll_seconds=poll), tc.root, None, ServerMetrics())
        made.append(m)
        m.start()
        _until(lambda: m.health()["ready"], "v1 served")
        return m, tc

    yield make
    for m in made:
        m.stop()


def test_an_idle_manager_rescans_at_its_poll_interval_not_at_the_pace_of_its_own_reads(manager):
    poll = 0.5
    m, _ = manager(poll)
    p0, e0, t0 = _passes(m.metrics), _count(m.metrics, "pifarm_inference_ref_events_total"), time.monotonic()
    # Idle for a while: every pass reads each ref file (open + close-without-write) and lists refs/.
    _until(lambda: _passes(m.metrics) - p0 >= 6, "six passes")
    elapsed = time.monotonic() - t0
    passes = _passes(m.metrics) - p0
    events = _count(m.metrics, "pifarm_inference_ref_events_total") - e0
    # Six passes take at least five poll intervals; with the feedback loop they came at once
    # (thousands a second).
    assert passes <= elapsed / poll + 3, f"{passes} passes in {elapsed:.2f} s with a {poll} s poll interval"
    assert events == 0, f"{events} ref events while nothing changed: the watch reacts to its own reads"
    assert m._observer.event_queue.qsize() == 0  # nothing piles up behind the dispatcher either


def test_a_ref_change_still_wakes_the_manager_at_once(manager):
    m, tc = manager(3600.0)  # the poll cannot be what notices it
    ev0 = _count(m.metrics, "pifarm_inference_rescans_total", cause="event")
    tc.publish("lin", 2, sm.linear_model(16, 4, 2))
    _until(lambda: m.health()["models"]["lin"]["version"] == 2, "v2 served after its ref changed")
    woke = _count(m.metrics, "pifarm_inference_rescans_total", cause="event") - ev0
    events = _count(m.metrics, "pifarm_inference_ref_events_total")
    # One ref replace is a handful of inotify events (temp file, rename); they coalesce on the
    # rescan thread into at most as many passes, and the passes' own reads add none.
    assert 1 <= woke <= events <= 10, (woke, events)
    assert _count(m.metrics, "pifarm_inference_rescans_total", cause="poll") == 0
