"""What the fleet-view tests share: the real tools (Prometheus, promtool, Chromium through
Playwright), a small farm of Pi-like nodes and a Prometheus process on the shipped configuration.

The tools come from Debian (tests/system-deps.sh, run by `make system-deps`);
missing, a test skips, and CI=true turns that skip into a failure (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from tests.fleet.farm import MODEL, Farm, Node
from tests.support.procs import free_port, stop_process
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
PLACEHOLDER = "http://aggregator.example:8443"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--no-first-run", "--mute-audio", "--disable-features=Translate,MediaRouter"]


def tool(name: str) -> str:
    """The path of a Debian tool, or a skip (a failure under CI=true) saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} missing: run `make system-deps` (or bash tests/system-deps.sh as root)")
    return path


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return tool("chromium")


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """Headless system Chromium through Playwright (which never downloads a browser here)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright missing: pip install -e '.[test]'")
    exe = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page with every console error and uncaught exception collected."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


# -- a farm of Pi-like nodes ---------------------------------------------------------------------
# The nodes ask `vcgencmd` (the Pi firmware's tool) for throttling and temperature when the sysfs
# files are absent, as on this machine: each node gets its own on PATH, answering like a Pi would.
VCGENCMD = """#!/bin/sh
case "$1" in
  get_throttled) echo "throttled={bits}" ;;
  measure_temp) echo "temp={temp}'C" ;;
  *) echo "vcgencmd: unknown command $1" >&2; exit 1 ;;
esac
"""
PIS = [("0x0", "47.2"), ("0x50005", "81.0")]  # node 0 healthy; node 1 undervolted and throttled now


@dataclass
class PiFarm(Farm):
    """tests.fleet.farm.Farm with a cache budget and a Pi firmware per node."""

    def prepare_node(self, n: Node) -> None:
        bits, temp = PIS[n.index % len(PIS)]
        (n.root / "bin").mkdir(exist_ok=True)
        exe = n.root / "bin" / "vcgencmd"
        exe.write_text(VCGENCMD.replace("{bits}", bits).replace("{temp}", temp))
        exe.chmod(0o755)
        cfg = n.root / "node.toml"
        cfg.write_text(cfg.read_text().replace("[cache]\n", "[cache]\nmax_bytes = 1000000000\n"))

    def node_env(self, n: Node) -> dict[str, str]:
        return {"PATH": f"{n.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def bad_request(self) -> None:
        """One refused infer per node, so the error counters have series."""
        for n in self.nodes:
            httpx.post(f"{n.url}/v2/models/{MODEL}/infer", timeout=10,
                       json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})


# -- Prometheus on the shipped configuration -------------------------------------------------------
def shipped_config(aggregator_url: str, rules: Path) -> dict:
    """contrib/prometheus/prometheus.yml with the aggregator's URL and test-speed intervals."""
    text = (CONTRIB / "prometheus" / "prometheus.yml").read_text()
    cfg = yaml.safe_load(text.replace(PLACEHOLDER, aggregator_url))
    urls = [sd["url"] for job in cfg["scrape_configs"] for sd in job["http_sd_configs"]]
    assert len(urls) == 2 and all(u.startswith(aggregator_url + "/v1/fleet/prometheus-sd") for u in urls), urls
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    cfg["rule_files"] = [str(rules)]
    for job in cfg["scrape_configs"]:
        for sd in job["http_sd_configs"]:
            sd["refresh_interval"] = "1s"
    return cfg


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body.get("status") == "success", f"{expr}: {r.status_code} {body}"
        return body["data"]["result"]

    def api(self, path: str) -> Any:
        body = httpx.get(f"{self.url}/api/v1/{path}", timeout=30).json()
        assert body.get("status") == "success", body
        return body["data"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)


def start_prometheus(root: Path, aggregator_url: str) -> Prometheus:
    exe = tool("prometheus")
    root.mkdir(parents=True, exist_ok=True)
    rules = root / "pifarm-alerts.yml"
    shutil.copy(CONTRIB / "prometheus" / "pifarm-alerts.yml", rules)
    (root / "prometheus.yml").write_text(yaml.safe_dump(shipped_config(aggregator_url, rules)))
    port = free_port()
    log = root / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [exe, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    p = Prometheus(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode}:\n{p.output()}")
        try:
            return httpx.get(f"{p.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for(ready, "prometheus ready", 60, interval=0.2)
    return p


# -- what the shipped files ask Prometheus -----------------------------------------------------------
def dashboard() -> dict:
    return json.loads((CONTRIB / "grafana" / "pifarm-fleet.json").read_text())


def panel_queries(dash: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's variables set as Grafana would:
    every node for $hostname, a minute for $__rate_interval."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$hostname", ".*")
            assert "$" not in expr, f"panel {p['title']!r}: unknown variable in {t['expr']!r}"
            out.append((p["title"], expr))
    return out


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((CONTRIB / "prometheus" / "pifarm-alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


_THRESHOLD = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?[0-9][0-9.e+]*)\s*$")


def as_series(expr: str) -> str:
    """A rule `<series> <cmp> <number>` as `<series> <cmp> bool <number>`: the same series, each
    0 or 1, so "returns data" does not depend on the farm being unhealthy."""
    m = _THRESHOLD.search(expr)
    assert m and " bool " not in expr, f"rule expression is not `<series> <comparison> <number>`: {expr!r}"
    return f"{expr[:m.start()].rstrip()} {m.group(1)} bool {m.group(2)}"
