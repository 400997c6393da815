"""The aggregator's fleet view (pifarm.registry.fleetview): the page, Prometheus http_sd and the
per-node metrics, wired over the fleet service, the registry and the target settings.

`mount(app, ctx, service)` is called by aggregator_fleet.mount before the fleet router, so
`/v1/fleet/prometheus-sd` is matched ahead of `/v1/fleet/{node}`.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pifarm import __version__
from pifarm.registry.fleetview.metrics import FleetViewCollector
from pifarm.registry.fleetview.routes import FarmView, fleetview_router

log = logging.getLogger(__name__)


def _models(ctx) -> dict[str, Any]:
    """Registry models, each version with the volume file and nsid the target exports it as."""
    from pifarm.appliance.target_root import kernel_target
    from pifarm.target.exporter import planned_exports

    models = ctx.registry.models()
    try:
        target = kernel_target(ctx.config.target, ctx.data_dir)
        nsids = target.nsids.current()
        for x in planned_exports(ctx.registry.served_versions(), target.volume_dir):
            models.get(x.name, {}).setdefault("exports", {})[str(x.version)] = {
                "volume": x.path.rsplit("/", 1)[-1], "nsid": nsids.get(x.key)}
    except Exception as e:  # the page still shows the models; the export column stays empty
        log.debug("fleet page: no export info (%s)", e)
    return models


def _target(ctx) -> dict[str, Any]:
    from pifarm.appliance.target_root import kernel_target

    s = ctx.config.target
    health: dict[str, Any] = {}
    for provider in ctx.health_providers:
        try:
            health.update(provider())
        except Exception as e:  # one broken provider must not break the page
            log.debug("fleet page: health provider failed (%s)", e)
    t = health.get("target") or {}
    try:
        allowed = sorted(kernel_target(s, ctx.data_dir).allowed_hosts())
    except Exception:
        allowed = list(s.allowed_hosts)
    return {"enabled": bool(t), "subsystem": t.get("subsystem"), "last_error": t.get("last_error"),
            "ports": [f"{a}:{s.trsvcid}" for a in s.addresses], "allowed_hosts": allowed,
            "drives": health.get("drives")}


def mount(app, ctx, service) -> FarmView:
    registry = ctx.registry
    view = FarmView(
        nodes=service.fleet.all, node=service.fleet.get, rollouts=service.engine.all, models=lambda: _models(ctx),
        aggregator=lambda: {"hostname": socket.gethostname(), "version": __version__, "revision": registry.revision,
                            "read_only": registry.read_only_reason},
        target=lambda: _target(ctx))
    app.include_router(fleetview_router(view))
    ctx.metrics_registry.register(FleetViewCollector(service.fleet.all, service.engine.all))
    return view
