"""The one state object every route of the aggregator API reads (held on `app.state.api`)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pifarm.errors import Forbidden, Unauthorized
from pifarm.registry.notify import RevisionNotifier
from pifarm.registry.service import Registry
from pifarm.registry.settings import ApiSettings

__all__ = ["ApiState", "HealthProvider", "Metrics", "State", "api_state", "require_token"]

HealthProvider = Callable[[], dict]


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.revision = Gauge("pifarm_registry_revision", "Current snapshot revision", registry=registry)
        self.read_only = Gauge("pifarm_registry_read_only", "1 while the registry refuses writes", registry=registry)
        self.waiters = Gauge("pifarm_metadata_waiters", "Long-poll requests waiting now", registry=registry)
        self.writes = Counter("pifarm_registry_writes", "Write requests by operation and outcome",
                              ["op", "outcome"], registry=registry)
        # bounded labels: route templates (or "other"), status codes, error class names
        self.requests = Counter("pifarm_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=registry)
        self.write_failures = Counter("pifarm_registry_write_failures", "Refused or failed writes by reason",
                                      ["reason"], registry=registry)
        self.blob_bytes = Counter("pifarm_blob_bytes_served", "Blob bytes sent", registry=registry)
        self.notify = Histogram("pifarm_metadata_notify_seconds", "Revision change to a parked long-poll answered",
                                buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5), registry=registry)
        self.fanout = Gauge("pifarm_metadata_last_fanout_seconds",
                            "Revision change to the last parked long-poll answered, latest change", registry=registry)


@dataclass
class ApiState:
    registry: Registry
    settings: ApiSettings
    #: the bearer token writes need; None refuses every write (403), never allows one
    write_token: str | None
    metrics_registry: CollectorRegistry
    metrics: Metrics
    health_providers: list[HealthProvider] = field(default_factory=list)
    #: set by the lifespan (it needs the running loop); the long-poll waits on it
    notifier: RevisionNotifier | None = None
    #: revision -> slowest long-poll wake-up so far (the fan-out gauge)
    fanout: dict[int, float] = field(default_factory=dict)

    @property
    def tmp_dir(self) -> Path:
        """Where uploads stream to before the registry takes them (same filesystem as the store)."""
        return self.registry.data_dir / "tmp"

    def current(self) -> tuple[int, tuple[int, bytes]]:
        """(revision, (revision, snapshot bytes)): what every long-poll waiter answers with."""
        rev, data = self.registry.snapshot_bytes()
        return rev, (rev, data)


def api_state(request: Request) -> ApiState:
    return request.app.state.api


#: a route parameter `state: State` receives the app's ApiState (no request parameters added)
State = Annotated[ApiState, Depends(api_state)]


def require_token(request: Request) -> None:
    """Dependency of every write: a bearer token, and the right one (absent -> 401, wrong -> 403)."""
    write_token = api_state(request).write_token
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("this request needs 'Authorization: Bearer <token>' (see the aggregator's api-token)")
    if not write_token or not secrets.compare_digest(value.strip().encode(), write_token.encode()):
        raise Forbidden("the bearer token is not valid for writes on this registry")
