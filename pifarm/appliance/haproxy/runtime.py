"""A small client of HAProxy's Runtime API (the `stats socket ... level admin`).

One connection per command (the socket closes after answering in non-interactive mode), so a
restarted HAProxy needs no reconnect logic beyond the next call. Answers are free text; a command
succeeds when its answer is empty or one of HAProxy's success lines, otherwise `RuntimeError_`
carries HAProxy's words.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pifarm.errors import PifarmError, SourceError

OK_ANSWERS = ("", "New server registered.", "Server deleted.")
READ_LIMIT = 16 * 2**20


class RuntimeCommandError(PifarmError):
    """HAProxy refused a Runtime API command (its answer is the message)."""


@dataclass(frozen=True)
class ServerState:
    backend: str
    name: str
    addr: str
    port: int
    op_state: int      # 0 down, 1 starting, 2 up, 3 stopping
    admin_state: int   # bit mask: 0x01 forced maint, 0x08 forced drain, ...
    weight: int

    @property
    def admin(self) -> str:
        if self.admin_state & 0x25:
            return "maint"
        if self.admin_state & 0x18:
            return "drain"
        return "ready"

    @property
    def up(self) -> bool:
        return self.op_state in (1, 2)


def parse_address(text: str) -> tuple[int, str] | tuple[int, tuple[str, int]]:
    """`/run/haproxy/pifarm.sock` or `ipv4@127.0.0.1:9999` -> (family, address)."""
    if text.startswith(("ipv4@", "ipv6@")):
        host, _, port = text[5:].rpartition(":")
        if not port.isdigit():
            raise PifarmError(f"runtime socket {text!r}: expected ipv4@HOST:PORT")
        fam = socket.AF_INET6 if text.startswith("ipv6@") else socket.AF_INET
        return fam, (host.strip("[]"), int(port))
    if not text:
        raise PifarmError("no HAProxy runtime socket given (--socket PATH or [haproxy] socket)")
    return socket.AF_UNIX, text


class Runtime:
    def __init__(self, address: str, timeout: float = 2.0):
        self.address = address
        self.family, self._addr = parse_address(address)
        self.timeout = timeout

    def raw(self, command: str) -> str:
        """Send one command; HAProxy's answer. SourceError when the socket is absent or dead."""
        if "\n" in command or ";" in command:
            raise PifarmError(f"one runtime command at a time, got {command!r}")
        try:
            with socket.socket(self.family, socket.SOCK_STREAM) as c:
                c.settimeout(self.timeout)
                c.connect(self._addr)
                c.sendall(command.encode() + b"\n")
                chunks, n = [], 0
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    chunks.append(d)
                    n += len(d)
                    if n > READ_LIMIT:
                        raise SourceError(f"HAProxy runtime socket {self.address}: answer over {READ_LIMIT} bytes")
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise SourceError(f"HAProxy runtime socket {self.address} not there ({e.strerror})") from e
        except OSError as e:
            raise SourceError(f"HAProxy runtime socket {self.address}: {e}") from e
        return b"".join(chunks).decode(errors="replace")

    def command(self, command: str) -> str:
        out = self.raw(command).strip()
        if out not in OK_ANSWERS:
            raise RuntimeCommandError(f"haproxy refused `{command}`: {' '.join(out.split())[:300]}")
        return out

    def info(self) -> dict[str, str]:
        out = {}
        for line in self.raw("show info").splitlines():
            k, sep, v = line.partition(":")
            if sep:
                out[k.strip()] = v.strip()
        return out

    def servers(self) -> dict[str, dict[str, ServerState]]:
        """backend -> server -> state, from `show servers state` (format 1)."""
        text = self.raw("show servers state")
        lines = text.splitlines()
        if not lines or lines[0].strip() != "1":
            raise SourceError(f"HAProxy runtime socket {self.address}: unexpected `show servers state` answer "
                              f"{text[:120]!r}")
        out: dict[str, dict[str, ServerState]] = {}
        for line in lines[1:]:
            f = line.split()
            if not f or line.startswith("#") or len(f) < 19:
                continue
            out.setdefault(f[1], {})[f[3]] = ServerState(f[1], f[3], f[4], int(f[18]) if f[18].isdigit() else 0,
                                                         int(f[5]), int(f[6]), int(f[7]))
        return out

    def backends(self) -> set[str]:
        text = self.raw("show backend")
        return {x.strip() for x in text.splitlines()[1:] if x.strip() and not x.startswith("#")}
