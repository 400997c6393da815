"""The aggregator's HAProxy part ([haproxy] socket set): the sync runs inside the aggregator.

Inside, it reads fleet state without HTTP and hears every rollout decision before the snapshot
carries it (`RolloutEngine.before_apply`), so a node is drained before it swaps versions, not
after its next report. Its state is in `/health` ("haproxy") and `/metrics` (pifarm_haproxy_*).
"""

from __future__ import annotations

from pifarm.appliance.haproxy.source import ServiceSource
from pifarm.appliance.haproxy.sync import Sync, SyncCollector


def mount(app, ctx, service) -> Sync:
    sync = Sync(ctx.config.haproxy, ServiceSource(service), source_name="this aggregator")
    service.engine.before_apply.append(sync.before_rollout)

    def health() -> dict:
        return {"haproxy": sync.status()}

    ctx.health_providers.append(health)
    app.state.api.health_providers.append(health)  # the API copied the list when it was built
    ctx.metrics_registry.register(SyncCollector(sync))
    ctx.on_start.append(sync.start)
    ctx.on_stop.append(sync.stop)
    app.state.haproxy = sync
    return sync
