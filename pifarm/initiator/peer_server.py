"""The node's piece server: the verified pieces it holds, read-only, to enrolled peers only.

    GET /v1/pieces/<hex>             {"complete": true} or {"complete": false, "piece_size", "have", "pending"}
    GET /v1/pieces/<hex>/<i>?size=P  piece i of a blob cut in P-byte pieces; X-Pifarm-Have: the have bitmap

Both need `Authorization: Bearer <swarm token of the blob>`, which the tracker hands to
authenticated nodes only (and this node learns when it announces the blob). With `tls` (a
`pifarm.initiator.peer_tls.PeerTls`: the farm has PKI) it speaks HTTPS and each connection must
also show a client certificate from the farm CA (none: 403; another CA's: no handshake). Bitmaps are hex
integers, bit i = piece i. A request that would exceed `max_connections` concurrent requests gets
503 at once (the asker picks another peer); bytes leave through one token bucket of `upload_rate`
bytes/s, so serving peers never takes more than that from the node's link (or CPU: sendfile).
Its own thread pool, not the inference server's event loop: a slow peer cannot stall inference.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from pifarm.initiator.peer_store import PieceStore

log = logging.getLogger(__name__)

PATH_RE = re.compile(r"^/v1/pieces/([0-9a-f]{64})(?:/([0-9]{1,6}))?(?:\?size=([0-9]{1,10}))?\Z")
SLICE = 256 * 1024


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.burst = burst or max(rate / 10, SLICE)
        self.tokens = self.burst
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until n bytes may leave."""
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
                self.t = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                wait = (n - self.tokens) / self.rate
            time.sleep(min(wait, 0.25))


class PieceServer:
    def __init__(self, store: PieceStore, cache_blobs: Path, tokens: dict[str, str], host: str, port: int, *,
                 upload_rate: float = 0.0, max_connections: int = 8, tls=None):
        self.store = store
        self.tls = tls  # PeerTls or None (the swarm token alone)
        self.cache_blobs = cache_blobs
        self.tokens = tokens  # blob digest -> swarm token (filled by the peer source's announces)
        self.bucket = TokenBucket(upload_rate) if upload_rate > 0 else None
        self.slots = threading.BoundedSemaphore(max_connections)
        self.served_bytes = 0
        self.refused = 0
        self.httpd = _Server((host, port), _handler(self))
        self.httpd.tls = tls.server if tls is not None else None
        self.port = self.httpd.server_address[1]
        # 1 Hz like the node's other idle servers (issue 19), not socketserver's 2 Hz
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(1.0,), name="piece-server",
                                       daemon=True)

    def start(self) -> "PieceServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorized(self, hexd: str, header: str | None) -> bool:
        want = self.tokens.get(f"blake3:{hexd}")
        scheme, _, value = (header or "").partition(" ")
        return bool(want) and scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), want)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    tls: ssl.SSLContext | None = None

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls is not None:  # the handshake runs in the request's thread (Handler.setup), not here
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address) -> None:
        # a refused handshake or a peer gone mid-piece is the peer's business, not a traceback here
        import sys

        log.debug("piece server: %s: %s", client_address, sys.exc_info()[1], exc_info=True)


def _handler(srv: PieceServer) -> Callable:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per peer pair
        timeout = 30  # an idle or stalled peer connection is closed

        def log_message(self, fmt, *args) -> None:
            pass

        def setup(self) -> None:
            if srv.tls is not None:
                self.request.settimeout(self.timeout)
                self.request.do_handshake()  # a certificate from another CA fails here
            super().setup()
            # paced slices end in short segments: without this each waits for the peer's delayed ACK
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if srv.bucket is not None:  # paced: a small send buffer, so the pace is what leaves the node
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * SLICE)

        def _reply(self, code: int, body: bytes = b"", ctype: str = "application/json", **headers: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _error(self, code: int, msg: str) -> None:
            import json

            self._reply(code, json.dumps({"error": msg}).encode())

        def do_GET(self) -> None:
            m = PATH_RE.match(self.path)
            if not m:
                return self._error(404, "not a piece path: /v1/pieces/<hex>[/<index>?size=<piece size>]")
            hexd, index, size = m.group(1), m.group(2), m.group(3)
            if srv.tls is not None and not self.connection.getpeercert():
                from pifarm.initiator.peer_tls import NO_CERT

                return self._error(403, NO_CERT)
            if not srv.authorized(hexd, self.headers.get("Authorization")):
                return self._error(403, "this blob needs its swarm token (ask the tracker: GET /v1/peers)")
            if not srv.slots.acquire(blocking=False):
                srv.refused += 1
                self.close_connection = True
                return self._error(503, "too many peers at once; ask another")
            try:
                if index is None:
                    return self._have(hexd)
                self._piece(hexd, int(index), int(size or 0))
            finally:
                srv.slots.release()

        def _have(self, hexd: str) -> None:
            import json

            if (srv.cache_blobs / hexd).exists():
                return self._reply(200, b'{"complete": true}')
            pf = srv.store.get(hexd)
            if pf is None:
                return self._error(404, "this node holds no piece of that blob")
            self._reply(200, json.dumps({"complete": pf.complete, "piece_size": pf.table.size,
                                         "have": format(pf.have, "x"), "pending": format(pf.pending, "x")}).encode())

        def _piece(self, hexd: str, i: int, size: int) -> None:
            full = srv.cache_blobs / hexd
            pf = srv.store.get(hexd)
            try:
                fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
                total, have = os.fstat(fd).st_size, None
            except FileNotFoundError:
                if pf is None or i >= pf.table.count or not pf.has(i):
                    return self._error(404, f"this node does not hold piece {i}")
                if size and size != pf.table.size:
                    return self._error(400, f"piece size {size} differs from the manifest's {pf.table.size}")
                fd, total, have = os.dup(pf.fd), pf.ref.size, pf.have
                size = pf.table.size
            try:
                if not size or size & (size - 1):
                    return self._error(400, "size= (the manifest's piece size, a power of two) is required")
                off = i * size
                if off >= total:
                    return self._error(416, f"piece {i} is past the end of the blob")
                n = min(size, total - off)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(n))
                self.send_header("X-Pifarm-Have", "all" if have is None else format(have, "x"))
                self.end_headers()
                self.wfile.flush()
                sock: socket.socket = self.connection
                done = 0
                with open(fd, "rb", closefd=False) as f:
                    while done < n:  # zero-copy (sendfile), in slices the bucket lets out
                        step = n - done if srv.bucket is None else min(SLICE, n - done)
                        if srv.bucket is not None:
                            srv.bucket.take(step)
                        if srv.tls is not None:  # no sendfile through TLS: Python's fallback sends 8 KiB at a time
                            step = min(step, SLICE)
                            sock.sendall(os.pread(fd, step, off + done))
                            sent = step
                        else:
                            sent = sock.sendfile(f, off + done, step)
                        if sent <= 0:
                            raise ConnectionError("peer closed the connection")
                        done += sent
                        srv.served_bytes += sent
            finally:
                os.close(fd)

    return Handler
