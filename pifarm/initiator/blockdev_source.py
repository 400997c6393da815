"""The `nvme-kernel` source: model volumes read straight from NVMe block devices.

    [[sources]]
    kind = "nvme-kernel"
    address = "10.0.0.1:4420"          # the aggregator's NVMe/TCP port
    deadline = 20
    options = {dhchap_secret_file = "/etc/pifarm/nvme.key", ctrl_loss_tmo = 600}

Nothing is mounted. Each namespace (found by pyudev, `namespaces.py`) holds one volume
(`pifarm.volume.format`): the superblock and table of contents are read and checked, the
namespace UUID must be the one derived from the volume's manifest digest, and the manifest must
carry a trusted signature, before any blob of it is served. Blobs are read with O_DIRECT into
page-aligned buffers (no page-cache copy of a model the cache is about to store anyway), each
read bounded by `read_timeout` in a worker thread, because a read on a lost path blocks until
the kernel gives up on it.

The cache verifies every byte (the one routine); this source also runs the same routine over
full-blob reads only to *name* a corrupt volume (status file, log, metric), then refuses that
blob so the chain goes straight to the next source.

Attaching (discovery, connect, retries) runs in a background thread (`kernel_attach.py`), so a
node starts serving from other sources while the target is unreachable. Its state — live,
unreachable, nothing-offered — is `path_state`, and with the volumes is written to
`<state_dir>/nvme.json`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pifarm.durable import atomic_write_json
from pifarm.errors import ConfigError, IntegrityError, PifarmError, SignatureError, SourceError, SourceTimeout
from pifarm.initiator.backoff import Backoff
from pifarm.initiator.identity import ensure_identity
from pifarm.initiator.kernel_attach import (
    DISABLED, LIVE, AttachSettings, KernelAttacher, parse_address,
)
from pifarm.initiator.namespaces import Namespace, NamespaceIndex
from pifarm.initiator.settings import NvmeKernelOptions
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier
from pifarm.signed.manifest import namespace_uuid
from pifarm.signed.signing import TrustedKeys
from pifarm.volume.format import BLOCK, VolumeReader, align

log = logging.getLogger(__name__)

NAME = "nvme-kernel"
STATUS_FILE = "nvme.json"
FABRICS_DEV = "/dev/nvme-fabrics"


class DirectFile:
    """Aligned positional reads of a file or block device, O_DIRECT when the filesystem allows
    it (tmpfs before 6.6 does not: fall back to buffered reads, still aligned)."""

    def __init__(self, path: str | os.PathLike, direct: bool = True, read_timeout: float = 10.0):
        self.path = str(path)
        self.read_timeout = read_timeout
        flags = os.O_RDONLY | os.O_CLOEXEC
        self.direct = False
        try:
            if direct and hasattr(os, "O_DIRECT"):
                try:
                    self.fd = os.open(self.path, flags | os.O_DIRECT)
                    self.direct = True
                except OSError as e:
                    if e.errno not in (22, 95):  # EINVAL / EOPNOTSUPP: no O_DIRECT here
                        raise
                    self.fd = os.open(self.path, flags)
            else:
                self.fd = os.open(self.path, flags)
        except FileNotFoundError as e:
            raise SourceError(f"{self.path} is gone (namespace removed or disconnected)", NAME) from e
        except OSError as e:
            raise SourceError(f"cannot open {self.path}: {e.strerror}", NAME) from e
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nvme-read")
        self._stalled: concurrent.futures.Future | None = None
        self._buf = mmap.mmap(-1, CHUNK + BLOCK)  # anonymous maps are page aligned: O_DIRECT-safe

    def _pread(self, buf: mmap.mmap, n: int, offset: int) -> int:
        view = memoryview(buf)
        got = 0
        try:
            while got < n:
                r = os.preadv(self.fd, [view[got:n]], offset + got)
                if r == 0:
                    break
                got += r
        finally:
            view.release()
        return got

    def read_at(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer only at the end of the device)."""
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            a0 = pos // BLOCK * BLOCK
            n = min(align(end) - a0, CHUNK)
            got = self._bounded(n, a0)
            piece = self._buf[pos - a0:min(got, end - a0)]
            if not piece:
                break
            out += piece
            pos += len(piece)
        return bytes(out)

    def stream(self, offset: int, length: int) -> Iterator[bytes]:
        """[offset, offset+length) in pieces of up to 1 MiB, the next read already in flight while
        the caller hashes and writes the current piece (I/O overlaps verification)."""
        end = offset + length
        bufs = (mmap.mmap(-1, CHUNK + BLOCK), mmap.mmap(-1, CHUNK + BLOCK))  # per stream: a stuck
        pos, i = offset, 0  # read of an abandoned stream cannot scribble on anyone else's buffer

        def submit(p: int, buf: mmap.mmap) -> tuple[int, concurrent.futures.Future]:
            a0 = p // BLOCK * BLOCK
            return a0, self._submit(buf, min(align(end) - a0, CHUNK), a0)

        pending = submit(pos, bufs[0]) if pos < end else None
        while pending is not None:
            a0, fut = pending
            got = self._wait(fut, a0)
            piece = bytes(bufs[i][pos - a0:min(got, end - a0)])
            if not piece:
                return
            pos += len(piece)
            i ^= 1
            pending = submit(pos, bufs[i]) if pos < end else None
            yield piece

    def _submit(self, buf: mmap.mmap, n: int, offset: int) -> concurrent.futures.Future:
        if self._stalled is not None:
            if not self._stalled.done():
                raise SourceError(f"{self.path}: an earlier read is still stuck in the kernel (path lost?)", NAME)
            self._stalled = None
        return self._pool.submit(self._pread, buf, n, offset)

    def _wait(self, fut: concurrent.futures.Future, offset: int) -> int:
        try:
            return fut.result(timeout=self.read_timeout)
        except concurrent.futures.TimeoutError:
            self._stalled = fut
            raise SourceTimeout(f"{self.path}: read at {offset} took longer than {self.read_timeout:g}s "
                                "(NVMe path lost? the kernel is reconnecting)", NAME) from None
        except OSError as e:
            raise SourceError(f"{self.path}: read at {offset} failed: {e.strerror}", NAME) from e

    def _bounded(self, n: int, offset: int) -> int:
        fut = self._submit(self._buf, n, offset)
        try:
            return self._wait(fut, offset)
        except SourceTimeout:
            self._buf = mmap.mmap(-1, CHUNK + BLOCK)  # the stuck read still owns the old buffer
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._stalled is None or self._stalled.done():
            try:
                os.close(self.fd)
            except OSError:
                pass
        # else: the stuck read still uses the fd; it is closed with the process


@dataclass
class OpenVolume:
    path: str
    file: DirectFile
    reader: VolumeReader
    namespace: Namespace | None

    def describe(self) -> dict:
        m = self.reader.manifest
        return {"device": self.path, "name": m.name, "version": m.version,
                "manifest_digest": self.reader.manifest_digest, "direct_io": self.file.direct,
                "uuid": str(self.namespace.uuid) if self.namespace and self.namespace.uuid else None}


def open_volume(path: str | os.PathLike, trusted: TrustedKeys, namespace: Namespace | None = None, *,
                direct: bool = True, read_timeout: float = 10.0) -> OpenVolume:
    """Open one volume and check it before use: TOC digest (VolumeReader), namespace UUID bound
    to the manifest digest (when it comes from a namespace), trusted manifest signature."""
    f = DirectFile(path, direct=direct, read_timeout=read_timeout)
    try:
        reader = VolumeReader(f.read_at, where=str(path))
        if namespace is not None and namespace.uuid is not None:
            want = namespace_uuid(reader.manifest_digest)
            if namespace.uuid != want:
                raise IntegrityError(f"{path}: namespace UUID {namespace.uuid} does not belong to the volume it "
                                     f"holds (manifest {reader.manifest_digest} needs {want})")
        trusted.verify(reader.manifest_document, what=f"manifest in volume {path}")
    except BaseException:
        f.close()
        raise
    return OpenVolume(str(path), f, reader, namespace)


Candidates = Callable[[], Iterable[tuple[str, Namespace | None]]]
PATH_STATES = ("live", "unreachable", "nothing-offered", "disabled")


class NvmeMetrics:
    """The NVMe path on the node's /metrics: `pifarm_nvme_path{state}` (1 for the current
    state), volumes served, corrupt blobs seen (served by the next source instead)."""

    def __init__(self, registry):
        from prometheus_client import Gauge

        self.path = Gauge("pifarm_nvme_path", "NVMe path state of the nvme-kernel source (1 = current)",
                          ["state"], registry=registry)
        self.volumes = Gauge("pifarm_nvme_volumes", "Model volumes served from NVMe block devices", registry=registry)
        self.corrupt = Gauge("pifarm_nvme_corrupt_blobs", "Blobs an NVMe volume delivered corrupt", registry=registry)

    def update(self, state: str, volumes: int, corrupt: int) -> None:
        for s in PATH_STATES:
            self.path.labels(s).set(1 if s == state else 0)
        self.volumes.set(volumes)
        self.corrupt.set(corrupt)


class BlockDeviceSource:
    """Serves blobs from every trusted volume it can see; see the module text."""

    name = NAME

    def __init__(self, trusted: TrustedKeys, candidates: Candidates, *, attacher: KernelAttacher | None = None,
                 index: NamespaceIndex | None = None, status_path: Path | None = None, read_timeout: float = 10.0,
                 direct: bool = True, self_check: bool = True, rediscover_interval: float = 30.0,
                 namespace_wait: float = 5.0):
        self.trusted = trusted
        self._candidates = candidates
        self.attacher = attacher
        self.index = index
        self.status_path = status_path
        self.read_timeout = read_timeout
        self.direct = direct
        self.self_check = self_check
        self.rediscover_interval = rediscover_interval
        self.namespace_wait = namespace_wait
        self._lock = threading.RLock()
        self._open: dict[str, OpenVolume] = {}
        self._blobs: dict[str, OpenVolume] = {}
        self.problems: dict[str, str] = {}  # device -> why it is not served
        self.corrupt: dict[str, str] = {}  # blob digest -> which volume failed verification
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.served = 0  # blobs streamed completely (tests, bench)
        self.metrics: NvmeMetrics | None = None
        #: called (in its own thread) with (name, version) when a volume delivers a corrupt blob:
        #: the aggregator then re-verifies and rebuilds it (issue 11); once per volume per process
        self.on_corrupt: Callable[[str, int], None] | None = None
        self._reported: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ state
    @property
    def path_state(self) -> str:
        """live | unreachable | nothing-offered | disabled (for node.json `paths["nvme"]`)."""
        if self.attacher is None:
            return LIVE if self._open else DISABLED
        return self.attacher.last.state

    def status(self) -> dict:
        with self._lock:
            a = self.attacher
            return {
                "path": self.path_state,
                "target": f"{a.s.address}:{a.s.port}" if a else None,
                "hostnqn": a.identity.hostnqn if a else None,
                "controllers": dict(a.last.controllers) if a else {},
                "error": a.last.error if a else "",
                "volumes": [v.describe() for v in self._open.values()],
                "problems": dict(self.problems),
                "corrupt": dict(self.corrupt),
            }

    def _write_status(self) -> None:
        if self.metrics is not None:
            self.metrics.update(self.path_state, len(self._open), len(self.corrupt))
        if self.status_path is None:
            return
        try:
            atomic_write_json(self.status_path, self.status())
        except OSError as e:
            log.warning("cannot write %s: %s", self.status_path, e)

    # ------------------------------------------------------------------ volumes
    def refresh(self) -> list[dict]:
        """Open new candidates, drop vanished ones; returns the volumes now served."""
        with self._lock:
            seen = set()
            for path, ns in self._candidates():
                seen.add(path)
                if path in self._open:
                    continue
                try:
                    vol = open_volume(path, self.trusted, ns, direct=self.direct, read_timeout=self.read_timeout)
                except (IntegrityError, SignatureError) as e:
                    if self.problems.get(path) != str(e):
                        log.error("not serving %s: %s", path, e)
                    self.problems[path] = str(e)
                    continue
                except PifarmError as e:
                    self.problems[path] = str(e)
                    continue
                self.problems.pop(path, None)
                self._open[path] = vol
                for _p, digest, _o, _s in vol.reader.entries:
                    self._blobs.setdefault(digest, vol)
                m = vol.reader.manifest
                log.info("serving %s v%d from %s", m.name, m.version, path)
            for path in set(self._open) - seen:
                self._drop(path)
            for path in set(self.problems) - seen:
                self.problems.pop(path, None)
            self._write_status()
            return [v.describe() for v in self._open.values()]

    def _drop(self, path: str) -> None:
        vol = self._open.pop(path)
        for d in [d for d, v in self._blobs.items() if v is vol]:
            del self._blobs[d]
            other = next((o for o in self._open.values() if _has(o, d)), None)
            if other is not None:
                self._blobs[d] = other
        vol.file.close()

    def _find(self, ref: BlobRef) -> OpenVolume:
        with self._lock:
            vol = self._blobs.get(ref.digest)
            if vol is None:
                self.refresh()
                vol = self._blobs.get(ref.digest)
        # The metadata long-poll can announce a version a moment before the target's namespace
        # event reaches us: while the path is live, give the namespace a short while to appear.
        end = time.monotonic() + (self.namespace_wait if self.attacher is not None and self.path_state == LIVE else 0)
        while vol is None and time.monotonic() < end and not self._stop.is_set():
            self._stop.wait(0.1)
            with self._lock:
                vol = self._blobs.get(ref.digest)
                if vol is None and (self.index is None or self.index._thread is None):
                    self.refresh()  # no uevents to trigger it
                    vol = self._blobs.get(ref.digest)
        if vol is None:
            raise SourceError(f"no attached NVMe volume holds blob {ref.digest} (nvme path {self.path_state}; "
                              f"{len(self._open)} volume(s) attached)", NAME)
        return vol

    # ------------------------------------------------------------------ Source
    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        if ref.digest in self.corrupt:
            raise SourceError(f"blob {ref.digest}: {self.corrupt[ref.digest]}", NAME)
        vol = self._find(ref)
        off, size = vol.reader.extent(ref.digest)
        if size != ref.size:
            raise SourceError(f"blob {ref.digest}: volume {vol.path} says {size} bytes, manifest {ref.size}", NAME)
        check = StreamVerifier(ref, f"{NAME}:{vol.path}") if self.self_check and start == 0 else None
        pos = start
        try:
            for data in vol.file.stream(off + start, size - start):
                if check is not None:
                    check.update(data)
                pos += len(data)
                yield data
        except SourceError:
            self._forget_if_gone(vol)
            raise
        if pos != size:
            raise SourceError(f"{vol.path}: short read at {off + pos} ({pos - start} of {size - start} bytes)", NAME)
        if check is not None:
            try:
                check.finish()
            except IntegrityError as e:
                self._mark_corrupt(vol, ref, e)
                return
        self.served += 1

    def _mark_corrupt(self, vol: OpenVolume, ref: BlobRef, e: IntegrityError) -> None:
        m = vol.reader.manifest
        why = f"corrupt volume {vol.path} ({m.name} v{m.version}, manifest {vol.reader.manifest_digest}): {e}"
        log.error("%s; the next source serves it", why)
        with self._lock:
            self.corrupt[ref.digest] = why
            self._write_status()
            key = (m.name, m.version)
            report = self.on_corrupt if key not in self._reported else None
            self._reported.add(key)
        if report is not None:
            threading.Thread(target=report, args=key, name="pifarm-report-corrupt", daemon=True).start()

    def _forget_if_gone(self, vol: OpenVolume) -> None:
        if not os.path.exists(vol.path):
            with self._lock:
                if self._open.get(vol.path) is vol:
                    self._drop(vol.path)
                    self._write_status()

    # ------------------------------------------------------------------ background attach
    def start(self) -> None:
        """Start the uevent watcher and the attach loop (when this source attaches itself)."""
        if self.index is not None:
            try:
                self.index.start()
                self.index.add_listener(lambda _action, _ns: self.refresh())
            except (OSError, ImportError) as e:
                log.warning("no uevents (%s); new namespaces are found on each attach round", e)
        if self.attacher is not None and self._thread is None:
            self._thread = threading.Thread(target=self._attach_loop, name="nvme-attach", daemon=True)
            self._thread.start()
        else:
            self.refresh()

    def _attach_loop(self) -> None:
        assert self.attacher is not None
        backoff = Backoff(0.5, 30.0)
        while not self._stop.is_set():
            before = self.attacher.last.state
            try:
                res = self.attacher.attach_once()
            except PifarmError as e:  # nvme-cli missing or stuck: report, retry later
                log.warning("nvme attach round failed: %s", e)
                res = None
            if self.index is not None and self.index._thread is None:
                self.index.scan()
            self.refresh()
            state = res.state if res else "unreachable"
            if state != before:
                log.warning("nvme path %s: %s%s", f"{self.attacher.s.address}:{self.attacher.s.port}", state,
                            f" ({res.error})" if res and res.error else "")
            if state == LIVE:
                backoff.reset()
                delay = self.rediscover_interval
            else:
                delay = backoff.next_delay()
            self._stop.wait(delay)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.index is not None:
            self.index.stop()
        with self._lock:
            for path in list(self._open):
                self._drop(path)


def _has(vol: OpenVolume, digest: str) -> bool:
    try:
        vol.reader.extent(digest)
        return True
    except PifarmError:
        return False


def _secret(options: NvmeKernelOptions, key: str) -> str:
    if getattr(options, key):
        return getattr(options, key).strip()
    path = getattr(options, f"{key}_file")
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"[[sources]] nvme-kernel: cannot read {key}_file {path}: {e.strerror}") from e


def corruption_reporter(url: str, tls=None) -> Callable[[str, int], None]:
    """POST /v1/volumes/{name}/{version}/corrupt to the aggregator, best effort (the cache never
    depends on it: the blob comes from the next source either way)."""
    def report(name: str, version: int) -> None:
        from pifarm.client.http import AggregatorClient

        try:
            with AggregatorClient(url, tls=tls, timeout=10.0, source=NAME) as c:
                c._request("POST", f"/v1/volumes/{name}/{version}/corrupt", f"report {name} v{version} corrupt",
                           ok=(202,))
            log.warning("reported %s v%d's NVMe volume corrupt to %s (it re-verifies and rebuilds it)", name, version, url)
        except Exception as e:
            log.warning("could not report %s v%d's corrupt volume to %s: %s", name, version, url, e)
    return report


def make_source(spec, ctx) -> BlockDeviceSource:
    """Factory for `[[sources]] kind = "nvme-kernel"` (see pifarm.initiator.chain).

    options: pifarm.initiator.settings.NvmeKernelOptions.
    """
    o = spec.typed_options(NvmeKernelOptions)
    status = Path(ctx.state_dir) / STATUS_FILE if getattr(ctx, "state_dir", None) else None
    common = dict(status_path=status, read_timeout=float(o.read_timeout), namespace_wait=float(o.namespace_wait),
                  direct=o.direct_io, rediscover_interval=float(o.rediscover_interval))
    volumes = [str(p) for p in o.volumes]
    if volumes and not spec.address:
        src = BlockDeviceSource(ctx.trusted, lambda: [(p, None) for p in volumes if os.path.exists(p)], **common)
        src.refresh()
        return src
    if not spec.address:
        raise ConfigError("[[sources]] nvme-kernel: set address = \"HOST:PORT\" (the aggregator's NVMe/TCP port) "
                          "or options.volumes")
    if not os.path.exists(FABRICS_DEV):
        raise SourceError(f"this kernel has no NVMe over Fabrics ({FABRICS_DEV} missing): `modprobe nvme-tcp`, "
                          "or use kind = \"nvme-tcp-userspace\"", NAME)
    host, port = parse_address(spec.address)
    identity = ensure_identity(getattr(ctx, "host_identity_path", None))
    try:
        settings = AttachSettings(
            address=host, port=port, subsystems=tuple(o.subsystems),
            ctrl_loss_tmo=o.ctrl_loss_tmo, reconnect_delay=o.reconnect_delay, fast_io_fail_tmo=o.fast_io_fail_tmo,
            dhchap_secret=_secret(o, "dhchap_secret"), dhchap_ctrl_secret=_secret(o, "dhchap_ctrl_secret"),
            command_timeout=float(o.command_timeout), nvme=o.nvme,
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[[sources]] nvme-kernel: {e}") from e
    sys_root = o.sys_root
    attacher = KernelAttacher(settings, identity, sys_root=sys_root)
    index = NamespaceIndex(sys_root, o.dev_root)
    ours = lambda: {c for c in attacher.controllers().keys()}  # noqa: E731

    def candidates() -> list[tuple[str, Namespace | None]]:
        subs = ours()
        return [(str(ns.dev), ns) for ns in index.namespaces() if ns.subsysnqn in subs and ns.dev.exists()]

    src = BlockDeviceSource(ctx.trusted, candidates, attacher=attacher, index=index, **common)
    if getattr(ctx, "aggregator_url", ""):
        src.on_corrupt = corruption_reporter(ctx.aggregator_url, getattr(ctx, "tls", None))
    registry = getattr(getattr(ctx, "metrics", None), "registry", None)
    if registry is not None:
        try:
            src.metrics = NvmeMetrics(registry)
        except ValueError:  # a second nvme-kernel source in one registry: the first one reports
            pass
    src.start()
    return src
