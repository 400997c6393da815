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
