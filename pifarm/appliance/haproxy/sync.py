"""Keep a running HAProxy in step with fleet state through its Runtime API.

Every `interval` the sync reads fleet state (from the aggregator's API, or in-process inside the
aggregator), plans what HAProxy should look like (`plan.plan`), reads what it does look like
(`show backend`, `show servers state`) and sends only the differences:

    node joined          add server B/N ADDR weight W check ...; enable health; set server state
    node forgotten       set server state maint; del server (retried while connections remain)
    weight changed       set server B/N weight W   (degraded, throttled, back to normal)
    state changed        set server B/N state ready|drain|maint
    address changed      set server B/N addr IP port P

A node about to swap versions in a rollout is drained first (inside the aggregator, before the
snapshot that moves it is published: `before_rollout`), and made ready once its report says it
serves the new version. Between looks at fleet state, TCP probes (`probe_interval`) put a node
whose inference port refuses connections into maintenance at once; it comes back only with a
report newer than the failure. A new model backend is the one change the Runtime API cannot make:
the sync writes the config (`config`) and runs `reload_command`, or says a reload is needed.

An unreachable socket (HAProxy stopped or restarting) is retried every interval; the sync says so
in `status()` (health) and the metrics, and re-applies everything once HAProxy answers again (a
restarted HAProxy lost its dynamic servers unless the config file had them).
"""

from __future__ import annotations

import collections
import errno
import logging
import selectors
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pifarm.appliance.haproxy.plan import Plan, node_address, plan
from pifarm.appliance.haproxy.render import render, server_args
from pifarm.appliance.haproxy.runtime import Runtime, RuntimeCommandError
from pifarm.appliance.haproxy.settings import HaproxySettings
from pifarm.errors import PifarmError

log = logging.getLogger(__name__)

RELOAD_GRACE = 15.0  # seconds a reload gets to bring its new backends before another is tried
Source = Callable[[], tuple[list[dict], dict]]


def probe(targets: dict[str, tuple[str, int]], timeout: float) -> dict[str, str]:
    """TCP connect to every (host, port) at once; node -> why, for those that fail."""
    sel = selectors.DefaultSelector()
    failed: dict[str, str] = {}
    socks = []
    try:
        for node, (host, port) in targets.items():
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            err = s.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                failed[node] = f"connect to {host}:{port}: {errno.errorcode.get(err, err)}"
                continue
            sel.register(s, selectors.EVENT_WRITE, (node, host, port))
        deadline = time.monotonic() + timeout
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                node, host, port = key.data
                err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed[node] = f"connect to {host}:{port}: {errno.errorcode.get(err, err)}"
                sel.unregister(key.fileobj)
        for key in list(sel.get_map().values()):
            node, host, port = key.data
            failed[node] = f"connect to {host}:{port}: no answer within {timeout:g} s"
    finally:
        sel.close()
        for s in socks:
            s.close()
    return failed


class Sync:
    def __init__(self, settings: HaproxySettings, source: Source, *, socket_path: str | None = None,
                 config_path: str | None = None, reload_command: str | None = None, source_name: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.s = settings
        self.source, self.source_name = source, source_name
        self.runtime = Runtime(socket_path or settings.socket)
        self.config_path = Path(config_path or settings.config) if (config_path or settings.config) else None
        self.reload_command = reload_command if reload_command is not None else settings.reload_command
        self.clock = clock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nodes: list[dict] = []
        self._rollouts: dict = {}
        self._fetched = 0.0
        # node -> [why, answers again since]: failed probes; back in service only with a report
        # sent after its port answered again (a report the dying process sent, or the last one
        # before a restart, says nothing about the new process, which may still be loading)
        self._down: dict[str, list] = {}
        self._swaps: dict[str, tuple[str, int, float]] = {}  # node -> (model, version, deadline)
        self._written = ""
        self._haproxy_pid: str | None = None
        self._last_reload: tuple[tuple[str, ...], float] | None = None
        self.events: collections.deque = collections.deque(maxlen=200)
        self.counters = collections.Counter()
        self.state: dict[str, Any] = {"connected": None, "socket_error": None, "fleet_error": None,
                                      "reload_needed": None, "last_sync": None, "servers": {}}

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="haproxy-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run(self) -> None:
        next_fleet = 0.0
        step = min(self.s.interval, self.s.probe_interval or self.s.interval)
        while not self._stop.is_set():
            try:
                now = self.clock()
                if now >= next_fleet:
                    self.tick()
                    next_fleet = now + self.s.interval
                elif self.s.probe_interval and self._probe():
                    self.apply()
            except Exception:  # a bug must not end the sync: logged, retried next interval
                log.exception("haproxy sync failed; retrying")
            self._stop.wait(step)

    def tick(self) -> None:
        """Read fleet state, probe, apply."""
        try:
            nodes, rollouts = self.source()
            with self._lock:
                self._nodes, self._rollouts, self._fetched = nodes, rollouts, self.clock()
            if self.state["fleet_error"]:
                self._event(f"fleet state readable again from {self.source_name or 'the aggregator'}")
            self.state["fleet_error"] = None
        except Exception as e:  # keep HAProxy as it is (last known state) until the fleet answers
            if self.state["fleet_error"] is None:
                self._event(f"cannot read fleet state: {e}")
            self.state["fleet_error"] = str(e)
            self.counters["fleet_errors"] += 1
            return
        if self.s.probe_interval:
            self._probe()
        self.apply()

    # -- probes and swaps --------------------------------------------------------------------
    def _probe(self) -> bool:
        """Probe in-service nodes (and those down, to see them back); True when something changed."""
        with self._lock:
            targets = {}
            for n in self._nodes:
                if n.get("state") == "missing":
                    continue
                addr = (n.get("report") or {}).get("address", "")
                try:
                    targets[n["node"]] = node_address(addr)
                except (ValueError, KeyError):
                    continue
        failed = probe(targets, self.s.probe_timeout)
        changed = False
        now = self.clock()
        with self._lock:
            for node, why in failed.items():
                if node not in self._down:
                    self._down[node] = [why, None]
                    self._event(f"node {node} unreachable ({why}): maint until it reports again")
                    changed = True
                else:
                    self._down[node][1] = None  # refused again: wait for it to answer anew
            fresh = {n["node"]: self._fetched - float(n.get("seconds_since") or 0) for n in self._nodes}
            for node, entry in list(self._down.items()):
                if node in failed:
                    continue
                if entry[1] is None:
                    entry[1] = now
                elif fresh.get(node, 0) > entry[1]:
                    del self._down[node]
                    self._event(f"node {node} answers and reported again")
                    changed = True
        return changed

    def before_rollout(self, r: dict, action: str) -> None:
        """Called by the rollout engine before a decision reaches the snapshot: drain the nodes
        it moves to another version, at once (the nodes follow the snapshot within moments)."""
        model, members = r.get("model"), set(r.get("members") or ())
        deadline = self.clock() + self.s.swap_timeout
        with self._lock:
            if not self._nodes:
                return
            moving: dict[str, int] = {}
            for n in self._nodes:
                m = ((n.get("report") or {}).get("models") or {}).get(model)
                if m is None or n.get("state") == "missing":
                    continue
                serving = m.get("serving")
                if action == "publish" and r.get("state") == "running" and n["node"] in members \
                        and serving != r["version"]:
                    moving[n["node"]] = r["version"]
                elif action == "abort" and n["node"] in members and serving == r["version"] \
                        and r.get("previous") is not None:
                    moving[n["node"]] = r["previous"]
                elif action == "promote" and serving != r["version"]:
                    moving[n["node"]] = r["version"]
            for node, version in moving.items():
                self._swaps[node] = (model, version, deadline)
                self._event(f"drain {node}: about to swap {model} to v{version} ({action})")
        if moving:
            try:
                self.apply()
            except Exception as e:  # never block a rollout on HAProxy: the health checks still cover it
                log.warning("haproxy: drain before the rollout step failed: %s", e)

    def _current_swaps(self) -> dict[str, tuple[str, int]]:
        now = self.clock()
        by_id = {n["node"]: n for n in self._nodes}
        out = {}
        for node, (model, version, deadline) in list(self._swaps.items()):
            m = (((by_id.get(node) or {}).get("report") or {}).get("models") or {}).get(model) or {}
            if m.get("serving") == version and m.get("ready"):
                del self._swaps[node]
                self._event(f"ready {node}: serves {model} v{version}")
            elif now > deadline:
                del self._swaps[node]
                self._event(f"ready {node}: no report of {model} v{version} within {self.s.swap_timeout:g} s; "
                            "back to the health checks")
            else:
                out[node] = (model, version)
        return out

    # -- applying ----------------------------------------------------------------------------
    def plan(self) -> Plan:
        with self._lock:
            return plan(self._nodes, self._rollouts, self.s, swapping=self._current_swaps(),
                        unreachable={n: e[0] for n, e in self._down.items()})

    def apply(self) -> None:
        with self._lock:
            p = self.plan()
            self._write_config(p)
            try:
                self._check_restart()
                backends = self.runtime.backends()
                actual = self.runtime.servers()
            except PifarmError as e:
                self._socket_failed(e)
                return
            self._socket_ok()
            missing = [b for b in p.backends if b not in backends]
            if missing:
                self._reload(missing)
            else:
                self.state["reload_needed"] = None
            for name, b in p.backends.items():
                if name not in backends:
                    continue
                have = actual.get(name, {})
                for srv in b.servers.values():
                    self._server(name, srv, have.get(srv.name))
                for gone in set(have) - set(b.servers):
                    self._delete(name, gone)
            self.state["last_sync"] = time.time()
            self.state["servers"] = {name: {s.name: {"node": s.node, "state": s.state, "weight": s.weight,
                                                      "why": s.why} for s in b.servers.values()}
                                     for name, b in p.backends.items()}
            self.state["skipped"] = list(p.skipped)
            self.counters["syncs"] += 1

    def _cmd(self, command: str) -> bool:
        try:
            self.runtime.command(command)
            self.counters["commands"] += 1
            return True
        except RuntimeCommandError as e:
            self.counters["command_failures"] += 1
            log.warning("%s", e)
            return False

    def _server(self, backend: str, srv, cur) -> None:
        ref = f"{backend}/{srv.name}"
        if cur is None:
            if self._cmd(f"add server {ref} {server_args(srv, self.s)}"):
                self._event(f"add {ref} ({srv.node} at {srv.host}:{srv.port}, weight {srv.weight}, {srv.state})")
                self._cmd(f"enable health {ref}")
                if srv.state != "maint":
                    self._cmd(f"set server {ref} state {srv.state}")
            return
        if (cur.addr, cur.port) != (srv.host, srv.port):
            if self._cmd(f"set server {ref} addr {srv.host} port {srv.port}"):
                self._event(f"{ref}: address {cur.addr}:{cur.port} -> {srv.host}:{srv.port}")
        if cur.weight != srv.weight and srv.state != "drain":
            if self._cmd(f"set server {ref} weight {srv.weight}"):
                self._event(f"{ref}: weight {cur.weight} -> {srv.weight}{' (' + srv.why + ')' if srv.why else ''}")
        if cur.admin != srv.state:
            if self._cmd(f"set server {ref} state {srv.state}"):
                self._event(f"{ref}: {cur.admin} -> {srv.state}{' (' + srv.why + ')' if srv.why else ''}")
                # no `shutdown sessions`: it would cut the clients' streams that HAProxy can still
                # retry on another server (retry-on empty-response / conn-failure)

    def _delete(self, backend: str, name: str) -> None:
        ref = f"{backend}/{name}"
        self._cmd(f"set server {ref} state maint")
        try:  # refused while it still has connections (they finish or time out)
            self.runtime.command(f"del server {ref}")
            self._event(f"del {ref} (node left the fleet)")
        except RuntimeCommandError as e:  # still has connections: the next interval tries again
            log.info("%s (retrying)", e)

    # -- config file and reloads -------------------------------------------------------------
    def _write_config(self, p: Plan) -> None:
        if self.config_path is None:
            return
        text = render(p, self.s, socket=self.runtime.address, source=self.source_name)
        body = text.split("\n", 1)[1]  # without the time stamp line
        if body == self._written:
            return
        from pifarm.durable import atomic_write

        try:
            atomic_write(self.config_path, text.encode())
            self._written = body
        except OSError as e:
            log.error("cannot write %s: %s", self.config_path, e)

    def _reload(self, missing: list[str]) -> None:
        why = f"new backend(s) {', '.join(missing)}"
        if not self.reload_command or self.config_path is None:
            if self.state["reload_needed"] != why:
                self._event(f"reload needed: {why} (set [haproxy] config and reload_command to do it here)")
            self.state["reload_needed"] = why
            return
        last = self._last_reload
        if last and last[0] == tuple(missing) and self.clock() - last[1] < RELOAD_GRACE:
            return  # the new worker is starting: its backends appear within moments
        self._last_reload = (tuple(missing), self.clock())
        self._event(f"reload: {why}")
        self.counters["reloads"] += 1
        try:
            r = subprocess.run(shlex.split(self.reload_command), capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise PifarmError(f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[:300]}")
            self.state["reload_needed"] = None
        except (OSError, subprocess.SubprocessError, PifarmError) as e:
            self.counters["reload_failures"] += 1
            self.state["reload_needed"] = f"{why}; reload failed: {e}"
            self._event(f"reload failed: {e}")

    # -- socket state ------------------------------------------------------------------------
    def _check_restart(self) -> None:
        pid = self.runtime.info().get("Pid")
        if self._haproxy_pid is not None and pid and pid != self._haproxy_pid:
            self.counters["haproxy_restarts"] += 1
            self._event(f"HAProxy restarted or reloaded (worker pid {self._haproxy_pid} -> {pid}); re-applying")
        self._haproxy_pid = pid or self._haproxy_pid

    def _socket_failed(self, e: Exception) -> None:
        self.counters["socket_errors"] += 1
        if self.state["connected"] is not False:
            self._event(f"HAProxy runtime socket lost: {e}; retrying every {self.s.interval:g} s")
        self.state["connected"], self.state["socket_error"] = False, str(e)

    def _socket_ok(self) -> None:
        if self.state["connected"] is False:
            self.counters["reconnects"] += 1
            self._event(f"HAProxy runtime socket {self.runtime.address} reconnected")
        self.state["connected"], self.state["socket_error"] = True, None

    def _event(self, text: str) -> None:
        self.events.append((time.time(), text))
        log.warning("haproxy: %s", text)

    # -- reporting ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = dict(self.state)
        healthy = bool(st["connected"]) and not st["fleet_error"]
        return {"status": "ok" if healthy else "degraded", "socket": self.runtime.address, **st,
                "counters": dict(self.counters), "unreachable": sorted(self._down),
                "swapping": {n: {"model": m, "version": v} for n, (m, v, _) in self._swaps.items()},
                "events": [[round(t, 3), e] for t, e in list(self.events)[-30:]]}


class SyncCollector:
    """Prometheus: pifarm_haproxy_* (connected, errors, reconnects, commands, reloads, servers)."""

    def __init__(self, sync: Sync):
        self.sync = sync

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, c = self.sync.state, self.sync.counters
        yield GaugeMetricFamily("pifarm_haproxy_connected", "1 while the HAProxy runtime socket answers",
                                value=1 if s["connected"] else 0)
        yield GaugeMetricFamily("pifarm_haproxy_fleet_reachable", "1 while fleet state is readable",
                                value=0 if s["fleet_error"] else 1)
        yield GaugeMetricFamily("pifarm_haproxy_reload_needed", "1 while a new backend waits for a reload",
                                value=1 if s["reload_needed"] else 0)
        for key, help_ in (("socket_errors", "Runtime socket failures"), ("reconnects", "Runtime socket reconnects"),
                           ("commands", "Runtime API commands applied"),
                           ("command_failures", "Runtime API commands HAProxy refused"),
                           ("reloads", "Reloads run"), ("reload_failures", "Reloads that failed"),
                           ("haproxy_restarts", "HAProxy restarts or reloads seen"),
                           ("fleet_errors", "Failed reads of fleet state"), ("syncs", "Completed syncs")):
            yield CounterMetricFamily(f"pifarm_haproxy_{key}", help_, value=c.get(key, 0))
        g = GaugeMetricFamily("pifarm_haproxy_servers", "Servers by backend and wanted state",
                              labels=["backend", "state"])
        for b, servers in sorted((s.get("servers") or {}).items()):
            for st in ("ready", "drain", "maint"):
                g.add_metric([b, st], sum(1 for v in servers.values() if v["state"] == st))
        yield g
