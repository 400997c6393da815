"""`/health` and `/metrics` of a standalone `pifarm haproxy sync` (a small threaded HTTP server:
two read-only endpoints do not need the aggregator's web stack)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pifarm.listen import parse_listen


def serve_status(listen: str, sync) -> ThreadingHTTPServer:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from pifarm.appliance.haproxy.sync import SyncCollector

    registry = CollectorRegistry()
    registry.register(SyncCollector(sync))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/health":
                st = sync.status()
                body, code, ctype = json.dumps(st, default=str).encode(), 200 if st["status"] == "ok" else 503, \
                    "application/json"
            elif path == "/metrics":
                body, code, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            else:
                body, code, ctype = b'{"error": "not found: try /health or /metrics"}', 404, "application/json"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # no access log
            pass

    host, port = parse_listen(listen, key="--listen")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="haproxy-sync-status", daemon=True).start()
    return server
