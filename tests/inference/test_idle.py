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
from tests.support.aggregator import aggregator, aggregator_factory  # noqa: F401 (fixtures)
from tests.support.procs import REPO


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


def _scrape(url: str) -> tuple[float, float]:
    """(reconcile passes, ref events) from a running node's /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    passes = events = 0.0
    for line in text.splitlines():
        if line.startswith("pifarm_inference_rescans_total{"):
            passes += float(line.rsplit(" ", 1)[1])
        elif line.startswith("pifarm_inference_ref_events_total "):
            events = float(line.rsplit(" ", 1)[1])
    return passes, events


@pytest.mark.slow
def test_an_idle_pifarm_node_run_rescans_at_its_poll_interval(aggregator, tmp_path):  # noqa: F811
    import subprocess
    import sys

    import httpx

    from tests.support.aggregator import free_port
    from tests.support.procs import stop_process

    model = tmp_path / "sample.tflite"
    sm.write_sample(model, "linear", seed=5)
    with aggregator.client() as rc:
        rc.publish(model, "sample", "stable")
    port, poll = free_port(), 0.5
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\ntrusted_keys = ["{aggregator.pubkey}"]\n[inference]\nstate_poll_seconds = {poll}\n'
                   f'grpc_listen = "127.0.0.1:{free_port()}"\n[inference.models.sample]\nnum_threads = 1\n')
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        node = subprocess.Popen([sys.executable, "-m", "pifarm", "node", "run", "--aggregator", aggregator.url,
                                 "--config", str(cfg), "--cache", str(tmp_path / "cache"), "--state-dir",
                                 str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        def serving() -> bool:
            assert node.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(url + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        _until(serving, "the node serving the model", timeout=90)
        p0, e0 = _scrape(url)
        t0 = time.monotonic()
        _until(lambda: _scrape(url)[0] - p0 >= 6, "six passes")
        elapsed = time.monotonic() - t0
        p1, e1 = _scrape(url)
        assert p1 - p0 <= elapsed / poll + 3, f"{p1 - p0} passes in {elapsed:.2f} s with a {poll} s poll interval"
        assert e1 - e0 <= 2, f"{e1 - e0} ref events on an idle node"  # the activation's last writes at most
    finally:
        stop_process(node)
