"""The fleet page: server-rendered HTML of one farm view (a plain dict, see `routes.FarmView`).

Every value that came from a node, the registry or the operator goes through `e()` (HTML-escaped,
quotes included), so a hostname like `<script>` is shown, never run; the page also forbids inline
script by its Content-Security-Policy (routes.py). `fragment()` is the part fleet.js re-fetches
to refresh the page in place; `page()` wraps it once.
"""

from __future__ import annotations

import html
import time
from typing import Any, Iterable

STATE_ORDER = ("missing", "degraded", "not-ready", "ready")


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def ago(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "never"
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"


def size(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"


def pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) else f"{x * 100:.2f} %"


def num(x: Any, fmt: str = ".2f") -> str:
    return "n/a" if not isinstance(x, (int, float)) else format(x, fmt)


def wave_text(w: Any) -> str:
    try:
        kind, n = w
        return f"{n:g}%" if kind == "percent" else f"{n:g} node(s)"
    except (TypeError, ValueError):
        return e(w)


def _badge(state: str) -> str:
    return f'<span class="badge s-{e(state)}">{e(state)}</span>'


def _dl(rows: Iterable[tuple[str, str]]) -> str:
    """A definition list; the values are HTML already escaped by the caller."""
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


# -- sections --------------------------------------------------------------------------------------
def summary(view: dict) -> str:
    counts = {s: 0 for s in STATE_ORDER}
    for n in view.get("nodes", []):
        counts[n.get("state", "?")] = counts.get(n.get("state", "?"), 0) + 1
    agg = view.get("aggregator") or {}
    ro = agg.get("read_only")
    parts = "".join(f'<li class="count s-{e(s)}" data-state="{e(s)}"><b>{c}</b> {e(s)}</li>'
                    for s, c in counts.items())
    reg = (f'<span class="badge s-degraded">read-only: {e(ro)}</span>' if ro
           else '<span class="badge s-ready">writable</span>')
    return (f'<section id="summary"><ul class="counts">{parts}</ul>'
            f'<p>registry revision <b>{e(agg.get("revision"))}</b> · {reg} · aggregator {e(agg.get("hostname"))}'
            f' · pifarm {e(agg.get("version"))}</p></section>')


def _model_line(name: str, m: dict) -> str:
    serving = m.get("serving")
    bits = [f'<b>{e(name)}</b> ' + (f"v{e(serving)}" if serving is not None else "not serving")]
    more = [f"{k} v{e(m.get(k))}" for k in ("active", "previous", "prefetched") if m.get(k) is not None]
    if more:
        bits.append(f'<span class="dim">({", ".join(more)})</span>')
    if m.get("source"):
        bits.append(f"from {e(m['source'])}")
    if not m.get("ready"):
        bits.append('<span class="badge s-not-ready">not ready</span>')
    if m.get("error"):
        bits.append(f'<span class="err">{e(m["error"])}</span>')
    return f'<li data-model="{e(name)}">{" ".join(bits)}</li>'


def _throttling(t: dict) -> str:
    status = t.get("status") or "unknown"
    if status == "unknown":
        return f'<span class="dim" title="{e(t.get("reason"))}">unknown</span>'
    flags = ", ".join(t.get("flags") or []) or "none"
    cls = "s-degraded" if status == "throttled" else "s-ready"
    return f'<span class="badge {cls}">{e(status)}</span> <span class="dim">{e(flags)}</span>'


def node_card(n: dict, detail: bool = False) -> str:
    rep = n.get("report") or {}
    state = n.get("state", "?")
    name = rep.get("hostname") or n.get("node")
    reason = rep.get("reason") if state != "missing" else f"no report for {ago(n.get('seconds_since'))}"
    cache = rep.get("cache") or {}
    temp = rep.get("temperature") or {}
    models = rep.get("models") or {}
    rows = [
        ("state", _badge(state) + (f' <span class="reason">{e(reason)}</span>' if reason else "")),
        ("models", "<ul>" + "".join(_model_line(k, v) for k, v in sorted(models.items())) + "</ul>" if models
         else '<span class="dim">none</span>'),
        ("cache", f"{size(cache.get('used'))} of " + (size(cache["budget"]) if cache.get("budget") else "no budget")),
        ("throttling", _throttling(rep.get("throttling") or {})),
        ("temperature", f"{num(temp.get('celsius'), '.1f')} °C" if temp.get("celsius") is not None
         else f'<span class="dim" title="{e(temp.get("reason"))}">unknown</span>'),
        ("paths", ", ".join(f"{e(k)}: {e(v)}" for k, v in (rep.get("paths") or {}).items()) or "none"),
        ("last seen", f'<span class="ago">{e(ago(n.get("seconds_since")))}</span>'),
        ("channel", f"{e(rep.get('channel'))} · revision {e(rep.get('revision'))} · pifarm {e(rep.get('pifarm'))}"),
    ]
    if detail:
        rows += [("node id", f"<code>{e(n.get('node'))}</code>"), ("address", e(rep.get("address"))),
                 ("first seen", e(n.get("first_seen"))), ("auth", e(n.get("auth")))]
        for mname, m in sorted(models.items()):
            stats = m.get("stats") or {}
            cells = "".join(f"<tr><td>v{e(v)}</td><td>{e(s.get('requests'))}</td><td>{e(s.get('errors'))}</td></tr>"
                            for v, s in sorted(stats.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0))
            rows.append((f"{mname} requests", f"<table><tr><th>version</th><th>requests</th><th>errors</th></tr>"
                                              f"{cells}</table>" if cells else "none yet"))
    link = f'<a href="/ui/nodes/{e(n.get("node"))}">{e(name)}</a>'
    return (f'<article class="node s-{e(state)}" data-node="{e(n.get("node"))}" data-state="{e(state)}">'
            f'<h3>{link} <span class="dim id">{e(str(n.get("node", ""))[:12])}</span></h3>{_dl(rows)}</article>')


def nodes(view: dict) -> str:
    ns = sorted(view.get("nodes", []), key=lambda n: (STATE_ORDER.index(n["state"]) if n.get("state") in STATE_ORDER
                                                       else 9, (n.get("report") or {}).get("hostname", ""), n["node"]))
    body = "".join(node_card(n) for n in ns) or '<p class="dim">No node has reported yet.</p>'
    return f'<section id="nodes"><h2>Nodes ({len(ns)})</h2><div class="cards">{body}</div></section>'


def _gates(r: dict) -> str:
    g = r.get("gates") or {}
    res = (r.get("results") or [{}])[-1] if r.get("results") else {}
    numbers = r.get("numbers") or res.get("numbers") or {}
    wave = numbers.get("wave") or {}
    stable = numbers.get("stable") or {}
    rows = [
        ("error rate", f"wave {pct(wave.get('error_rate'))} vs stable {pct(stable.get('error_rate'))}; "
                       f"limit +{pct(g.get('max_error_rate'))}"),
        ("p99 latency ratio", f"{num(numbers.get('latency_ratio'))}; limit {num(g.get('max_latency_ratio'), 'g')}"),
        ("requests", f"wave {e(wave.get('requests', 'n/a'))}, stable {e(stable.get('requests', 'n/a'))}; "
                     f"at least {e(g.get('min_requests'))} per node"),
        ("bake", f"{num(g.get('bake'), 'g')} s"),
    ]
    return "<table class=\"gates\">" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def rollout_card(r: dict, hostnames: dict[str, str], now: float) -> str:
    waves = r.get("waves") or []
    i = int(r.get("wave") or 0)
    members = ", ".join(e(hostnames.get(m) or m) for m in r.get("members") or []) or "none yet"
    phase = r.get("phase")
    if phase == "baking" and isinstance(r.get("bake_started"), (int, float)):
        phase = f"baking ({now - r['bake_started']:.0f} of {num((r.get('gates') or {}).get('bake'), 'g')} s)"
    spec = ", ".join(wave_text(w) for w in waves)
    head = (f'<h3>{e(r.get("model"))} v{e(r.get("version"))} {_badge(str(r.get("state")))}</h3>'
            f'<p class="wave">wave <b>{i + 1}</b> of {len(waves)} ({e(wave_text(waves[i]) if i < len(waves) else "?")})'
            f' · waves {e(spec)} · {e(phase)}</p>'
            f'<p>nodes in this wave: {members}</p>')
    reason = f'<p class="reason">{e(r.get("reason"))}</p>' if r.get("reason") else ""
    return (f'<article class="rollout" data-model="{e(r.get("model"))}" data-wave="{i + 1}" '
            f'data-state="{e(r.get("state"))}">{head}{reason}{_gates(r)}</article>')


def rollouts(view: dict) -> str:
    ro = view.get("rollouts") or {}
    now = view.get("now") or time.time()
    hostnames = {n["node"]: (n.get("report") or {}).get("hostname") or n["node"] for n in view.get("nodes", [])}
    active = "".join(rollout_card(r, hostnames, now) for _, r in sorted((ro.get("active") or {}).items()))
    past = list(reversed((ro.get("history") or [])[-5:]))
    hist = "".join(f'<li data-state="{e(r.get("state"))}">{e(r.get("model"))} v{e(r.get("version"))} '
                   f'{_badge(str(r.get("state")))} {e(ago(now - r["finished"]) if isinstance(r.get("finished"), (int, float)) else "")}'
                   f' <span class="reason">{e(r.get("reason"))}</span></li>' for r in past)
    return (f'<section id="rollouts"><h2>Rollouts</h2>{active or "<p class=dim>No rollout in progress.</p>"}'
            + (f'<h3>Recent</h3><ul class="history">{hist}</ul>' if hist else "") + "</section>")


def models(view: dict) -> str:
    rows = []
    for name, m in sorted((view.get("models") or {}).items()):
        ch = ", ".join(f"{e(c)}: v{e(v)}" for c, v in sorted((m.get("channels") or {}).items())) or "none"
        exports = m.get("exports") or {}
        vers = []
        for v in m.get("versions") or []:
            x = exports.get(str(v.get("version"))) or {}
            where = (f' <span class="dim">→ {e(x.get("volume"))}' + (f" nsid {e(x['nsid'])}" if x.get("nsid") else "")
                     + "</span>") if x else ""
            vers.append(f"<li>v{e(v.get('version'))} {size(v.get('size'))}{where}</li>")
        rows.append(f'<tr data-model="{e(name)}"><td><b>{e(name)}</b></td><td>{ch}</td>'
                    f'<td><ul>{"".join(vers)}</ul></td></tr>')
    body = ("<div class=\"scroll\"><table><tr><th>model</th><th>channels</th><th>versions (exported as)</th></tr>"
            + "".join(rows) + "</table></div>") if rows else '<p class="dim">No model published yet.</p>'
    return f'<section id="models"><h2>Models</h2>{body}</section>'


def target(view: dict) -> str:
    t = view.get("target") or {}
    drives = (t.get("drives") or {}).get("drives") or []
    drows = "".join(f'<tr data-device="{e(d.get("device"))}"><td>{e(d.get("device"))}</td><td>{_badge(str(d.get("status")))}</td>'
                    f'<td>{num(d.get("temperature_c"), ".0f") + " °C" if d.get("temperature_c") is not None else "n/a"}</td><td>{e(d.get("reason") or "")}</td></tr>'
                    for d in drives)
    rows = [("NVMe/TCP target", "enabled" if t.get("enabled") else '<span class="dim">not enabled on this host</span>'),
            ("subsystem", f"<code>{e(t.get('subsystem'))}</code>" if t.get("subsystem") else "n/a"),
            ("ports", ", ".join(e(p) for p in t.get("ports") or []) or "none"),
            ("allowed hosts", ", ".join(f"<code>{e(h)}</code>" for h in t.get("allowed_hosts") or [])
             or "enrolled nodes only"),
            ("last sync error", f'<span class="err">{e(t["last_error"])}</span>' if t.get("last_error") else "none")]
    dtable = (f'<div class="scroll"><table><tr><th>drive</th><th>health</th><th>temp</th><th></th></tr>{drows}'
              f'</table></div>') if drows else '<p class="dim">No drive reported.</p>'
    return f'<section id="target"><h2>Target</h2>{_dl(rows)}{dtable}</section>'


def fragment(view: dict) -> str:
    return summary(view) + rollouts(view) + nodes(view) + models(view) + target(view)


def shell(title: str, body: str, refresh: float | None = None, src: str = "/ui/fragment") -> str:
    live = (f'<p id="live" class="live">live · every {refresh:g} s</p>' if refresh else "")
    attrs = f' data-refresh="{refresh:g}" data-src="{e(src)}"' if refresh else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><link rel=\"icon\" href=\"/ui/static/favicon.svg\" type=\"image/svg+xml\">"
            "<link rel=\"stylesheet\" href=\"/ui/static/fleet.css\"></head><body>"
            f"<header><h1><a href=\"/ui\">pifarm</a> · {e(title)}</h1>{live}</header>"
            f"<main id=\"fleet\"{attrs}>{body}</main>"
            "<script src=\"/ui/static/fleet.js\" defer></script></body></html>")


def page(view: dict, refresh: float) -> str:
    return shell("fleet", fragment(view), refresh)


def node_page(n: dict) -> str:
    name = (n.get("report") or {}).get("hostname") or n.get("node")
    return shell(f"node {name}", node_card(n, detail=True))


def error_page(status: int, message: str) -> str:
    return shell(f"{status}", f'<section><p class="err">{e(message)}</p><p><a href="/ui">back to the fleet</a></p></section>')
