"""`[haproxy]`: how fleet state drives an HAProxy in front of the farm (render and sync).

Read by `pifarm haproxy render|sync` (flags win) and, when `socket` is set, by the aggregator,
which then runs the sync itself (it sees rollout decisions before the nodes do).
"""

from __future__ import annotations

from dataclasses import dataclass

from pifarm.errors import ConfigError
from pifarm.listen import parse_listen


@dataclass(frozen=True)
class HaproxySettings:
    #: the Runtime API socket ("" = no sync in the aggregator); a path, or ipv4@HOST:PORT
    socket: str = ""
    #: the frontend's address in a rendered haproxy.cfg
    bind: str = "*:8000"
    #: where the sync keeps the rendered haproxy.cfg current ("" = never written), so a reload or
    #: a restart of HAProxy starts from the fleet's state, dynamic servers included
    config: str = ""
    #: run on a structural change (a new model backend), e.g. "systemctl reload haproxy"; "" =
    #: the sync only says a reload is needed (health, metrics, log)
    reload_command: str = ""
    #: seconds between two looks at fleet state and HAProxy
    interval: float = 0.5
    #: seconds between TCP probes of every in-service node (0 = off): a node whose inference port
    #: refuses connections goes to maintenance at once, not after 3 missed reports
    probe_interval: float = 0.25
    probe_timeout: float = 0.5
    #: weights: a ready node, one serving from its cache (degraded), a throttled or undervolted Pi
    #: (the lowest that applies wins); 1..256
    weight: int = 100
    weight_degraded: int = 50
    weight_throttled: int = 50
    #: HAProxy's own health check of each server (the fallback while the sync is away)
    check_inter: float = 2.0
    check_fall: int = 2
    check_rise: int = 2
    #: bounds HAProxy applies per request
    retries: int = 3
    timeout_connect: float = 1.0
    timeout_server: float = 30.0
    timeout_client: float = 30.0
    timeout_queue: float = 5.0
    maxconn: int = 4096
    #: HAProxy worker threads (0 = HAProxy's default, one per CPU); 1 leaves a Pi-sized box's
    #: other cores to the nodes and clients beside it
    nbthread: int = 0
    #: a node kept in drain for a version swap is made ready after this even without a report
    swap_timeout: float = 120.0

    def __post_init__(self) -> None:
        for k in ("weight", "weight_degraded", "weight_throttled"):
            v = getattr(self, k)
            if not isinstance(v, int) or not 1 <= v <= 256:
                raise ConfigError(f"[haproxy] {k} must be an integer from 1 to 256, got {v!r}", key=k)
        for k in ("interval", "check_inter", "timeout_connect", "timeout_server", "timeout_client",
                  "timeout_queue", "probe_timeout", "swap_timeout"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 86400:
                raise ConfigError(f"[haproxy] {k} must be a number of seconds > 0, got {v!r}", key=k)
        if not isinstance(self.probe_interval, (int, float)) or self.probe_interval < 0:
            raise ConfigError(f"[haproxy] probe_interval must be >= 0 (0 = off), got {self.probe_interval!r}",
                              key="probe_interval")
        for k in ("check_fall", "check_rise", "maxconn"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"[haproxy] {k} must be an integer >= 1, got {v!r}", key=k)
        if not isinstance(self.nbthread, int) or not 0 <= self.nbthread <= 64:
            raise ConfigError(f"[haproxy] nbthread must be an integer from 0 to 64, got {self.nbthread!r}", key="nbthread")
        if not isinstance(self.retries, int) or not 0 <= self.retries <= 10:
            raise ConfigError(f"[haproxy] retries must be an integer from 0 to 10, got {self.retries!r}", key="retries")
        parse_bind(self.bind)


def parse_bind(text: str) -> tuple[str, int]:
    """`*:8000`, `127.0.0.1:8000`, `[::1]:8000`, `:8000` -> (host, port); "*" and "" = every address."""
    t = str(text).strip()
    if t.startswith("*:"):
        t = "0.0.0.0:" + t[2:]
    elif t.startswith(":"):
        t = "0.0.0.0" + t
    return parse_listen(t, key="[haproxy] bind")
