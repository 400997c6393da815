"""Settings of the aggregator's registry side: `[store]`, `[api]` and `[registry]` sections.

Frozen dataclasses filled by the config loader (`appliance.config`); defaults make
`pifarm aggregator run --data-dir D` work with nothing else configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pifarm.errors import ConfigError
from pifarm.s3.bucket import parse_url
from pifarm.listen import parse_listen

DEFAULT_PORT = 8470


@dataclass(frozen=True)
class StoreSettings:
    #: "" or "file" = the filesystem store under <data_dir>/store; "file:///path" = elsewhere;
    #: "s3://bucket/prefix" = S3 (credentials from the standard AWS variables and files)
    url: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    #: create the bucket (with versioning) when it does not exist
    create_bucket: bool = True
    #: read every uploaded blob back and re-hash it before the manifest refers to it
    verify_uploads: bool = True
    #: seconds between store reachability checks (read-only mode enters and leaves on these)
    check_interval: float = 5.0
    connect_timeout: float = 5.0
    #: several aggregators on this S3 store: "auto" = the bucket is the commit point when the
    #: endpoint honours conditional writes (single-writer otherwise, with a warning); "yes" =
    #: refuse to start without them; "no" = single-writer (SQLite is the commit point)
    shared: Literal["auto", "yes", "no"] = "auto"

    def __post_init__(self) -> None:
        u = self.url
        if u not in ("", "file") and not u.startswith(("file://", "s3://")):
            raise ConfigError(f"[store] url {u!r}: expected \"\", \"file:///path\" or \"s3://bucket/prefix\"")
        if u.startswith("s3://") and not parse_url(u)[0]:
            raise ConfigError(f"[store] url {u!r} names no bucket (expected s3://bucket/prefix)")

    @property
    def kind(self) -> str:
        return "s3" if self.url.startswith("s3://") else "fs"


@dataclass(frozen=True)
class ApiSettings:
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    #: bearer token for writes; when unset the token in <data_dir>/api-token is used (created 0600)
    token: str | None = None
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: client CA: when set, clients must present a certificate signed by it (mTLS)
    tls_client_ca: str | None = None
    max_upload: int = 4 * 2**30
    wait_default: int = 60
    wait_max: int = 300
    #: connections at once (parked long-polls included); beyond it uvicorn answers 503
    max_connections: int = 16384

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.max_connections < 1:
            raise ConfigError("[api] max_connections must be at least 1", key="api.max_connections",
                              expected="a positive integer")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("[api] tls_cert and tls_key must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("[api] tls_client_ca needs tls_cert and tls_key (mTLS runs over TLS)")
        if self.max_upload <= 0:
            raise ConfigError("[api] max_upload must be a positive number of bytes")
        if not 0 <= self.wait_default <= self.wait_max:
            raise ConfigError("[api] wait_default must lie between 0 and wait_max")


@dataclass(frozen=True)
class RegistrySettings:
    data_dir: str = "/var/lib/pifarm/aggregator"
    #: the signing key file ("" = <data_dir>/keys/signing.key, created when missing); every
    #: aggregator on one shared bucket must use the same key
    signing_key: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"  # `pifarm --log-level` wins
    #: how long a signed snapshot stays valid; it is re-signed (new revision) at half-life
    snapshot_lifetime: int = 7 * 24 * 3600
    #: blobs staged by an upload are kept this long for the publish that refers to them
    upload_grace: int = 3600
    #: shared bucket: a blob no revision ever committed (an upload a crash abandoned, possibly
    #: another aggregator's) is collected once it is this old by the bucket's clock
    orphan_grace: int = 24 * 3600

    def __post_init__(self) -> None:
        if self.orphan_grace < self.upload_grace:
            raise ConfigError(f"[registry] orphan_grace ({self.orphan_grace} s) must be at least upload_grace "
                              f"({self.upload_grace} s): an upload waiting for its publish is not an orphan",
                              key="registry.orphan_grace", expected=f"an integer >= {self.upload_grace}")
