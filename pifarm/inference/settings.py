"""Settings of the inference server: `[inference]` plus one `[inference.models.<name>]` table each.

    [inference]
    runtime = "auto"            # auto | ai-edge-litert | tflite-runtime
    max_body = 16777216
    grpc_listen = ""            # gRPC endpoint; "" = the HTTP host, HTTP port + 1 (8081); "off" = none
    token_file = "/etc/pifarm/inference-token"   # (or token = "...") repository load/unload need it
    tls_cert = ""               # with tls_key: both endpoints speak TLS; with tls_client_ca, mTLS
    [inference.defaults]        # applies to every model
    num_threads = 1
    [inference.models.mobilenet]   # a table per model makes it "configured": /health waits for it;
                                   # with no tables, every model with an active ref is served
    num_threads = 2
    max_batch = 8
    max_delay_ms = 2.0
    delegate = "/usr/lib/libai_hat_delegate.so"
    delegate_options = {device = "0"}

The per-model tables are converted here (not by the role loader) because model names are data,
not fields; the same checks apply and errors name the key, the type wanted and the value seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pifarm.errors import ConfigError

RUNTIMES = ("auto", "ai-edge-litert", "tflite-runtime")
BATCHING = ("auto", "on", "off")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelSettings:
    """How one model runs. Defaults suit a Pi 5 (4 cores) serving one or two small models."""

    num_threads: int = 1
    delegate: str | None = None               # path or name of a delegate library (load_delegate)
    delegate_options: dict[str, str] = field(default_factory=dict)
    batching: str = "auto"                     # auto: batch only where calibration shows a gain
    max_batch: int = 8
    max_delay_ms: float = 2.0
    # The rule of thumb: gather a batch only when at least `batch_min_queue` requests wait and
    # their mean wait so far is under `batch_max_mean_wait_ms`; a lone request never waits.
    batch_min_queue: int = 1
    batch_max_mean_wait_ms: float = 5.0
    min_workers: int = 1
    max_workers: int = 2
    idle_seconds: float = 10.0                 # a worker above min_workers exits after this idle time
    queue_limit: int = 256                     # requests beyond this get 503 rather than unbounded waits
    max_rows: int = 256                        # rows one request may carry (a batchable model); more is 400
    warmup: bool = True

    def __post_init__(self) -> None:
        _check(self.batching in BATCHING, f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        for k in ("num_threads", "max_batch", "min_workers", "max_workers", "queue_limit", "batch_min_queue", "max_rows"):
            v = getattr(self, k)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{k} must be an integer >= 1, got {v!r}")
        for k in ("max_delay_ms", "batch_max_mean_wait_ms", "idle_seconds"):
            v = getattr(self, k)
            _check(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f"{k} must be a number >= 0, got {v!r}")
        _check(self.min_workers <= self.max_workers,
               f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})")
        _check(self.delegate is None or (isinstance(self.delegate, str) and self.delegate != ""),
               f"delegate must be a library path or name, got {self.delegate!r}")
        _check(isinstance(self.delegate_options, dict), f"delegate_options must be a table, got {self.delegate_options!r}")
        object.__setattr__(self, "delegate_options", {str(k): str(v) for k, v in self.delegate_options.items()})

    @classmethod
    def from_table(cls, name: str, table: Any) -> "ModelSettings":
        where = f"[inference.models.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table, got {table!r}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]}; known keys: {', '.join(sorted(known))}")
        kwargs = dict(table)
        for k in ("max_delay_ms", "batch_max_mean_wait_ms", "idle_seconds"):
            if isinstance(kwargs.get(k), int) and not isinstance(kwargs.get(k), bool):
                kwargs[k] = float(kwargs[k])
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e


@dataclass(frozen=True)
class InferenceSettings:
    runtime: str = "auto"
    models: dict[str, Any] = field(default_factory=dict)  # raw [inference.models.<name>] tables
    defaults: dict[str, Any] = field(default_factory=dict)  # [inference.defaults]: applies to every model
    trusted_keys: list[str] = field(default_factory=list)  # if set, manifests must carry a trusted signature
    max_body: int = 16 * 1024 * 1024
    state_poll_seconds: float = 2.0                     # fallback rescan when a filesystem event is missed
    retry_failed_seconds: float = 30.0                  # a refused version is retried after this (cache repair)
    grpc_listen: str = ""                               # "" = HTTP host, HTTP port + 1; "off" = no gRPC endpoint
    token: str = ""                                     # Bearer token for repository writes (load/unload)
    token_file: str = ""                                # ...or a file holding it
    tls_cert: str = ""                                  # PEM certificate chain of both endpoints
    tls_key: str = ""
    tls_client_ca: str = ""                             # set: clients must present a certificate it signed (mTLS)
    max_connections: int = 256                          # HTTP connections at once; beyond it uvicorn answers 503

    def __post_init__(self) -> None:
        _check(isinstance(self.max_connections, int) and self.max_connections >= 1,
               f"[inference] max_connections must be an integer >= 1, got {self.max_connections!r}")
        _check(self.runtime in RUNTIMES, f"[inference] runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        _check(isinstance(self.max_body, int) and self.max_body >= 1024,
               f"[inference] max_body must be at least 1024 bytes, got {self.max_body!r}")
        _check(self.state_poll_seconds > 0, "[inference] state_poll_seconds must be > 0")
        _check(bool(self.tls_cert) == bool(self.tls_key), "[inference] tls_cert and tls_key go together")
        _check(not self.tls_client_ca or bool(self.tls_cert), "[inference] tls_client_ca needs tls_cert and tls_key")
        if self.grpc_listen not in ("", "off"):
            host, sep, port = self.grpc_listen.rpartition(":")
            _check(bool(sep) and port.isdigit() and int(port) <= 65535,
                   f"[inference] grpc_listen must be HOST:PORT, \"\" or \"off\", got {self.grpc_listen!r}")
        # Validate every per-model table now, so a typo fails at startup and not at first load.
        ModelSettings.from_table("defaults", self.defaults)
        for name in self.models:
            self.for_model(name)

    @property
    def configured(self) -> list[str]:
        return sorted(self.models)

    def grpc_address(self, http_host: str, http_port: int) -> tuple[str | None, bool]:
        """(where the gRPC endpoint listens, "host:port" with IPv6 in brackets, or None when off;
        whether it was asked for explicitly). The default is the HTTP host and the next port
        (8081 beside the default 8080), so several servers on one machine do not collide."""
        if self.grpc_listen == "off":
            return None, False
        if self.grpc_listen:
            host, _, port = self.grpc_listen.rpartition(":")
            host, explicit = host.strip("[]") or "0.0.0.0", True
        else:
            host, port, explicit = http_host, str(http_port + 1 if http_port else 0), False
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), explicit

    def write_token(self) -> str | None:
        """The Bearer token repository writes need (None: none configured)."""
        if self.token:
            return self.token
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    return f.read().strip() or None
            except OSError as e:
                raise ConfigError(f"[inference] token_file {self.token_file}: {e.strerror}") from e
        return None

    def for_model(self, name: str) -> ModelSettings:
        table = dict(self.defaults)
        table.update(self.models.get(name) or {})
        return ModelSettings.from_table(name, table)
