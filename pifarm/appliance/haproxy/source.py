"""Where the sync and `render` read fleet state: the aggregator's API, or (inside the
aggregator) its fleet service directly. Both give (`GET /v1/fleet` nodes, `GET /v1/rollouts`)."""

from __future__ import annotations

from typing import Any


class ApiSource:
    def __init__(self, url: str, timeout: float = 5.0):
        from pifarm.client.http import AggregatorClient

        self.url = url
        self.client = AggregatorClient(url, None, timeout=timeout, connect_timeout=min(timeout, 1.5))
        self.timeout = timeout

    def __call__(self) -> tuple[list[dict], dict[str, Any]]:
        nodes = self.client._request("GET", "/v1/fleet", "fleet state").json()["nodes"]
        rollouts = self.client._request("GET", "/v1/rollouts", "rollouts").json()
        return nodes, rollouts

    def close(self) -> None:
        self.client.close()


class ServiceSource:
    """In the aggregator: the FleetService's own state, no HTTP."""

    def __init__(self, service):
        self.service = service

    def __call__(self) -> tuple[list[dict], dict[str, Any]]:
        return self.service.fleet.all(), self.service.engine.all()
