"""HAProxy in front of the farm, driven by fleet state (issue 15).

    settings   [haproxy]
    plan       fleet state -> wanted backends, servers, weights, states (pure)
    render     a plan -> a complete haproxy.cfg
    runtime    HAProxy's Runtime API (one command per connection)
    sync       the loop that keeps a running HAProxy in step (and its health and metrics)
    source     fleet state from the aggregator's API or, inside it, its fleet service
"""
