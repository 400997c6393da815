"""The aggregator's fleet part: node reports, fleet state, rollouts (pifarm.registry.fleet_api).

Unlike the `PARTS`, it needs the built app: `mount(app, ctx, token)` adds the report fast path,
the fleet and rollout routes, the Prometheus collector and the rollout engine's start/stop hooks.
"""

from __future__ import annotations

from typing import Any

from pifarm.appliance import aggregator_fleetview
from pifarm.registry.fleet_api import FleetCollector, FleetService, ReportPath, fleet_router, peer_cert_protocol


def mount(app, ctx, token: str | None) -> FleetService:
    service = FleetService(ctx.registry, ctx.data_dir, token)
    blog = getattr(ctx.registry, "log_", None)
    if blog is not None:  # several aggregators on one bucket: rollouts there, one leader (issue 17)
        import os
        import socket

        service.engine.share(blog.b, f"{socket.gethostname()}:{ctx.config.api.listen}:{os.getpid()}")
        # and the fleet state: every aggregator sees every node, whichever one it reports to
        service.share_fleet(blog.b, f"{socket.gethostname()}:{ctx.config.api.listen}")
    app.add_middleware(ReportPath, service=service)
    # the fleet view first: its /v1/fleet/prometheus-sd must be matched before /v1/fleet/{node}
    aggregator_fleetview.mount(app, ctx, service)
    app.include_router(fleet_router(service))
    # the tracker of the peer source (issue 16): node auth and holders come from the fleet service
    from pifarm.registry.tracker import Tracker, tracker_router

    app.state.tracker = Tracker(service)
    app.include_router(tracker_router(app.state.tracker))
    ctx.metrics_registry.register(FleetCollector(service))
    ctx.on_start.append(service.start)
    ctx.on_stop.append(service.stop)
    app.state.fleet = service
    return service


#: idle connections stay open longer than a node's report interval (default 10 s), so a node
#: reports over the same connection instead of a new TCP (and TLS) handshake every time: 1,000
#: nodes would otherwise cost 100 handshakes a second
KEEP_ALIVE = 30


def uvicorn_kwargs(api) -> dict[str, Any]:
    """Keep-alive past the report interval; with client certificates required, the HTTP protocol
    hands each connection's certificate to the report route (it names the node)."""
    kw: dict[str, Any] = {"timeout_keep_alive": KEEP_ALIVE}
    if api.tls_client_ca:
        kw["http"] = peer_cert_protocol()
    return kw
