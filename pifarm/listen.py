"""The one parser of listen addresses (`[api] listen`, `[node] listen`, `--listen`, ...).

A leaf module: it imports only `pifarm.errors`, so the registry, the node side and the CLI all
read HOST:PORT the same way.
"""

from __future__ import annotations

from pifarm.errors import ConfigError

EXPECTED = "HOST:PORT"


def parse_listen(listen: str, key: str = "listen") -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT or :PORT (all interfaces) -> (host, port); port 0 picks a free one."""
    host, sep, port = str(listen).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or (host.startswith("[") != host.endswith("]")):
        raise ConfigError(f"{key} address {listen!r}: expected {EXPECTED}, e.g. 127.0.0.1:8470, [::1]:8470 "
                          "or :8470 (all interfaces)", key=key, expected=EXPECTED)
    return host.strip("[]") or "0.0.0.0", int(port)


def bind_listen(host: str, port: int, what: str = "listen") -> "socket.socket":
    """A bound, listening TCP socket for HOST:PORT, made before a daemon does any work, so a taken
    port is one line at once (not after pulling every model). The server is handed this socket."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:  # a runtime condition (exit 1), not a malformed setting
            from pifarm.errors import Conflict

            raise Conflict(f"{what} address {host}:{port} is already in use by another process; stop it or "
                              f"choose another address (--listen)") from None
        raise ConfigError(f"{what} address {host}:{port} cannot be bound: {e.strerror}", key=what) from None
    sock.set_inheritable(True)
    return sock
