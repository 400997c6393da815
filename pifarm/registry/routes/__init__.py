"""The aggregator API's routes, one module per group, over one `ApiState` (state.py).

    state.py      ApiState (registry, settings, token, metrics, notifier), the `State` dependency,
                  the bearer-token check for writes
    metadata.py   GET /v1/metadata (long-poll, plus its below-the-framework fast path), models,
                  manifests
    blobs.py      GET/HEAD /v1/blobs/{digest} (Range), PUT /v1/blobs/{digest} (streamed upload)
    writes.py     publish (two-step and one-request upload), promote, rollback, retire
    health.py     /health (with the aggregator's providers) and /metrics

`pifarm.registry.api.create_app` builds the app: the state, the lifespan and the error handlers,
then includes these routers in this order (the OpenAPI document lists them so).
"""
