"""A "bad" S3 endpoint for tests: a tiny proxy in front of a real SeaweedFS that drops
If-None-Match / If-Match, the way S3 gateways without conditional writes ignore them.

This is the endpoint under test (the one pifarm must refuse for several aggregators), not a
stand-in for a good one: every other byte goes to the real server. Every request is signed again
(SigV4 with the test's own credentials): the client signed the proxy's host name and the
conditional headers the proxy drops.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

CONDITIONAL = ("if-none-match", "if-match")
HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "authorization"}


class StrippingProxy:
    def __init__(self, upstream: str, access_key: str | None = None, secret_key: str | None = None):
        from tests.support.seaweed import ADMIN_KEY, ADMIN_SECRET

        self.upstream = upstream.rstrip("/")
        self.access_key, self.secret_key = access_key or ADMIN_KEY, secret_key or ADMIN_SECRET
        self.stripped = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k: v for k, v in self.headers.items()}
                if any(k.lower() in CONDITIONAL for k in headers):
                    proxy.stripped += 1
                # signed again for every request: the client signed the proxy's host name
                headers = proxy._resign(self.command, self.path, headers, body)
                r = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body,
                                  timeout=60)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                # HEAD: the object's length as upstream gave it (there is no body to count)
                length = r.headers.get("content-length", "0") if self.command == "HEAD" else str(len(r.content))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _resign(self, method: str, path: str, headers: dict, body: bytes) -> dict:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        keep = {k: v for k, v in headers.items()
                if k.lower() not in CONDITIONAL and k.lower() not in HOP and k.lower() != "x-amz-date"}
        req = AWSRequest(method=method, url=self.upstream + path, data=body, headers=keep)
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", "us-east-1").add_auth(req)
        return {k: v for k, v in req.headers.items() if k.lower() not in ("host",)}

    def __enter__(self) -> "StrippingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
