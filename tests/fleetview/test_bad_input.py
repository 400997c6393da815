"""Bad input at the fleet view of a real aggregator: HTML in what nodes report (shown, never run,
also in a real browser), unknown node ids, huge and unknown query strings, unknown static files.

The hostile "node" is a report posted with its own valid node token, as any enrolled machine
could; no node process is needed.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from pifarm.registry.fleet_api import load_token_key, node_token
from tests.fleetview.support import Watched, browser
from tests.support.aggregator import start_aggregator
from tests.support.wait import wait_for

EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
NODE = "evil-node-1"


def report(**over) -> dict:
    rep = {"type": "node-report", "format": 1, "node": NODE, "hostname": "pi" + EVIL, "pifarm": "0.1.0",
           "address": "http://127.0.0.1:9/", "interval": 3600, "seq": 1, "state": "degraded",
           "reason": "disk " + EVIL, "channel": "stable", "revision": 0,
           "cache": {"used": 10, "budget": None}, "paths": {"http": "live" + EVIL},
           "throttling": {"status": "throttled", "bits": 1, "flags": ["undervoltage"], "reason": None},
           "temperature": {"celsius": None, "reason": "none" + EVIL},
           "models": {"m": {"active": 1, "source": "http" + EVIL[:60], "ready": False, "serving": None,
                            "error": "version 1 (x) refused: " + EVIL}}}
    rep.update(over)
    return rep


@pytest.fixture(scope="module")
def agg(tmp_path_factory):
    a = start_aggregator(tmp_path_factory.mktemp("fleetview-bad") / "agg")
    try:
        token = node_token(load_token_key(a.data_dir), NODE)
        r = httpx.post(a.url + "/v1/fleet/report", json=report(), headers={"Authorization": f"Bearer {token}"},
                       timeout=10)
        assert r.status_code == 200, r.text
        yield a
    finally:
        a.stop()


def raw_get(port: int, target: str) -> bytes:
    """One request over a plain socket (an HTTP client library refuses to send what we test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_html_from_nodes_is_escaped_everywhere(agg):
    for path in ("/ui", "/ui/fragment", f"/ui/nodes/{NODE}"):
        r = httpx.get(agg.url + path, timeout=10)
        assert r.status_code == 200, (path, r.text)
        assert "<script>window" not in r.text and "<img src=x" not in r.text, path
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in r.text, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
    sd = httpx.get(agg.url + "/v1/fleet/prometheus-sd", timeout=10).json()
    assert [g["labels"]["hostname"] for g in sd if g["labels"]["role"] == "node"] == ["pi" + EVIL]  # JSON, as sent


def test_html_from_nodes_never_runs_in_a_browser(agg):
    with browser() as b:
        page = b.new_page()
        w = Watched(page)
        page.goto(f"{agg.url}/ui?refresh=1")
        card = page.locator(f'article.node[data-node="{NODE}"]')
        assert card.get_attribute("data-state") == "degraded"
        assert ("pi" + EVIL) in card.inner_text()  # shown as text
        wait_for(lambda: page.get_attribute("#fleet", "data-updated"), "a live refresh", 30, interval=0.2)
        assert page.evaluate("window.__pwned === undefined")
        assert page.locator("img").count() == 0
        page.goto(f"{agg.url}/ui/nodes/{NODE}")
        assert page.evaluate("window.__pwned === undefined")
        assert w.errors == [], w.errors


def test_unknown_node_ids(agg):
    for node, status in (("no-such-node", 404), ("<b>x", 404), ("a" * 300, 400)):
        r = httpx.get(f"{agg.url}/ui/nodes/{node}", timeout=10)
        assert r.status_code == status, (node, r.status_code)
        assert "<b>x" not in r.text and "<!doctype html>" in r.text
    assert "no node &#x27;&lt;b&gt;x&#x27; in the fleet" in httpx.get(f"{agg.url}/ui/nodes/<b>x", timeout=10).text
    r = httpx.get(f"{agg.url}/v1/fleet/no-such-node", timeout=10)
    assert r.status_code == 404


def test_huge_and_unknown_query_strings(agg):
    assert raw_get(agg.port, "/ui?q=" + "a" * 4000).startswith(b"HTTP/1.1 414 ")
    assert b"at most 1024" in raw_get(agg.port, "/ui/fragment?q=" + "a" * 4000)
    for n in (100_000, 2_000_000):  # refused by the server before any route
        assert raw_get(agg.port, "/ui?q=" + "a" * n).split(b" ")[1].startswith(b"4")
    r = httpx.get(f"{agg.url}/ui", params={"refresh": "0"}, timeout=10)
    assert r.status_code == 400 and "refresh must be a number of seconds from 1 to 3600" in r.text
    r = httpx.get(f"{agg.url}/ui", params={"<script>": "1"}, timeout=10)
    assert r.status_code == 400 and "unknown query parameter" in r.text and "<script>" not in r.text
    r = httpx.get(f"{agg.url}/v1/fleet/prometheus-sd", params={"role": "x" * 5000}, timeout=10)
    assert r.status_code == 414 and "at most 1024" in r.json()["error"]
    assert httpx.get(agg.url + "/health", timeout=10).status_code == 200  # still serving


def test_static_files_are_only_the_vendored_ones(agg):
    for name, kind in (("fleet.js", "javascript"), ("fleet.css", "css"), ("favicon.svg", "svg")):
        r = httpx.get(f"{agg.url}/ui/static/{name}", timeout=10)
        assert r.status_code == 200 and kind in r.headers["content-type"]
    for name in ("../routes.py", "..%2froutes.py", "page.py", "x" * 300):
        assert httpx.get(f"{agg.url}/ui/static/{name}", timeout=10).status_code == 404
    js = httpx.get(f"{agg.url}/ui/static/fleet.js", timeout=10).text
    assert "http://" not in js and "https://" not in js  # no CDN, no outside fetch
