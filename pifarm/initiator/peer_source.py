"""`kind = "peers"`: a blob's pieces from other nodes and the aggregator at once.

For a blob of at least `min_size` whose manifest carries per-piece digests, the source asks the
tracker (`GET /v1/peers`, which also announces this node) for peers, keeps `downloads` pieces in
flight — rarest first among what peers hold, and one from the aggregator (HTTP Range): pieces no
peer holds first, striped over the swarm, else, while no peer holds the whole blob, the rarest one,
so its uplink never idles — checks every piece with `StreamVerifier` on arrival, writes it to
the piece store (which the piece server serves from at once), and yields the blob in order to
the cache, which verifies the whole blob once more before installing it. A peer whose piece fails
its digest is dropped at once and reported to the tracker; a peer that fails (gone, 503, 404)
costs the pieces in flight from it, which go back to the pool. After a crash the verified pieces
are kept (`peer_store`), so only missing pieces are fetched again. When every missing piece is
in flight, idle workers ask a second provider for them (endgame: the first copy that verifies wins).
The cache links the piece file in (`blob_file`) instead of writing the blob a second time.

Blobs below `min_size` or without pieces raise SourcePass at once: the next source serves them,
and nothing counts as failed. So do blobs no other node holds or fetches, with `need_peer` (the
default chain's: alone, one streamed GET from the aggregator beats pieces from it one by one).
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx

from pifarm.errors import IntegrityError, PifarmError, SourceError, SourcePass
from pifarm.initiator.peer_store import PieceFile, PieceStore
from pifarm.initiator.settings import PIECE_PORT, PeerOptions, SourceContext, SourceSpec
from pifarm.signed.integrity import CHUNK, BlobRef
from pifarm.signed.pieces import PieceTable
from pifarm.signed.snapshot import verify_manifest

log = logging.getLogger(__name__)

AGG = "aggregator"


@dataclass
class Peer:
    node: str
    url: str
    complete: bool = False
    have: int = 0
    pending: int = 0
    inflight: int = 0
    failures: int = 0
    dropped: bool = False
    heard: float = 0.0  # when its have-map was last refreshed
    busy_until: float = 0.0  # it answered 503: ask others until then


@dataclass
class Stats:
    """What one node's peer source did (written to <state_dir>/peers.json after each blob)."""

    pieces_from_peers: int = 0
    pieces_from_aggregator: int = 0
    bytes_from_peers: int = 0
    bytes_from_aggregator: int = 0
    bad_pieces: int = 0
    dropped_peers: list[str] = field(default_factory=list)
    wasted_bytes: int = 0  # bytes received for pieces that failed or were cut off
    failed_requests: int = 0
    resumed_pieces: int = 0
    blobs: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Got:
    def __init__(self, status: int, headers, content: bytes):
        self.status_code, self.headers, self.content = status, headers, content

    @property
    def text(self) -> str:
        return self.content[:400].decode("utf-8", "replace")


class Fetcher:
    """Piece GETs on keep-alive stdlib connections, one per thread and host: a 4 MiB body is read
    by one C loop (`HTTPResponse.read`), not hundreds of small reads through Python (CPU on a Pi)."""

    def __init__(self, tls, timeout: float = 20.0):
        self.tls = tls if tls is not None else ssl.create_default_context()
        self.timeout = timeout
        self._local = threading.local()
        self.peer_tls = None  # PeerTls: https:// peers (mTLS), their certificate checked before a request

    def get(self, url: str, headers: dict[str, str], limit: int, peer: bool = False, retry: bool = True) -> _Got:
        u = urlsplit(url)
        key = (u.scheme, u.netloc)
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(key)
        reused = conn is not None
        if conn is None:
            ptls = self.peer_tls if peer and u.scheme == "https" else None
            if u.scheme == "https":
                conn = http.client.HTTPSConnection(u.netloc, timeout=self.timeout,
                                                   context=ptls.client if ptls is not None else self.tls)
            else:
                conn = http.client.HTTPConnection(u.netloc, timeout=self.timeout)
            if ptls is not None:
                try:
                    conn.connect()
                    ptls.check_server(conn.sock.getpeercert(binary_form=True), u.netloc)
                except BaseException:
                    conn.close()
                    raise
            conns[key] = conn
        try:
            conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers)
            r = conn.getresponse()
            n = int(r.getheader("Content-Length") or -1)
            if n < 0 or n > limit:
                raise SourceError(f"{url}: answer of {n} bytes where at most {limit} fit (or no length)")
            body = r.read(n)
            if len(body) != n:
                raise SourceError(f"{url}: connection closed after {len(body)} of {n} bytes")
            if r.will_close:
                conn.close()
                conns.pop(key, None)
            return _Got(r.status, r, body)
        except (OSError, http.client.HTTPException, SourceError) as e:
            conn.close()
            conns.pop(key, None)
            if reused and retry and isinstance(e, (ConnectionResetError, BrokenPipeError)):
                # a keep-alive connection the server closed while it idled (uvicorn: after 5 s):
                # a GET is safe to send once more, on a new connection
                return self.get(url, headers, limit, peer, retry=False)
            raise


class PieceTables:
    """Per-piece digests of a blob, from the signed manifests the cache already holds."""

    def __init__(self, cache_root: Path, trusted):
        self.root = Path(cache_root) / "manifests"
        self.trusted = trusted
        self._seen: dict[Path, float] = {}
        self._tables: dict[str, PieceTable] = {}

    def get(self, ref: BlobRef) -> PieceTable | None:
        if ref.digest not in self._tables:
            self._scan()
        return self._tables.get(ref.digest)

    def _scan(self) -> None:
        for p in self.root.glob("*/*.json"):
            try:
                mtime = p.stat().st_mtime
                if self._seen.get(p) == mtime:
                    continue
                self._seen[p] = mtime
                m = verify_manifest(json.loads(p.read_text()), self.trusted)
            except (OSError, ValueError, PifarmError) as e:
                log.debug("peers: manifest %s skipped: %s", p, e)
                continue
            for f in m.files:
                if f.pieces is not None:
                    self._tables[f.digest] = f.pieces


class PeerSource:
    name = "peers"

    def __init__(self, opts: PeerOptions, ctx: SourceContext, tracker_url: str):
        self.opts = opts
        self.tracker_url = tracker_url.rstrip("/")
        self.aggregator_url = (ctx.aggregator_url or tracker_url).rstrip("/")
        self.store = PieceStore(Path(ctx.state_dir) / "pieces")
        self.tables = PieceTables(ctx.cache_root, ctx.trusted)
        self.cache_blobs = Path(ctx.cache_root) / "blobs" / "blake3"
        self.stats_path = Path(ctx.state_dir) / "peers.json"
        self.port = int(opts.listen.rpartition(":")[2] if opts.listen else PIECE_PORT)  # set again once bound
        self.node_id = ""  # set by the node (pifarm.appliance.node_peers) with its report token
        self.token = ""
        self.off = ""  # why this source passes every blob on (set by the node: e.g. its port was taken)
        self.tls = None  # PeerTls when peers speak mTLS (set by the node with the piece server's)
        self.tokens: dict[str, str] = {}  # blob -> swarm token, which the piece server checks
        self.stats = Stats()
        verify = ctx.tls if ctx.tls is not None else True
        self._tracker = httpx.Client(verify=verify, timeout=httpx.Timeout(10.0, connect=3.0))
        self.fetcher = Fetcher(ctx.tls)

    # -- the tracker ------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Pifarm-Node": self.node_id} if self.token else {}

    def announce(self, ref: BlobRef, complete: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"blob": ref.digest, "port": self.port, "limit": self.opts.max_peers}
        if self.opts.rack:
            params["rack"] = self.opts.rack
        if self.opts.host:
            params["host"] = self.opts.host
        if complete:
            params["complete"] = "true"
        if self.tls is not None:
            params["tls"] = "true"  # peers reach our piece server at https://
        try:
            r = self._tracker.get(f"{self.tracker_url}/v1/peers", params=params, headers=self._auth())
        except httpx.HTTPError as e:
            raise SourceError(f"tracker {self.tracker_url}: {type(e).__name__}: {e}", self.name) from e
        if r.status_code != 200:
            raise SourceError(f"tracker {self.tracker_url}: HTTP {r.status_code}: {r.text[:200]}", self.name)
        body = r.json()
        self.tokens[ref.digest] = str(body["token"])
        return list(body.get("peers") or [])

    def report_bad(self, ref: BlobRef, peer: Peer, why: str) -> None:
        try:
            self._tracker.post(f"{self.tracker_url}/v1/peers/bad", headers=self._auth(),
                               json={"blob": ref.digest, "node": peer.node, "reason": why[:400]})
        except httpx.HTTPError as e:
            log.warning("peers: could not report %s to the tracker: %s", peer.node, e)

    # -- the Source interface ---------------------------------------------------------------
    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        if self.off:
            raise SourcePass(f"peers off: {self.off} (next source)", self.name)
        if ref.size < self.opts.min_size:
            raise SourcePass(f"blob {ref.digest}: {ref.size} bytes, below min_size {self.opts.min_size} "
                              "(next source)", self.name)
        table = self.tables.get(ref)
        if table is None:
            raise SourcePass(f"blob {ref.digest}: its manifest lists no pieces (next source)", self.name)
        if not self.node_id:
            raise SourceError("peers: this node has no node id and token for the tracker", self.name)
        listed = self.announce(ref)  # also joins the swarm: the nodes after us find us
        if self.opts.need_peer and not any(p.get("node") != self.node_id for p in listed):
            raise SourcePass(f"blob {ref.digest}: no other node holds or fetches it (next source)", self.name)
        self.store.sweep(lambda h: (self.cache_blobs / h).exists())
        pf = self.store.acquire(ref, table)
        dl = _Download(self, ref, table, pf)
        self.stats.resumed_pieces += pf.resumed
        try:
            dl.start(listed)
            yield from dl.ordered(start)
            self.stats.blobs += 1
            try:
                self.announce(ref, complete=True)  # listed as a complete holder from now on
            except SourceError as e:
                log.warning("peers: %s", e)
        finally:
            dl.stop()
            self.store.release(pf)
            self._write_stats()

    def blob_file(self, ref: BlobRef) -> Path:
        """Where `chunks()` lays (and reads) the blob: the cache links it in once it verified."""
        return self.store.dir / f"{ref.hex}.data"

    def _write_stats(self) -> None:
        try:
            self.stats_path.write_text(json.dumps(self.stats.to_json()))
        except OSError as e:
            log.debug("peers: cannot write %s: %s", self.stats_path, e)

    def close(self) -> None:
        self._tracker.close()


class _Download:
    """One blob being fetched: worker threads pick (piece, provider) pairs until every piece is held."""

    def __init__(self, src: PeerSource, ref: BlobRef, table: PieceTable, pf: PieceFile):
        self.src, self.ref, self.table, self.pf = src, ref, table, pf
        self.o = src.opts
        self.peers: dict[str, Peer] = {}
        self.inflight: dict[int, list[Peer | None]] = {}  # piece -> who sends it (two, near the end)
        self.agg_inflight = 0
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.progress = time.monotonic()
        self.error: str | None = None

    # -- threads ------------------------------------------------------------------------------
    def start(self, listed: list[dict[str, Any]]) -> None:
        self._merge(listed)  # the first answer (PeerSource.chunks asked) decides whether we can start at all
        self._spawn(self._tracker_loop, "peers-tracker")
        for i in range(self.o.downloads):
            self._spawn(self._worker, f"peers-{i}")

    def _spawn(self, fn, name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        with self.cond:
            self.cond.notify_all()
        for t in self.threads:
            t.join(timeout=30)

    def _merge(self, listed: list[dict[str, Any]]) -> None:
        with self.cond:
            for p in listed:
                url, node = str(p.get("url", "")), str(p.get("node", ""))
                if not url.startswith(("http://", "https://")) or node == self.src.node_id:
                    continue
                old = self.peers.get(node)
                if old is None or old.url != url:
                    self.peers[node] = Peer(node, url.rstrip("/"), bool(p.get("complete")))
                elif p.get("complete"):
                    old.complete = True
            self.cond.notify_all()

    def _tracker_loop(self) -> None:
        """Announce again now and then; refresh the have-maps of peers not heard from lately."""
        last = time.monotonic()
        while not self.stop_event.wait(0.5):
            if time.monotonic() - last >= 3.0:
                last = time.monotonic()
                try:
                    self._merge(self.src.announce(self.ref, complete=self.pf.complete))
                except SourceError as e:
                    log.warning("peers: %s", e)
            for p in list(self.peers.values()):
                if not p.dropped and not p.complete and time.monotonic() - p.heard > 1.0:
                    self._refresh(p)

    def _refresh(self, p: Peer) -> None:
        try:
            r = self.src.fetcher.get(f"{p.url}/v1/pieces/{self.ref.hex}", self._token(), 1 << 20, peer=True)
            if r.status_code == 200:
                d = json.loads(r.content)
                with self.cond:
                    p.complete = bool(d.get("complete"))
                    p.have = int(d.get("have", "0"), 16) if not p.complete else 0
                    p.pending = int(d.get("pending", "0"), 16) if not p.complete else 0
                    p.heard = time.monotonic()
                    p.failures = 0
                    self.cond.notify_all()
            else:
                p.heard = time.monotonic()
        except (OSError, http.client.HTTPException, SourceError, ValueError):
            self._failed(p)

    def _token(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.src.tokens.get(self.ref.digest, '')}"}

    # -- choosing ------------------------------------------------------------------------------
    def _pick(self) -> tuple[int, Peer | None] | None:
        """(piece, peer) or (piece, None) for the aggregator; None when nothing can start now."""
        n = self.table.count
        missing = [i for i in range(n) if not self.pf.has(i) and i not in self.inflight]
        live = [p for p in self.peers.values() if not p.dropped]
        full = (1 << n) - 1
        held = [(full if p.complete else p.have) for p in live]
        now = time.monotonic()
        if not missing:
            return self._endgame(live, held, now)
        avail = {i: sum(h >> i & 1 for h in held) for i in missing}
        free = [(p, h) for p, h in zip(live, held) if p.inflight < self.o.per_peer and p.busy_until <= now]
        order = missing[:]
        random.shuffle(order)
        if self.o.selection == "rarest":
            order.sort(key=lambda i: avail[i])
        if self.agg_inflight < self.o.from_aggregator:
            # the aggregator's requests come first, so its uplink never idles while the swarm's are
            # the bottleneck (peers/bound 2.0 at N = 16 when it only sent pieces nobody had)
            pend = {i: sum(p.pending >> i & 1 for p in live) for i in order}
            nobody = [i for i in order if avail[i] == 0]
            if nobody:
                # pieces nobody has first: the swarm splits them into stripes by node id (every node
                # sees about the same members), so each leaves the aggregator about once; past its
                # own stripe a node takes what nobody is fetching
                ids = sorted({self.src.node_id, *self.peers})
                rank, k = ids.index(self.src.node_id), len(ids)
                mine = [i for i in nobody if i % k == rank]
                return min(mine or nobody, key=lambda i: pend[i]), None  # `order` is shuffled: ties random
            if not any(p.complete for p in live):
                # a fresh fan-out (no peer holds the whole blob): the aggregator is the one full seed
                # and its uplink should not idle, so it sends the rarest piece this node misses;
                # once peers hold it whole they are the seeds, and it sends only what nobody has
                return min(order, key=lambda i: (avail[i], pend[i])), None
        for i in order:
            holders = [p for p, h in free if h >> i & 1]
            if holders:
                return i, min(holders, key=lambda p: (p.inflight, random.random()))
        return None

    def _endgame(self, live: list[Peer], held: list[int], now: float) -> tuple[int, Peer | None] | None:
        """Every piece still missing is in flight and a worker is idle: it asks a second provider for
        one that a single one sends, so the blob's last pieces do not wait on one slow uplink (the
        first copy that verifies is kept; the other one's bytes count as wasted)."""
        single = [i for i, who in self.inflight.items() if len(who) == 1]
        random.shuffle(single)
        for i in single:
            who = self.inflight[i]
            for p, h in zip(live, held):
                if h >> i & 1 and all(p is not q for q in who) and p.inflight < self.o.per_peer and p.busy_until <= now:
                    return i, p
            if who[0] is not None and self.agg_inflight < self.o.from_aggregator and not any(p.complete for p in live):
                return i, None
        return None

    def _worker(self) -> None:
        while not self.stop_event.is_set():
            with self.cond:
                if self.pf.complete:
                    return
                choice = self._pick()
                if choice is None:
                    self.cond.wait(0.5)
                    continue
                i, peer = choice
                self.inflight.setdefault(i, []).append(peer)
                self.pf.pending |= 1 << i
                if peer is None:
                    self.agg_inflight += 1
                else:
                    peer.inflight += 1
            try:
                self._fetch(i, peer)
            finally:
                with self.cond:
                    who = self.inflight.get(i, [])
                    who[:] = [q for q in who if q is not peer]
                    if not who:
                        self.inflight.pop(i, None)
                        self.pf.pending &= ~(1 << i)
                    if peer is None:
                        self.agg_inflight -= 1
                    else:
                        peer.inflight -= 1
                    self.cond.notify_all()

    # -- fetching ------------------------------------------------------------------------------
    def _fetch(self, i: int, peer: Peer | None) -> None:
        off, n = self.table.span(i, self.ref.size)
        st = self.src.stats
        got, status = b"", 0
        try:
            if peer is None:
                r = self.src.fetcher.get(f"{self.src.aggregator_url}/v1/blobs/{self.ref.digest}",
                                         {"Range": f"bytes={off}-{off + n - 1}"}, n + 65536)
                ok = r.status_code == 206
            else:
                r = self.src.fetcher.get(f"{peer.url}/v1/pieces/{self.ref.hex}/{i}?size={self.table.size}",
                                         self._token(), n + 65536, peer=True)
                ok = r.status_code == 200
                self._note_have(peer, r.headers.getheader("X-Pifarm-Have"))
            got, status = r.content, r.status_code
            if not ok:
                raise SourceError(f"HTTP {r.status_code}: {r.text[:200]}")
        except (OSError, http.client.HTTPException, SourceError) as e:
            st.failed_requests += 1
            st.wasted_bytes += len(got) if status in (200, 206) else 0
            if peer is None:
                log.warning("peers: piece %d from the aggregator failed: %s", i, e)
                time.sleep(0.5)
            elif status == 503:  # busy: not a failure, ask someone else for a moment
                peer.busy_until = time.monotonic() + random.uniform(0.2, 0.6)
            else:
                self._failed(peer, stale=status == 404)
            return
        try:
            self.pf.verify(i, got)  # the one verification routine, before the piece is kept
        except IntegrityError as e:
            st.bad_pieces += 1
            st.wasted_bytes += len(got)
            if peer is None:
                self.error = f"the aggregator sent piece {i} of {self.ref.digest} failing its digest: {e}"
                log.error("peers: %s", self.error)
                self.stop_event.set()
            else:
                self._drop(peer, f"piece {i} failed its digest: {e}")
            return
        if self.pf.has(i):  # the other copy of an endgame piece was first
            st.wasted_bytes += len(got)
            return
        self.pf.put(i, got)
        if peer is None:
            st.pieces_from_aggregator += 1
            st.bytes_from_aggregator += n
        else:
            st.pieces_from_peers += 1
            st.bytes_from_peers += n
            peer.failures = 0
        self.progress = time.monotonic()

    def _note_have(self, peer: Peer, header: str | None) -> None:
        if not header:
            return
        with self.cond:
            if header == "all":
                peer.complete = True
            else:
                try:
                    peer.have |= int(header, 16)
                except ValueError:
                    return
            peer.heard = time.monotonic()

    def _failed(self, peer: Peer, stale: bool = False) -> None:
        """A request to the peer failed; a 404 only means its have-map was stale."""
        with self.cond:
            if stale:
                peer.have = 0
                peer.heard = 0.0
                return
            peer.failures += 1
            if peer.failures >= 3 and not peer.dropped:
                peer.dropped = True
                self.src.stats.dropped_peers.append(peer.node)
                log.warning("peers: %s (%s) dropped after %d failures", peer.node, peer.url, peer.failures)

    def _drop(self, peer: Peer, why: str) -> None:
        with self.cond:
            if peer.dropped:
                return
            peer.dropped = True
            self.src.stats.dropped_peers.append(peer.node)
        log.error("peers: dropped %s (%s): %s", peer.node, peer.url, why)
        self.src.report_bad(self.ref, peer, why)

    # -- the cache's view --------------------------------------------------------------------
    def ordered(self, start: int) -> Iterator[bytes]:
        """The blob's bytes from `start`, in order, as soon as each piece is verified."""
        i = start // self.table.size
        while i < self.table.count:
            with self.cond:
                while not self.pf.has(i):
                    if self.error:
                        raise SourceError(self.error, self.src.name)
                    if time.monotonic() - self.progress > self.o.stall:
                        raise SourceError(f"blob {self.ref.digest}: no piece arrived for {self.o.stall:g}s "
                                          f"(peers {len(self.peers)}, aggregator {'on' if self.o.from_aggregator else 'off'})",
                                          self.src.name)
                    self.cond.wait(0.5)
            off, _n = self.table.span(i, self.ref.size)
            skip = max(0, start - off)
            data = self.pf.read(i, skip)
            for k in range(0, len(data), CHUNK):
                yield data[k:k + CHUNK]
            i += 1


def make_source(spec: SourceSpec, ctx: SourceContext) -> PeerSource:
    opts = spec.typed_options(PeerOptions)
    tracker = opts.tracker or spec.url or ctx.aggregator_url
    if not tracker:
        raise SourceError("[[sources]] peers: no tracker and no aggregator URL configured (--aggregator)", "peers")
    return PeerSource(opts, ctx, tracker)
