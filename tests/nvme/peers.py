"""Misbehaving peers on 127.0.0.1: a scripted raw-socket target and a TCP proxy that can
corrupt or cut the controller-to-host stream of the real userspace target."""

from __future__ import annotations

import socket
import threading
from typing import Callable


class _Listener:
    """A loopback listener whose accept loop hands each connection to `_serve` on its own
    thread; leaving the `with` block stops accepting and joins every thread (bounded)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._accept = threading.Thread(target=self._loop, daemon=True)

    def _spawn(self, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, daemon=True)
        t.start()
        self._threads.append(t)

    def _loop(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._accept.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._accept.join(timeout=5)
        self.sock.close()
        for t in self._threads:
            t.join(timeout=10)


class ScriptedTarget(_Listener):
    """Runs `script(conn)` for each accepted connection; records the bytes the host sent."""

    def __init__(self, script: Callable[[socket.socket, "ScriptedTarget"], None]):
        super().__init__()
        self.script = script
        self.received = bytearray()

    def _serve(self, conn: socket.socket) -> None:
        self._spawn(lambda: self._run(conn))

    def _run(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                self.script(conn, self)
            except OSError:
                pass

    def recv_exact(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        self.received += buf
        return buf

    def drain(self, conn: socket.socket) -> None:
        """Read until the host closes (bounded by the socket timeout)."""
        try:
            while chunk := conn.recv(65536):
                self.received += chunk
        except OSError:
            pass

class Proxy(_Listener):
    """Forwards 127.0.0.1:port to the real target. `mutate(conn_index, offset, chunk) -> bytes | None`
    sees each controller-to-host chunk with its offset in that connection's stream; returning
    None closes the connection right there."""

    def __init__(self, upstream_port: int, mutate: Callable[[int, int, bytes], bytes | None]):
        super().__init__()
        self.upstream = upstream_port
        self.mutate = mutate
        self.conns = 0

    def _serve(self, down: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        idx, self.conns = self.conns, self.conns + 1
        self._spawn(lambda: self._pipe(down, up))
        self._spawn(lambda: self._c2h(idx, up, down))

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        self._close(src, dst)

    def _c2h(self, idx: int, up: socket.socket, down: socket.socket) -> None:
        pos = 0
        try:
            while chunk := up.recv(65536):
                out = self.mutate(idx, pos, chunk)
                pos += len(chunk)
                if out is None:
                    break
                down.sendall(out)
        except OSError:
            pass
        self._close(up, down)
