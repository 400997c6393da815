"""The inference server's REST routes, one module per group, over one `ServerState` (state.py).

    state.py       ServerState (settings, manager, metrics, serving, repository), the `State`
                   dependency, the JSON error body
    health.py      /v2 (server metadata), /v2/health/live|ready, /health, /metrics
    extensions.py  statistics (/v2/models[/{m}[/versions/{v}]]/stats) and the model repository
                   (/v2/repository/index, load, unload)
    models.py      model metadata and model readiness
    infer.py       /v2/models/{m}[/versions/{v}]/infer (normally answered below the framework by
                   fastpath.py; these routes document it and answer the same way)

`pifarm.inference.server.create_app` builds the app and includes these routers in this order:
the order matters (`/v2/models/stats` before `/v2/models/{model}`) and the OpenAPI document
lists the routes so.
"""
