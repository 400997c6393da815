"""Several aggregators of one farm (one shared S3 bucket, issue 17) behind one client.

`[node] aggregators = ["http://agg1:8470", "http://agg2:8470"]`: every call goes to the
aggregator that answered last; when it fails as a server (unreachable, timed out, 5xx) the call
is tried on the next one, so a node follows revisions without entering degraded mode while any
aggregator answers, and only when every one of them fails does the caller see the failure.
All of them serve the same signed snapshots, so which one answered does not matter to a node.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from pifarm.errors import ReadOnlyError, SourceError

log = logging.getLogger(__name__)

#: failures that are the aggregator's (try the next one), not the request's
FAILOVER = (SourceError, ReadOnlyError)


class FailoverClient:
    def __init__(self, clients: Sequence[Any]):
        if not clients:
            raise ValueError("FailoverClient needs at least one aggregator client")
        self.clients = list(clients)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> Any:
        return self.clients[self._current]

    @property
    def url(self) -> str:
        return self.current.url

    @property
    def urls(self) -> list[str]:
        return [c.url for c in self.clients]

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(client)` on the current aggregator, then on each next one while they fail."""
        start = self._current
        last: Exception | None = None
        for k in range(len(self.clients)):
            i = (start + k) % len(self.clients)
            try:
                out = fn(self.clients[i])
            except FAILOVER as e:
                last = e
                continue
            if i != self._current:
                with self._lock:
                    log.warning("aggregator %s answers; following it instead of %s (%s)", self.clients[i].url,
                                self.clients[self._current].url, last)
                    self._current = i
            return out
        assert last is not None
        raise last

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.clients[0], name)
        if not callable(attr):
            return getattr(self.current, name)

        def method(*args, **kw):
            return self.call(lambda c: getattr(c, name)(*args, **kw))

        method.__name__ = name
        return method

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def __enter__(self) -> "FailoverClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def aggregator_client(urls: Sequence[str], **kw) -> Any:
    """One AggregatorClient for one URL, a FailoverClient over several."""
    from pifarm.client.http import AggregatorClient

    clients = [AggregatorClient(u, **kw) for u in urls]
    return clients[0] if len(clients) == 1 else FailoverClient(clients)
