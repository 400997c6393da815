"""The fleet view of the aggregator: what people and monitoring read about the farm.

    page.py     the server-rendered fleet page (`GET /ui`, its `/ui/fragment` for live refresh)
    sd.py       Prometheus `http_sd` targets (`GET /v1/fleet/prometheus-sd`)
    metrics.py  per-node gauges from the reports (state, throttling, temperature, cache, paths)
                and rollout outcomes, for the shipped alerting rules and dashboard (contrib/)
    routes.py   the router over one `FarmView` (plain callables: this package imports only leaves)
    static/     fleet.js (polls the fragment; no build step, no CDN) and fleet.css

Read-only: it serves GETs only, so it sits behind the same access rules as the API's reads
(mTLS when the API requires client certificates).
"""
