"""Issue 11, finding 9: the aggregator's HTTP server holds at most [api] max_connections
connections; beyond that a request gets 503 at once instead of the server growing without bound."""

from __future__ import annotations

import socket

import httpx

from tests.support.aggregator import aggregator_factory  # noqa: F401  (fixture)
from tests.support.wait import wait_for


def test_connections_beyond_the_limit_get_503(aggregator_factory):
    agg = aggregator_factory(env={"PIFARM_API_MAX_CONNECTIONS": "3"})
    port = int(agg.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        # the idle connections are accepted asynchronously: wait until the server counts them
        wait_for(lambda: httpx.get(agg.url + "/health", timeout=30).status_code == 503,
                 what="a request beyond max_connections answered 503", timeout=60)
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: httpx.get(agg.url + "/health", timeout=30).status_code == 200,
             what="served again once the idle connections closed", timeout=60)
