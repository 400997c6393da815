"""A small real HTTP server (stdlib, 127.0.0.1:0) that serves whatever signed documents and
blob bytes a test sets — including bad ones the real aggregator would never produce (tampered,
rolled back, expired, bit-flipped). The same node code also runs against the real aggregator.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class DocServer:
    def __init__(self, tls: "ssl.SSLContext | None" = None) -> None:
        self.snapshot: dict | None = None
        self.manifests: dict[tuple[str, int], dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.flip_bit = False
        self.requests: list[str] = []
        self.closing = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                path, _, query = self.path.partition("?")
                if path == "/v1/metadata":
                    q = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                    snap = outer.snapshot
                    if snap is None:
                        return self._send(503)
                    rev = snap["signed"]["revision"]
                    since = int(q.get("since", -1))
                    if since == rev:  # hold like a long-poll (bounded), unless the snapshot changes
                        end = time.monotonic() + min(float(q.get("wait", 0)), 30.0)
                        while time.monotonic() < end and outer.snapshot is snap and not outer.closing:
                            time.sleep(0.02)
                        if outer.snapshot is snap:
                            return self._send(304, headers={"X-Pifarm-Revision": str(rev)})
                        snap, rev = outer.snapshot, outer.snapshot["signed"]["revision"]
                    headers = {"X-Pifarm-Revision": str(rev)}
                    if since > rev:  # like the aggregator: a registry behind the node answers at once
                        headers["X-Pifarm-Reset"] = "1"
                    return self._send(200, json.dumps(snap).encode(), headers)
                m = re.fullmatch(r"/v1/models/([^/]+)/versions/(\d+)", path)
                if m:
                    doc = outer.manifests.get((m.group(1), int(m.group(2))))
                    return self._send(200, json.dumps(doc).encode()) if doc else self._send(404)
                m = re.fullmatch(r"/v1/blobs/(blake3:[0-9a-f]{64})", path)
                if m and m.group(1) in outer.blobs:
                    data = bytearray(outer.blobs[m.group(1)])
                    if outer.flip_bit:
                        data[len(data) // 3] ^= 0x10
                    rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                    if rng:
                        start = int(rng.group(1))
                        return self._send(206, bytes(data[start:]),
                                          {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                    return self._send(200, bytes(data))
                self._send(404)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if tls is not None:  # e.g. mTLS: a server context with verify_mode = CERT_REQUIRED
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.closing = True
        self._httpd.shutdown()
        self._httpd.server_close()
