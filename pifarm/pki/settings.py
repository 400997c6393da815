"""`[enroll]` settings: kept apart from the X.509 code so loading a config never imports
cryptography."""

from __future__ import annotations

from dataclasses import dataclass

from pifarm.errors import ConfigError
from pifarm.listen import parse_listen

CLIENT_DAYS = 365


@dataclass(frozen=True)
class EnrollSettings:
    """`[enroll]` in aggregator.toml."""

    enabled: bool = True
    #: the enrollment listener (server TLS only); "" = the API's host, its port + 1
    listen: str = ""
    #: days a node's client certificate is valid
    cert_days: int = CLIENT_DAYS
    #: issue a DH-HMAC-CHAP secret to each enrolled host (the target then requires it).
    #: unset (auto): on wherever the kernel target has it; a kernel target without it refuses to
    #: enroll hosts until this is set to false (hosts are then known by their NQN alone)
    dhchap: bool | None = None

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen)
        if not 1 <= self.cert_days <= 3650:
            raise ConfigError(f"[enroll] cert_days must be 1..3650, got {self.cert_days}")
