"""The cache source `nvme-tcp-userspace`: blobs read off model volumes over userspace NVMe/TCP.

Each namespace of the subsystem is a pifarm volume; its superblock and table of contents say
where each blob lies. A namespace is trusted to be the volume it claims only if its UUID is the
one derived from the volume's manifest digest; the blob bytes themselves are verified by the
cache (this source never verifies, per the Source contract).

[[sources]] entry (node.toml):

    kind = "nvme-tcp-userspace"
    address = "aggregator.local:4420"
    options = { subnqn = "nqn....", hostnqn = "nqn....", hdgst = false, ddgst = false,
                dhchap_secret = "DHHC-1:01:...:" }   # only if the target demands DH-HMAC-CHAP

`subnqn` may be omitted: the discovery controller then names the subsystems to look in.
`hostnqn` defaults to the node's host identity (`[node] host_identity`, else /etc/nvme/hostnqn,
written on first start), the same one the aggregator's allowlist knows.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from pifarm.errors import ConfigError, IntegrityError, NotFound, ProtocolError, SourceError, UsageError
from pifarm import nvmewire as w
from pifarm.signed.integrity import BlobRef
from pifarm.signed.manifest import namespace_uuid
from pifarm.volume.format import VolumeReader
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.nvme_tcp._client import NvmeTcpClient
from pifarm.initiator.nvme_tcp._controller import ConnectParams, NamespaceInfo, parse_address
from pifarm.initiator.settings import NvmeTcpOptions

log = logging.getLogger(__name__)
NAME = "nvme-tcp-userspace"
CHUNK = 4 << 20  # one chunk = four 1 MiB Reads
AHEAD = 4  # chunks in flight: 16 MiB keeps a link busy while the cache hashes and writes
IO_QUEUES = 2  # measured best of 1/2 queues x 2/4 chunks ahead against the kernel target (bench P7)


@dataclass(frozen=True)
class _Extent:
    client: NvmeTcpClient
    ns: NamespaceInfo
    offset: int
    size: int


class NvmeTcpUserspaceSource:
    name = NAME

    def __init__(self, clients: list[NvmeTcpClient], chunk: int = CHUNK, ahead: int = AHEAD):
        self.clients = clients
        self.chunk = chunk
        self.ahead = ahead
        self._index: dict[str, _Extent] | None = None
        #: what the node state file shows for this path: unknown until the first read, then
        #: "live" after a successful read and "unreachable" after a failed one
        self.path_state = "unknown"

    def volume(self, manifest_digest: str) -> VolumeReader:
        """The volume of one model version, found by its namespace UUID."""
        want = namespace_uuid(manifest_digest)
        for client in self.clients:
            with _as_source_error():
                for ns in client.namespaces():
                    if ns.uuid == want:
                        return self._open(client, ns)
        raise NotFound(f"no namespace with UUID {want} (manifest {manifest_digest}) on "
                       + ", ".join(c.params.where for c in self.clients))

    def _open(self, client: NvmeTcpClient, ns: NamespaceInfo) -> VolumeReader:
        reader = VolumeReader(lambda off, n: client.read(ns, off, n), where=f"{client.params.where} nsid {ns.nsid}")
        expect = namespace_uuid(reader.manifest_digest)
        if ns.uuid != expect:
            raise IntegrityError(f"{reader.where}: namespace UUID {ns.uuid} is not the {expect} its volume's manifest implies")
        return reader

    def _build_index(self) -> dict[str, _Extent]:
        index: dict[str, _Extent] = {}
        for client in self.clients:
            with _as_source_error():
                namespaces = client.namespaces()
            for ns in namespaces:
                try:
                    with _as_source_error():
                        reader = self._open(client, ns)
                except IntegrityError as e:
                    log.info("skipping namespace %d on %s: %s", ns.nsid, client.params.where, e)
                    continue
                for _path, digest, off, size in reader.entries:
                    index.setdefault(digest, _Extent(client, ns, off, size))
        return index

    def _locate(self, ref: BlobRef) -> _Extent:
        """Where the blob lies. The index is rebuilt when the blob is unknown (a new version) or
        when its namespace no longer carries the UUID it was indexed under (a retired version
        whose nsid now holds another volume), so a stale index never feeds the wrong bytes."""
        for refresh in (False, True):
            if self._index is None or refresh:
                self._index = self._build_index()
            ext = self._index.get(ref.digest)
            if ext is not None and self._still_there(ext):
                self.path_state = "live"
                break
        else:
            self.path_state = "nothing-offered"
            raise SourceError(f"blob {ref.digest} is on no volume exported by "
                              + ", ".join(c.params.where for c in self.clients), NAME)
        if ext.size != ref.size:
            raise SourceError(f"blob {ref.digest}: volume says {ext.size} bytes, manifest says {ref.size}", NAME)
        return ext

    @staticmethod
    def _still_there(ext: _Extent) -> bool:
        try:
            with _as_source_error():
                now = ext.client.call(lambda c: c.namespace(ext.ns.nsid))
        except (w.NvmeStatusError, NotFound):
            return False
        return now.uuid == ext.ns.uuid and now.size == ext.ns.size

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        try:
            ext = self._locate(ref)
        except SourceError:
            if self.path_state != "nothing-offered":
                self.path_state = "unreachable"
            raise
        if start >= ref.size:
            return
        it = ext.client.iter_read(ext.ns, ext.offset + start, ref.size - start, self.chunk, self.ahead)
        try:
            while True:
                try:
                    with _as_source_error():
                        data = next(it, None)
                except SourceError:
                    self.path_state = "unreachable"
                    raise
                if data is None:
                    self.path_state = "live"
                    return
                yield data
        finally:
            it.close()

    def close(self) -> None:
        for c in self.clients:
            c.close()


class _as_source_error:
    """Protocol failures become SourceError so the fallback chain moves on; the cause is kept."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: BaseException | None, tb: Any) -> bool:
        if isinstance(e, ProtocolError) and not isinstance(e, SourceError):
            raise SourceError(f"NVMe/TCP: {e}", NAME) from e
        return False


def make_source(spec: Any, ctx: Any) -> NvmeTcpUserspaceSource:
    """Factory the node's fallback chain loads by the dotted path
    "pifarm.initiator.nvme_tcp.source:make_source" (spec: SourceSpec, ctx: SourceContext)."""
    opts = spec.typed_options(NvmeTcpOptions)
    address = spec.address or opts.address
    if not address:
        raise ConfigError("[[sources]] nvme-tcp-userspace needs address = \"HOST:PORT\"")
    host, port = parse_address(address)
    hostid = None
    hostnqn = opts.hostnqn
    if not hostnqn:  # the node's identity, as nvme-cli would use it (created on first start)
        ident = ensure_identity(getattr(ctx, "host_identity_path", None))
        hostnqn, hostid = ident.hostnqn, uuid.UUID(ident.hostid)
    timeout = float(opts.timeout if opts.timeout is not None else min(10.0, float(spec.deadline)))
    common = dict(host=host, port=port, hostnqn=hostnqn, hostid=hostid, dhchap_secret=opts.dhchap_secret,
                  hdgst=opts.hdgst, ddgst=opts.ddgst, timeout=timeout)
    try:
        subnqns = [opts.subnqn] if opts.subnqn else discover_subsystems(ConnectParams(**common, kato_ms=0))
        clients = [NvmeTcpClient(ConnectParams(**common, subnqn=s, io_queues=opts.io_queues,
                                               queue_depth=opts.queue_depth))
                   for s in subnqns]
    except (ValueError, UsageError) as e:
        raise ConfigError(f"[[sources]] nvme-tcp-userspace options: {e}") from e
    if not clients:
        raise SourceError(f"the discovery controller at {host}:{port} lists no subsystem for host {hostnqn}", NAME)
    return NvmeTcpUserspaceSource(clients, ahead=opts.read_ahead)


def discover_subsystems(params: ConnectParams) -> list[str]:
    """NVM subsystem NQNs the discovery controller at params.host:port offers this host."""
    with NvmeTcpClient(params, retries=1) as c, _as_source_error():
        log_ = c.discovery_log()
    return [e.subnqn for e in log_.entries if e.subtype == w.SUBTYPE_NVME]


__all__ = ["NAME", "NvmeTcpUserspaceSource", "discover_subsystems", "make_source"]
