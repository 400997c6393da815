"""Settings of the node's transports and watcher ([s3], [watcher] and [[sources]] in node.toml)."""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pifarm.errors import ConfigError
from pifarm.listen import parse_listen
from pifarm.s3.bucket import parse_url
from pifarm.client.tls import tls_context

if TYPE_CHECKING:  # only an annotation: loading a config must not import cryptography
    from pifarm.signed.signing import TrustedKeys

CHANNELS = ("stable", "canary")
#: the piece server's port (TCP), on by default: in pifarm's range beside the aggregator's 8470 (API)
#: and 8471 (enrollment), clear of the node's 8080/8081 (inference REST/gRPC), HAProxy's 8000 and
#: NVMe/TCP's 4420 (a node may run beside an aggregator)
PIECE_PORT = 8472


@dataclass(frozen=True)
class S3Settings:
    url: str = ""  # s3://bucket/prefix of the registry's S3 mirror; "" = no S3
    endpoint_url: str = ""  # e.g. http://127.0.0.1:8333 for SeaweedFS; "" = AWS
    region: str = "us-east-1"
    part_size: int = 16 * 2**20  # ranged GET size (botocore costs CPU per request: not too small)
    concurrency: int = 2  # ranged GETs in flight per blob (more threads cost a small CPU more than they gain)
    connect_timeout: float = 2.0
    read_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith("s3://"):
            raise ValueError(f"url must look like s3://bucket/prefix, got {self.url!r}")
        if self.part_size < 64 * 1024:
            raise ValueError(f"part_size must be at least 64KiB, got {self.part_size}")
        if not 1 <= self.concurrency <= 64:
            raise ValueError(f"concurrency must be 1..64, got {self.concurrency}")

    @property
    def bucket(self) -> str:
        return parse_url(self.url)[0]

    @property
    def prefix(self) -> str:
        return parse_url(self.url)[1]


@dataclass(frozen=True)
class WatcherSettings:
    poll_wait: int = 60  # seconds the aggregator may hold a long-poll
    connect_timeout: float = 1.5  # short, so "both unreachable" is known well within 5 s
    rate: float = 1.0  # token bucket: metadata requests per second ...
    burst: int = 5  # ... and the burst allowed
    backoff_base: float = 0.5  # exponential backoff with full jitter between failures
    backoff_max: float = 30.0
    s3_poll_interval: float = 2.0  # S3 snapshot re-read period while the aggregator is down (<5 s: degraded promptly)

    def __post_init__(self) -> None:
        if not 0 <= self.poll_wait <= 300:
            raise ValueError(f"poll_wait must be 0..300 seconds, got {self.poll_wait}")
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError(f"backoff_base must be > 0 and at most backoff_max, got {self.backoff_base} "
                             f"and backoff_max {self.backoff_max}")


# -- `options` of each [[sources]] kind: typed like every other key of node.toml ------------------
@dataclass(frozen=True)
class HttpOptions:
    connect_timeout: float = 2.0


@dataclass(frozen=True)
class S3Options:
    """Keys of [s3] this source sets differently (None = as in [s3])."""

    endpoint_url: str | None = None
    region: str | None = None
    part_size: int | None = None
    concurrency: int | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None


@dataclass(frozen=True)
class NvmeKernelOptions:
    subsystems: tuple[str, ...] = ()  # subsystem NQNs to attach (default: every one discovery offers)
    ctrl_loss_tmo: int = 600
    reconnect_delay: int = 2
    fast_io_fail_tmo: int = -1
    dhchap_secret: str = ""
    dhchap_secret_file: str = ""
    dhchap_ctrl_secret: str = ""
    dhchap_ctrl_secret_file: str = ""
    command_timeout: float = 20.0
    read_timeout: float = 10.0
    rediscover_interval: float = 30.0
    namespace_wait: float = 5.0  # how long a namespace announced by the metadata poll is waited for
    nvme: str = "nvme"  # the nvme-cli binary
    volumes: tuple[str, ...] = ()  # volume files/devices to serve without attaching
    sys_root: str = "/sys"
    dev_root: str = "/dev"
    direct_io: bool = True


@dataclass(frozen=True)
class NvmeTcpOptions:
    subnqn: str = ""  # "" = the subsystems the discovery controller names
    hostnqn: str = ""  # "" = the node's host identity
    hdgst: bool = False
    ddgst: bool = False
    dhchap_secret: str | None = None
    timeout: float | None = None  # seconds per exchange (default: min(10, deadline))
    io_queues: int = 2
    queue_depth: int = 32
    read_ahead: int = 4
    address: str = ""  # older spelling of the entry's own `address`


@dataclass(frozen=True)
class PeerOptions:
    """`kind = "peers"`: pieces from other nodes (and the aggregator), and this node's piece server."""

    #: the piece server (peers fetch from here); "" = [node] listen's address, port PIECE_PORT
    listen: str = ""
    host: str = ""  # address peers reach this node at ("" = as the aggregator sees it)
    rack: str = ""  # switch/rack label: peers with the same label are listed first
    tracker: str = ""  # "" = the node's aggregator
    min_size: int = 16 * 2**20  # smaller blobs go to the next source (one HTTP GET is cheaper)
    downloads: int = 6  # pieces in flight for one blob
    per_peer: int = 2  # ... at most this many from one peer
    from_aggregator: int = 1  # ... and from the aggregator (pieces no peer has); 0 = peers only
    selection: str = "rarest"  # "rarest" (fewest holders first) or "random"
    max_peers: int = 30  # peers asked of the tracker
    upload_rate: float = 0.0  # bytes/s the piece server may send in all (0 = no limit but the link)
    max_connections: int = 8  # concurrent piece requests served; more get 503
    stall: float = 60.0  # seconds without a new piece before the source gives up (next source)
    #: only when the tracker lists another node for the blob (holding or fetching it); alone, the
    #: next source streams it (the default chain's way: one GET beats pieces from one aggregator)
    need_peer: bool = False
    #: "auto": mTLS between nodes when [node] tls_cert, tls_key and tls_ca are set, else the swarm
    #: token over plain HTTP; "on": mTLS or refuse to start; "off": the token only
    tls: str = "auto"

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen, key="listen")
        if self.tls not in ("auto", "on", "off"):
            raise ValueError(f"tls must be auto, on or off, got {self.tls!r}")
        if self.selection not in ("rarest", "random"):
            raise ValueError(f"selection must be rarest or random, got {self.selection!r}")
        if not (1 <= self.downloads <= 64 and 1 <= self.per_peer <= 16 and 0 <= self.from_aggregator <= 16):
            raise ValueError("downloads must be 1..64, per_peer 1..16, from_aggregator 0..16")
        if not (1 <= self.max_peers <= 50 and 1 <= self.max_connections <= 1024):
            raise ValueError("max_peers must be 1..50 and max_connections 1..1024")
        if self.upload_rate < 0 or self.min_size < 0 or self.stall <= 0:
            raise ValueError("upload_rate and min_size must be >= 0, stall > 0")


@dataclass(frozen=True)
class PeerSettings(PeerOptions):
    """[peers] in node.toml: the peer source of the default chain (no `[[sources]]` listed). On by
    default: large blobs come from peers first when another node has them, else as before."""

    enabled: bool = True
    need_peer: bool = True
    #: 12.5 MB/s (100 Mbit/s): what bench S2 measured leaving inference p99 alone on a serving node;
    #: on by default, serving must not take a node's link or CPU (TLS costs CPU per byte)
    upload_rate: float = 12_500_000.0

    def options(self) -> PeerOptions:
        return PeerOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PeerOptions)})


#: kind -> its options dataclass (the kinds the node knows; pifarm.initiator.chain has the factories)
SOURCE_OPTIONS: dict[str, type] = {"http": HttpOptions, "s3": S3Options, "nvme-kernel": NvmeKernelOptions,
                                   "nvme-tcp-userspace": NvmeTcpOptions, "peers": PeerOptions}


@dataclass(frozen=True)
class SourceSpec:
    """One `[[sources]]` entry: which transport, its deadline per blob, and where it points."""

    kind: str
    deadline: float = 60.0  # seconds one blob may take from this source before the next is tried
    url: str = ""  # http: aggregator base URL (default: the node's); s3: s3://bucket/prefix
    address: str = ""  # nvme kinds: target address "host:port"
    #: the kind's options dataclass (the config loader builds it); a plain dict is read by `typed_options`
    options: Any = field(default_factory=dict)

    def typed_options(self, cls: type) -> Any:
        """`options` as the kind's dataclass: unknown keys and wrong types are one ConfigError."""
        if isinstance(self.options, cls):
            return self.options
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(self.options) - known)
        if bad:
            raise ConfigError(f"[[sources]] {self.kind}: unknown option {bad[0]}; known: {', '.join(sorted(known))}",
                              key=bad[0])
        try:
            return cls(**self.options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[[sources]] {self.kind} options: {e}") from e

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError("each [[sources]] entry needs kind = \"http\" | \"s3\" | \"nvme-kernel\" | \"nvme-tcp-userspace\"")
        if not (isinstance(self.deadline, (int, float)) and self.deadline > 0):
            raise ValueError(f"[[sources]] {self.kind}: deadline must be a positive number of seconds")
        if not (isinstance(self.options, dict) or dataclasses.is_dataclass(self.options)):
            raise ValueError(f"[[sources]] {self.kind}: options must be a table")


@dataclass(frozen=True)
class SourceContext:
    """What every source factory may need besides its own spec."""

    trusted: TrustedKeys
    aggregator_url: str = ""
    state_dir: Path = Path("/var/lib/pifarm/node")
    cache_root: Path = Path("/var/lib/pifarm/cache")
    host_identity_path: Path | None = None  # NVMe host NQN / key file, for the nvme kinds
    s3: S3Settings = field(default_factory=S3Settings)
    metrics: Any = None  # pifarm.cache.metrics.NodeMetrics
    tls: Any = None  # ssl.SSLContext for https:// aggregator URLs (CA, mTLS client cert); None = defaults


@dataclass(frozen=True)
class NodeSettings:
    """[node] in node.toml: who the node follows and what it serves."""

    aggregator: str = ""  # http(s)://host:port of the aggregator; "" = S3 only
    #: several aggregators of one farm (one shared S3 bucket): tried in turn, the node moves to the
    #: next one on failure without going degraded; `aggregator`, when set, is tried first
    aggregators: list[str] = field(default_factory=list)
    channel: str = "stable"
    models: list[str] = field(default_factory=list)  # narrow to these models; empty = every model of the channel
    trusted_keys: list[str] = field(default_factory=list)  # PEM files of registry signing keys
    state_dir: str = "/var/lib/pifarm/node"
    listen: str = "0.0.0.0:8080"  # the inference server (KServe V2)
    metrics_listen: str = ""  # host:port for the node's own Prometheus metrics; "" = off
    host_identity: str = ""  # NVMe host identity file for the nvme source kinds
    tls_ca: str = ""  # CA bundle that signed the aggregator's certificate ("" = system CAs)
    tls_cert: str = ""  # this node's client certificate for mTLS (with tls_key)
    tls_key: str = ""
    report_interval: float = 10.0  # seconds between reports to the aggregator (and at once on a change); 0 = off
    report_token: str = ""  # this node's report token (`pifarm fleet token NODE`); not needed with mTLS
    report_token_file: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # `pifarm --log-level` wins

    def __post_init__(self) -> None:
        if not 0 <= self.report_interval <= 3600 or 0 < self.report_interval < 0.1:
            raise ValueError(f"report_interval must be 0 (off) or 0.1 to 3600 seconds, got {self.report_interval}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together (the node's mTLS client certificate and its key)")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, got {self.channel!r}")
        if self.aggregator and not self.aggregator.startswith(("http://", "https://")):
            raise ValueError(f"aggregator must be an http(s):// URL, got {self.aggregator!r}")
        for u in self.aggregators:
            if not isinstance(u, str) or not u.startswith(("http://", "https://")):
                raise ValueError(f"aggregators must be http(s):// URLs, got {u!r}")
        parse_listen(self.listen)
        if self.metrics_listen:
            parse_listen(self.metrics_listen, key="metrics_listen")

    @property
    def aggregator_urls(self) -> list[str]:
        """Every aggregator this node follows, `aggregator` first, each once."""
        out = [self.aggregator] if self.aggregator else []
        return out + [u for u in self.aggregators if u not in out]

    def tls_context(self) -> ssl.SSLContext | None:
        """What the node's clients of the aggregator pass as `verify=` (None: system CAs)."""
        return tls_context(self.tls_ca, self.tls_cert, self.tls_key, hint=" ([node] tls_ca / tls_cert / tls_key)")
