"""A real node configured with two aggregators of one shared SeaweedFS bucket (issue 17).

One aggregator killed -> the node keeps following revisions through the other without entering
degraded mode; both killed -> degraded; one back -> the node recovers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from pifarm.cache.nodestate import read_state
from pifarm.client.http import AggregatorClient
from tests.support.multiagg import TOKEN, SharedFarm
from tests.support.procs import REPO, free_port, stop_process
from tests.support.wait import wait_for

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def publish(farm: SharedFarm, i: int, tmp_path, n: int) -> dict:
    p = tmp_path / f"m{n}.bin"
    p.write_bytes(os.urandom(256))
    with AggregatorClient(farm.aggs[i].url, TOKEN) as c:
        return c.publish(p, "m", channel="stable", format="raw")


def test_node_with_two_aggregators_fails_over_without_degraded_mode(tmp_path, seaweed, s3_bucket):
    farm = SharedFarm(tmp_path, seaweed.endpoint, f"s3://{s3_bucket}/farm", seaweed.access_key, seaweed.secret_key,
                      n=2)
    a1, a2 = farm.aggs
    state = tmp_path / "node-state"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nreport_interval = 0\naggregators = ["{a2.url}"]\n'
                   "[cache]\nscrub_interval = 0.0\ntamper_watch = false\n")
    log = tmp_path / "node.log"
    argv = [sys.executable, "-m", "pifarm", "node", "run", "--no-serve", "--aggregator", a1.url, "--config", str(cfg),
            "--trust", str(farm.pubkey), "--cache", str(tmp_path / "cache"), "--state-dir", str(state),
            "--listen", f"127.0.0.1:{free_port()}"]
    with open(log, "ab") as out:
        node = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    degraded_seen = threading.Event()
    watching = threading.Event()
    stop = threading.Event()

    def watch() -> None:  # every state the node writes while one aggregator is still up
        while not stop.is_set():
            st = read_state(state)
            if watching.is_set() and st is not None and st.degraded:
                degraded_seen.set()
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def at(revision: int):
        def ok():
            assert node.poll() is None, log.read_text()[-3000:]
            st = read_state(state)
            return st if st is not None and st.revision >= revision and not st.degraded else None
        return ok

    try:
        v1 = publish(farm, 0, tmp_path, 1)
        wait_for(at(v1["revision"]), "the node at the first revision", timeout=90)
        watching.set()
        a1.kill()  # SIGKILL the aggregator the node follows
        v2 = publish(farm, 1, tmp_path, 2)
        st = wait_for(at(v2["revision"]), "the node at the revision published on the other aggregator", timeout=90)
        assert st.models["m"]["version"] == v2["version"]
        v3 = publish(farm, 1, tmp_path, 3)
        wait_for(at(v3["revision"]), "the node at the next revision", timeout=90)
        watching.clear()
        assert not degraded_seen.is_set(), "the node went degraded while an aggregator still answered"
        a2.kill()  # both down: degraded
        wait_for(lambda: (read_state(state) or None) and read_state(state).degraded, "degraded mode", timeout=120)
        a1.start(timeout=60)  # one back: the node leaves degraded mode and is on the newest revision
        wait_for(at(v3["revision"]), "the node out of degraded mode", timeout=120)
        assert "degraded" in log.read_text()
    finally:
        stop.set()
        stop_process(node)
        farm.stop()
