"""/health (registry state plus the aggregator's health providers) and /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pifarm.registry.routes.state import State

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(state: State) -> dict:
    registry = state.registry
    body: dict[str, Any] = {
        "status": "degraded" if registry.read_only_reason else "ok",
        "revision": registry.revision,
        "read_only": registry.read_only_reason is not None,
        "read_only_reason": registry.read_only_reason,
        "store": {"location": registry.store.location, "reachable": registry.read_only_reason is None,
                  # "shared: ..." (the bucket is the commit point) or "single-writer ..." (issue 17)
                  "writer": getattr(registry, "writer_mode", "single-writer"),
                  "conditional_writes": (getattr(registry, "store_probe", None) or {}).get("if_none_match"),
                  "versioning": (getattr(registry, "store_probe", None) or {}).get("versioning")},
        "signing_keyid": registry.key.keyid,
    }
    for p in state.health_providers:
        try:
            body.update(p())
        except Exception as e:  # a broken provider reports itself instead of failing health
            body.setdefault("errors", []).append(f"{getattr(p, '__name__', p)}: {e}")
    return body


@router.get("/metrics")
async def prometheus(state: State) -> Response:
    state.metrics.revision.set(state.registry.revision)
    state.metrics.read_only.set(1 if state.registry.read_only_reason else 0)
    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
