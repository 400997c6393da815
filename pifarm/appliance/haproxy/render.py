"""A complete haproxy.cfg from a `Plan`: one frontend for the V2 API, a backend per model and
one for everything else, a server per node, health checks, retries, the Runtime API socket.

Requests for `/v2/models/<name>` and below go to that model's backend; the rest (`/v2/health/*`,
server metadata) to `all_models`. Every server line carries its own check settings: dynamic
servers added later by the sync (`add server`) take nothing from `default-server`, so the file and
the sync describe a server the same way (`server_args`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from pifarm.appliance.haproxy.plan import Backend, Plan, Server
from pifarm.appliance.haproxy.settings import HaproxySettings, parse_bind

NODE_HEADER = "X-Pifarm-Server"


def _sec(x: float) -> str:
    return f"{max(1, round(x * 1000))}ms"


def server_args(srv: Server, s: HaproxySettings) -> str:
    """What follows `server NAME` (config) or `add server BACKEND/NAME` (Runtime API)."""
    return (f"{srv.host}:{srv.port} weight {srv.weight} check inter {_sec(s.check_inter)} "
            f"fall {s.check_fall} rise {s.check_rise}")


def socket_line(path: str) -> str:
    if path.startswith(("ipv4@", "ipv6@")):
        return f"stats socket {path} level admin"
    return f"stats socket {path} mode 660 level admin"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _backend(b: Backend, s: HaproxySettings) -> list[str]:
    what = f"model {b.model}" if b.model else "any model"
    body = json.dumps({"error": f"no ready node serves {what} behind this HAProxy", "kind": "Unavailable",
                       "backend": b.name}, separators=(",", ":"))
    out = [f"backend {b.name}",
           "    balance roundrobin",
           f"    option httpchk GET {b.check}",
           "    http-check expect status 200",
           f"    http-error status 503 content-type application/json string {_quote(body)}"]
    for srv in b.servers.values():
        tail = " disabled" if srv.state == "maint" else ""
        weight = srv if srv.state != "drain" else Server(srv.name, srv.node, srv.host, srv.port, 0, srv.state)
        note = f"  # {srv.node}: {srv.state}{' (' + srv.why + ')' if srv.why else ''}"
        out.append(f"    server {srv.name} {server_args(weight, s)}{tail}{note}")
    return out


def render(p: Plan, s: HaproxySettings, *, socket: str, bind: str | None = None, source: str = "") -> str:
    host, port = parse_bind(bind or s.bind)
    bind_addr = f"[{host}]:{port}" if ":" in host else f"{'*' if host == '0.0.0.0' else host}:{port}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"# Rendered by `pifarm haproxy render` from {source or 'fleet state'} at {stamp}.",
        "# `pifarm haproxy sync` keeps a running HAProxy in step with the fleet through the Runtime API",
        "# (servers, weights, drain/ready/maint); it reloads only when a model backend appears.",
        "global",
        f"    maxconn {s.maxconn}",
        *([f"    nbthread {s.nbthread}"] if s.nbthread else []),
        f"    {socket_line(socket)}",
        "    stats timeout 30s",
        "    hard-stop-after 30s",
        "",
        "defaults",
        "    mode http",
        "    option httplog",
        # HAProxy's default `http-reuse safe`, not `always`: a request sent on an idle connection
        # that a SIGKILLed node's kernel is closing reached a client as a cut connection
        f"    timeout connect {_sec(s.timeout_connect)}",
        f"    timeout client {_sec(s.timeout_client)}",
        f"    timeout server {_sec(s.timeout_server)}",
        f"    timeout queue {_sec(s.timeout_queue)}",
        "    timeout http-request 10s",
        f"    timeout check {_sec(min(s.check_inter, s.timeout_connect * 2))}",
        # a failed connection, an empty or cut answer (a node killed mid-request), a timeout or a
        # 503 (node busy or loading) is retried on another node (inference is idempotent)
        f"    retries {s.retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response response-timeout 503",
        # the whole request (up to tune.bufsize) before a node sees it: a request whose body came
        # in a second read was otherwise already streaming and could not be retried (a loaded box
        # saw clients cut at a node's SIGKILL)
        "    option http-buffer-request",
        "",
        "frontend pifarm",
        f"    bind {bind_addr}",
        f"    http-response set-header {NODE_HEADER} %s",
    ]
    for b in p.backends.values():
        if b.model is not None:
            acl = f"is_{b.name}"
            lines.append(f"    acl {acl} path /v2/models/{b.model}")
            lines.append(f"    acl {acl} path_beg /v2/models/{b.model}/")
            lines.append(f"    use_backend {b.name} if {acl}")
    lines += ["    default_backend all_models", ""]
    for b in p.backends.values():
        lines += _backend(b, s) + [""]
    if p.skipped:
        lines += ["# nodes left out:"] + [f"#   {x}" for x in p.skipped]
    return "\n".join(lines).rstrip() + "\n"
