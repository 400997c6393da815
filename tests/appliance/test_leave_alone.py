"""Issue 20, the node: a node you can leave alone. Real processes only: a real aggregator, real
`pifarm node run` daemons, the real CLI; each test fails without its fix.

    one owner per cache/state dir, read-only commands that stay read-only, a refused manual
    rollback on a live node, an untrusted snapshot with backoff, one state for status, node.json,
    /health and the fleet report, all metrics on one /metrics with bounded labels, one-line
    errors (port in use, read-only state dir), the default cache retention, lifecycle at INFO.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pifarm.appliance.demo import samplemodel as sm
from tests.support.aggregator import aggregator, aggregator_factory  # noqa: F401 (fixtures)
from tests.support.procs import REPO, free_port, run_cli, stop_process
from tests.support.wait import wait_for, wait_http

pytestmark = pytest.mark.slow


def publish(agg, tmp_path: Path, seed: int, name: str = "lin", channel: str | None = "stable") -> int:
    model = tmp_path / f"{name}-{seed}.tflite"
    sm.write_sample(model, "linear", seed=seed)
    with agg.client() as c:
        return c.publish(model, name, channel)["version"]


class Node:
    """`pifarm node run` as a subprocess; stop() by its pid."""

    def __init__(self, tmp_path: Path, agg, *, trust: Path | None = None, cache: Path | None = None,
                 state: Path | None = None, port: int | None = None, extra: tuple[str, ...] = (),
                 config: str = "", env: dict | None = None, log_name: str = "node.log", pre: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.cache = cache or tmp_path / "cache"
        self.state = state or tmp_path / "state"
        cfg = tmp_path / f"{log_name}.toml"
        cfg.write_text("[node]\nreport_interval = 0\n[cache]\nscrub_interval = 0.0\ntamper_watch = false\n"
                       "[inference]\ngrpc_listen = \"\"\n" + config)
        self.log = tmp_path / log_name
        self.argv = [sys.executable, "-m", "pifarm", *pre, "node", "run", "--aggregator", agg.url, "--config", str(cfg),
                     "--trust", str(trust or agg.pubkey), "--cache", str(self.cache), "--state-dir", str(self.state),
                     "--listen", f"127.0.0.1:{self.port}", *extra]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                         start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                httpx.get(self.url + "/v2/health/live", timeout=2)
                return True
            except httpx.HTTPError:
                return False
        wait_for(up, "the node's inference server", timeout=60)

    def health(self) -> httpx.Response:
        return httpx.get(self.url + "/health", timeout=10)

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def nodes():
    started: list[Node] = []
    yield started
    for n in started:
        n.stop()


def start(nodes, *a, **kw) -> Node:
    n = Node(*a, **kw)
    nodes.append(n)
    return n


def status(state: Path) -> dict:
    r = run_cli(["status", "--state-dir", str(state), "--json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("pifarm: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# ------------------------------------------------------------------------- one owner per cache


def test_second_node_on_one_cache_is_refused_and_read_only_commands_stay_read_only(aggregator, tmp_path, nodes):  # noqa: F811
    publish(aggregator, tmp_path, 1)
    first = start(nodes, tmp_path, aggregator)
    first.wait_up()
    wait_http(httpx.Client(base_url=first.url), "/health", lambda r: r.status_code == 200, timeout=60)
    # a second daemon, same cache and state dir, its own ports
    r = subprocess.run([*first.argv[:-1], f"127.0.0.1:{free_port()}"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and f"pid {first.proc.pid}" in one_line_error(r), r.stderr
    # and only the cache shared (its own state dir)
    argv = list(first.argv)
    argv[argv.index("--state-dir") + 1] = str(tmp_path / "state2")
    argv[-1] = f"127.0.0.1:{free_port()}"
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "cache" in r.stderr and f"pid {first.proc.pid}" in r.stderr, r.stderr

    # `cache ls` only reads: a leftover temp file and a stray name in blobs/, which start-up
    # recovery removes, are still there afterwards
    stray_tmp = first.cache / "tmp" / ".leftover.part"
    stray_tmp.write_bytes(b"x")
    stray_blob = first.cache / "blobs" / "blake3" / "not-a-blob"
    stray_blob.write_bytes(b"y")
    r = run_cli(["cache", "ls", "--cache", str(first.cache), "--json"])
    assert r.returncode == 0, r.stderr
    assert stray_tmp.exists() and stray_blob.exists()
    assert not list((first.cache / "quarantine").iterdir())
    assert json.loads(r.stdout)["models"][0]["active"] == 1
    # commands that would change what the live node serves are refused with the reason
    for cmd, why in ((["cache", "rollback", "lin"], "pifarm rollback lin --channel"), (["cache", "gc"], "collects"),
                     (["cache", "verify"], "scrub")):
        r = run_cli([*cmd, "--cache", str(first.cache)])
        line = one_line_error(r)
        assert r.returncode == 1 and f"pid {first.proc.pid}" in line and why in line, (cmd, r.stderr)
    first.stop()
    # once the node is gone the lock is free: the next owner starts
    again = start(nodes, tmp_path, aggregator, log_name="again.log")
    again.wait_up()


# ------------------------------------------------------------------------- a status that tells the truth


def test_wrong_trust_key_is_an_untrusted_snapshot_with_backoff(aggregator, tmp_path, nodes):  # noqa: F811
    publish(aggregator, tmp_path, 1)
    r = run_cli(["keys", "generate", "--out", str(tmp_path / "other")])
    assert r.returncode == 0, r.stderr
    node = start(nodes, tmp_path, aggregator, trust=tmp_path / "other" / "signing.pub")
    node.wait_up()
    st = wait_for(lambda: (s := status(node.state)) and s["watcher"] == "untrusted snapshot" and s,
                  "status naming the untrusted snapshot", timeout=60)
    assert st["state"] != "ready" and "unknown key" in st["reason"] and "untrusted snapshot" in st["reason"]
    h = node.health().json()
    assert h["degraded"] is True and "untrusted snapshot" in h["degraded_reason"]
    text = run_cli(["status", "--state-dir", str(node.state)]).stdout
    assert "untrusted snapshot" in text.splitlines()[0] and "node: ok" not in text

    def refused() -> float:
        m = re.search(r"^pifarm_node_snapshots_refused_total (\S+)$", node.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    # backoff: the refusals slow down (exponential, equal jitter up to [watcher] backoff_max = 30 s).
    # Polled once a second (the old behaviour) this would be ~20 more after the 6th; with the
    # backoff the 6th comes ~8 s in and at most ~5 follow in the next 20 s.
    wait_for(lambda: refused() >= 6, "six refusals", timeout=90)
    first = refused()
    stop_at = __import__("time").monotonic() + 20
    wait_for(lambda: __import__("time").monotonic() > stop_at, "20 s of watching", timeout=30, interval=0.5)
    assert refused() - first <= 6, (first, refused())
    assert node.output().count("ERROR") == 1, node.output()[-3000:]  # said once at ERROR, then at INFO


def test_status_health_and_report_agree(aggregator_factory, tmp_path, nodes):  # noqa: F811
    from pifarm.cache.nodestate import node_status, read_state
    from pifarm.initiator.report import Reporter

    agg = aggregator_factory()
    publish(agg, tmp_path, 1)
    node = start(nodes, tmp_path, agg)
    node.wait_up()
    wait_http(httpx.Client(base_url=node.url), "/health", lambda r: r.status_code == 200, timeout=60)

    def views() -> tuple[tuple, tuple, tuple]:
        st = status(node.state)
        rep = Reporter(aggregator=agg.url, node_id="n1", token="", interval=10, state_dir=node.state, cache=None,
                       inference_url=node.url, address=node.url).build()
        h = node.health()
        return (st["state"], st["reason"]), (rep.state, rep.reason), node_status(read_state(node.state), h.json())

    a, b, c = views()
    assert a == b == c == ("ready", None)
    st = status(node.state)
    assert st["live_path"] == "http" and st["models"]["lin"]["version"] == 1

    # the aggregator goes away: degraded everywhere, the same reason, and no path shown live
    agg.stop()
    wait_for(lambda: status(node.state)["state"] == "degraded", "degraded", timeout=90)
    a, b, c = views()
    assert a == b == c and a[0] == "degraded" and a[1]
    st = status(node.state)
    assert st["live_path"] is None and st["paths"]["http"] == "unreachable"
    text = run_cli(["status", "--state-dir", str(node.state)]).stdout
    assert text.startswith("node: degraded") and "(live: http)" not in text, text

    # back: ready again; then a model the budget refuses is "model refused", never "vNone from ?"
    agg.start()
    wait_for(lambda: status(node.state)["state"] == "ready", "ready again", timeout=90)
    node.stop()
    small = start(nodes, tmp_path, agg, cache=tmp_path / "small", state=tmp_path / "small-state",
                  config="", env={"PIFARM_CACHE_MAX_BYTES": "1500"}, log_name="small.log")
    small.wait_up()
    wait_http(httpx.Client(base_url=small.url), "/health", lambda r: r.status_code == 200, timeout=60)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4000))
    with agg.client() as c:
        c.publish(big, "big", "stable", format="raw")
    st = wait_for(lambda: (s := status(small.state)) and s["watcher"] == "model refused" and s, "model refused", 90)
    # big cannot be served (its prefetch was refused), so /health answers 503: not-ready, and the
    # reason starts with the watcher's (the cause), as in /health and the report
    assert st["state"] == "not-ready" and st["reason"].startswith("model refused: big") and "budget" in st["reason"]
    assert small.health().status_code == 503
    text = run_cli(["status", "--state-dir", str(small.state)]).stdout
    assert "vNone" not in text and "from ?" not in text and "big: no version active" in text, text
    h = small.health().json()
    assert h["degraded"] and "model refused" in h["degraded_reason"]
    # the budget came from the daemon's environment: `cache ls` in a plain shell says so
    r = run_cli(["cache", "ls", "--cache", str(small.cache)])
    assert "PIFARM_CACHE_MAX_BYTES" in r.stdout and f"pid {small.proc.pid}" in r.stdout, r.stdout


# ------------------------------------------------------------------------- metrics in one place


def test_one_metrics_endpoint_with_bounded_labels(aggregator, tmp_path, nodes):  # noqa: F811
    publish(aggregator, tmp_path, 1)
    node = start(nodes, tmp_path, aggregator)
    node.wait_up()
    wait_http(httpx.Client(base_url=node.url), "/health", lambda r: r.status_code == 200, timeout=60)
    text = node.metrics()
    for name in ("pifarm_inference_active_version", "pifarm_cache_blobs_installed_total", "pifarm_node_degraded",
                 "pifarm_cache_budget_refusals_total", "pifarm_cache_bytes", "process_resident_memory_bytes",
                 "process_cpu_seconds_total", "python_gc_collections_total"):
        assert re.search(rf"^{name}\b", text, re.M), name
    assert len(re.findall(r"^process_resident_memory_bytes ", text, re.M)) == 1  # once, not per registry

    def series(t: str) -> int:
        return len(re.findall(r"^pifarm_inference_errors_total\{", t, re.M))

    before = series(text)
    with httpx.Client(base_url=node.url, timeout=10) as c:
        for i in range(100):
            r = c.post(f"/v2/models/random-{os.urandom(4).hex()}/infer", json={})
            assert r.status_code == 404, r.text
    after = node.metrics()
    assert series(after) - before <= 1, re.findall(r"^pifarm_inference_errors_total\{.*$", after, re.M)
    assert 'model="_unknown_"' in after
    # aggregator: process metrics, requests by route template and status
    agg_text = httpx.get(aggregator.url + "/metrics").text
    assert re.search(r"^process_resident_memory_bytes ", agg_text, re.M)
    assert re.search(r'^pifarm_http_requests_total\{method="GET",route="/v1/metadata",status="(200|304)"\}', agg_text,
                     re.M), agg_text[-2000:]


# ------------------------------------------------------------------------- errors: one line, early


def test_port_in_use_is_one_line_before_any_pull(aggregator, tmp_path):  # noqa: F811
    publish(aggregator, tmp_path, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        node = Node(tmp_path, aggregator, port=port)
        try:
            rc = node.proc.wait(timeout=120)
        finally:
            node.stop()
    out = node.output()
    assert rc == 1 and "Traceback" not in out, out
    assert f"127.0.0.1:{port} is already in use" in out, out
    blobs = node.cache / "blobs" / "blake3"
    assert not blobs.exists() or not list(blobs.iterdir()), "pulled before binding"


def test_read_only_state_dir_is_one_line(aggregator, tmp_path):  # noqa: F811
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
    assert mount.returncode == 0, f"this test mounts a read-only tmpfs (as root): {mount.stderr}"
    try:
        node = Node(tmp_path, aggregator, state=ro / "state")
        rc = node.proc.wait(timeout=120)
        out = node.output()
        assert rc == 1 and "Traceback" not in out, out
        assert len(out.strip().splitlines()) == 1 and "state directory" in out and "Read-only" in out, out
        node = Node(tmp_path, aggregator, state=ro, log_name="node2.log")
        rc = node.proc.wait(timeout=120)
        out = node.output()
        assert rc == 1 and "Traceback" not in out and "not writable" in out, out
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_cli_errors_name_the_real_reason(aggregator, tmp_path, nodes):  # noqa: F811
    publish(aggregator, tmp_path, 1)
    node = start(nodes, tmp_path, aggregator)
    node.wait_up()
    r = httpx.post(node.url + "/v2/models/nosuch/infer", json={})
    assert r.status_code == 404, r.text
    # --registry pointed at a node's inference port
    r = run_cli(["models", "--registry", node.url])
    line = one_line_error(r)
    assert r.returncode == 1 and "not a pifarm aggregator" in line and "Not Found" not in line, line
    # not a TFLite model: exit 1 (the command was used right), one line
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"hello, not a flatbuffer")
    r = run_cli(["publish", str(bad), "--name", "bad", "--registry", aggregator.url],
                env={"PIFARM_API_TOKEN": aggregator.token})
    assert r.returncode == 1 and "not a TFLite model" in one_line_error(r), r.stderr
    # publish prints its result on stdout, nothing else
    model = tmp_path / "ok.tflite"
    sm.write_sample(model, "linear", seed=9)
    r = run_cli(["publish", str(model), "--name", "ok", "--registry", aggregator.url],
                env={"PIFARM_API_TOKEN": aggregator.token})
    assert r.returncode == 0 and r.stdout.splitlines() == [r.stdout.strip()] and r.stdout.startswith("published"), \
        repr(r.stdout)


def test_upload_over_the_limit_exits_1(aggregator_factory, tmp_path):  # noqa: F811
    agg = aggregator_factory(env={"PIFARM_API_MAX_UPLOAD": "1000"})
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5000))
    r = run_cli(["publish", str(big), "--name", "big", "--format", "raw", "--registry", agg.url],
                env={"PIFARM_API_TOKEN": agg.token})
    line = one_line_error(r)
    assert r.returncode == 1 and "413" in line, r.stderr


# ------------------------------------------------------------------------- garbage and log levels


def test_node_cache_keeps_active_previous_prefetched_and_collects_the_rest(aggregator, tmp_path, nodes):  # noqa: F811
    node = start(nodes, tmp_path, aggregator)
    node.wait_up()
    for seed in range(1, 31):
        v = publish(aggregator, tmp_path, seed)
        wait_for(lambda: status(node.state)["models"].get("lin", {}).get("version") == v, f"node on v{v}", 60)
        if v > 2:
            with aggregator.client() as c:
                c.retire("lin", v - 2)
    blobs = list((node.cache / "blobs" / "blake3").iterdir())
    manifests = list((node.cache / "manifests" / "lin").iterdir())
    assert len(blobs) <= 3 and len(manifests) <= 3, (len(blobs), len(manifests))  # active, previous (+prefetched)
    # the aggregator: retired versions' blobs are collected (2 live versions = 2 blobs)
    store = aggregator.data_dir / "store" / "blobs" / "blake3"
    assert len(list(store.iterdir())) <= 3, len(list(store.iterdir()))
    # lifecycle at INFO by default
    assert re.search(r"INFO pifarm.appliance.node: node: cache", node.output()), node.output()[-2000:]
    assert "INFO pifarm.initiator.watcher: lin: v30 active" in node.output()


def test_log_level_flag_and_config_key(aggregator, tmp_path, nodes):  # noqa: F811
    quiet = start(nodes, tmp_path, aggregator, config="", pre=("--log-level", "warning"), log_name="quiet.log")
    quiet.wait_up()
    keyed = start(nodes, tmp_path, aggregator, cache=tmp_path / "c2", state=tmp_path / "s2", log_name="keyed.log",
                  env={"PIFARM_NODE_LOG_LEVEL": "debug"})
    keyed.wait_up()
    wait_for(lambda: "DEBUG" in keyed.log.read_text(errors="replace"), "debug lines from the config key", 60)
    assert "INFO" not in quiet.output(), quiet.output()


def test_split_units_still_one_metrics_endpoint(aggregator, tmp_path, nodes):  # noqa: F811
    """pifarm-node.service runs `node run --no-serve` and pifarm-inference.service `pifarm serve`:
    the node's cache and watcher metrics still appear on the inference port's /metrics (once)."""
    publish(aggregator, tmp_path, 1)
    node = start(nodes, tmp_path, aggregator, extra=("--no-serve",))
    wait_for(lambda: status_file(node.state).get("models", {}).get("lin", {}).get("version") == 1, "pulled", 90)
    with open(tmp_path / "serve.log", "ab") as out:
        serve = subprocess.Popen([sys.executable, "-m", "pifarm", "serve", "--cache", str(node.cache), "--state-dir",
                                  str(node.state), "--listen", f"127.0.0.1:{node.port}"], cwd=REPO, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        node.wait_up()
        # the daemon rewrites its file every 10 s: wait for one written after the pull
        installed = re.compile(r'^pifarm_cache_blobs_installed_total\{source="http"\} 1\.0$', re.M)
        text = wait_for(lambda: (t := node.metrics()) and installed.search(t) and t,
                        "the node's metrics on the inference port", timeout=60)
        assert len(re.findall(r"^process_resident_memory_bytes ", text, re.M)) == 1
        assert len(re.findall(r"^# TYPE pifarm_node_degraded ", text, re.M)) == 1
        assert status(node.state)["state"] == "ready"  # status asks the server at [node] listen
    finally:
        stop_process(serve)


def status_file(state: Path) -> dict:
    try:
        return json.loads((state / "node.json").read_text())
    except (OSError, ValueError):
        return {}
