"""The source fallback chain: `[[sources]]` in node config, tried in order, each with a deadline.

Factories are looked up in `SOURCE_KINDS` by dotted path and imported only when a config names
them, so a node without the NVMe modules still starts and says clearly what is missing.

    [[sources]]
    kind = "nvme-kernel"
    deadline = 20
    [[sources]]
    kind = "http"          # url defaults to the node's aggregator
    deadline = 60
    [[sources]]
    kind = "s3"            # url/endpoint default to [s3]; options = {part_size = 8388608}
    deadline = 300
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Iterable, Iterator

from pifarm.cache.source import Source
from pifarm.errors import ConfigError, SourceError, SourceTimeout
from pifarm.initiator.settings import SourceContext, SourceSpec
from pifarm.signed.integrity import BlobRef

SOURCE_KINDS: dict[str, str] = {
    "http": "pifarm.initiator.http_source:make_source",
    "s3": "pifarm.initiator.s3_source:make_source",
    "nvme-kernel": "pifarm.initiator.blockdev_source:make_source",
    "nvme-tcp-userspace": "pifarm.initiator.nvme_tcp.source:make_source",
    "peers": "pifarm.initiator.peer_source:make_source",
}

Factory = Callable[[SourceSpec, SourceContext], Source]


def load_factory(kind: str) -> Factory:
    target = SOURCE_KINDS.get(kind)
    if target is None:
        raise ConfigError(f"unknown source kind {kind!r} in [[sources]]; known: {', '.join(sorted(SOURCE_KINDS))}")
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"source kind {kind!r} needs module {module}, which is not installed in this build ({e.name} missing); "
            f"remove it from [[sources]] or install a pifarm with it"
        ) from e
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"source kind {kind!r}: {module} has no factory {attr}()")
    return fn


class Deadlined:
    """Wraps any source so one blob never takes longer than its `[[sources]]` deadline."""

    def __init__(self, inner: Source, deadline: float):
        self.inner = inner
        self.name = getattr(inner, "name", "source")
        self.deadline = deadline

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        end = time.monotonic() + self.deadline
        it = self.inner.chunks(ref, start)
        try:
            for chunk in it:
                yield chunk
                if time.monotonic() > end:
                    raise SourceTimeout(f"blob {ref.digest}: {self.name} missed its {self.deadline:g}s deadline", self.name)
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    def blob_file(self, ref: BlobRef):
        """The inner source's file of the blob, if it keeps one (see `Cache._handed_file`)."""
        fn = getattr(self.inner, "blob_file", None)
        return fn(ref) if fn is not None else None

    def close(self) -> None:
        self.inner.close()


def build_sources(specs: Iterable[SourceSpec], ctx: SourceContext, *, strict: bool = True) -> list[Source]:
    """Instantiate the chain in config order. With strict=False a source that cannot be built
    (e.g. an NVMe target not reachable at start) is logged and skipped instead of fatal."""
    import logging

    out: list[Source] = []
    for spec in specs:
        factory = load_factory(spec.kind)
        try:
            out.append(Deadlined(factory(spec, ctx), spec.deadline))
        except SourceError as e:
            if strict:
                raise
            logging.getLogger(__name__).warning("source %s unavailable, skipped: %s", spec.kind, e)
    return out


#: seconds one blob may take from the default chain's peer source; a dead swarm gives up sooner
#: (its `stall`), and what arrived is kept for the next source's resume
PEERS_DEADLINE = 1800.0


def default_specs(aggregator_url: str, s3_url: str, peers: Any = None) -> list[SourceSpec]:
    """The chain when the config lists none: the aggregator over HTTP, then S3 if configured.
    With `peers` (PeerOptions: [peers] on, and the node can authenticate to the tracker) the peer
    source goes first; with `need_peer` it takes only blobs of at least `min_size` that another
    node holds or fetches, and passes everything else on at once."""
    specs = []
    if peers is not None and aggregator_url:
        specs.append(SourceSpec("peers", deadline=PEERS_DEADLINE, options=peers))
    if aggregator_url:
        specs.append(SourceSpec("http", deadline=120.0))
    if s3_url:
        specs.append(SourceSpec("s3", deadline=600.0))
    return specs


def close_all(sources: Iterable[Source]) -> None:
    for s in sources:
        try:
            s.close()
        except Exception:  # closing is best effort; a broken source must not mask the real error
            pass
