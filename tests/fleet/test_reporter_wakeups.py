"""Issue 19 on the node's fleet side: the reporter wakes when it has a job, not on a fixed short
tick. These count wake-ups, builds and looks while waiting for some other event; no bound is a
timing: a slow machine only makes them easier to meet."""

from __future__ import annotations

import math
import threading
import time

from pifarm.cache.nodestate import NodeState, write_state
from pifarm.initiator.report import SETTLE_FIRST, Reporter
from tests.support.aggregator import free_port


def _until(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_state_change_is_reported_at_once_then_watched_by_a_few_health_looks(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    write_state(state, NodeState(revision=1))
    # nothing listens at the aggregator's address: reports are dropped, which changes no count here
    rep = Reporter(aggregator=f"http://127.0.0.1:{free_port()}", node_id="n1", interval=3600.0,
                   state_dir=state, cache=None)
    stop = threading.Event()
    t = threading.Thread(target=rep.run, args=(stop,), daemon=True)
    t.start()
    try:
        _until(lambda: rep._last_fp is not None, "the first report")
        slow = rep._slow
        write_state(state, NodeState(revision=2))
        rep.poke()
        _until(lambda: '"revision": 2' in rep._last_fp, "a report at once on the state change")
        assert rep.builds == 2
        assert rep._slow is slow  # throttling/temperature (vcgencmd on a Pi) not read again within the interval
        t0 = time.monotonic()
        _until(lambda: rep.looks >= 3, "three /health looks after the change")
        elapsed = time.monotonic() - t0
        # nothing moved: no whole report per look (it used to build one every 0.5 s for 30 s)
        assert rep.builds == 2, rep.builds
        # the looks come at doubling gaps from SETTLE_FIRST: their count grows with log(elapsed)
        assert rep.looks <= math.log2(elapsed / SETTLE_FIRST + 1) + 2, (rep.looks, elapsed)
        assert rep.wakeups <= rep.builds + rep.looks + 1, (rep.wakeups, rep.builds, rep.looks)
    finally:
        stop.set()
        rep.poke()
        t.join(timeout=10)
        rep.close()
    assert not t.is_alive()
