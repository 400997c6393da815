"""The aggregator daemon (`pifarm aggregator run`): open the registry, build the API, serve it.

Its other parts are listed once, in `PARTS`: each is `extend(ctx: AggregatorContext) -> None`
and may subscribe to registry changes, add health providers, metrics and start/stop hooks
(called before the server starts and after it stops). Nothing is discovered: a new part is a
module here and a line in `PARTS`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from pifarm.appliance import aggregator_enroll, aggregator_target
from pifarm.appliance import aggregator_fleet
from pifarm.appliance.config import AggregatorConfig, load_aggregator_config
from pifarm.errors import PifarmError
from pifarm.listen import parse_listen
from pifarm.registry.api import create_app
from pifarm.registry.service import Registry, ensure_api_token
from pifarm.registry.settings import ApiSettings

log = logging.getLogger(__name__)


@dataclass
class AggregatorContext:
    """What each of the aggregator's `PARTS` receives."""

    registry: Registry
    config: AggregatorConfig
    data_dir: Path
    metrics_registry: CollectorRegistry
    health_providers: list[Callable[[], dict]] = field(default_factory=list)
    on_start: list[Callable[[], None]] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    #: called with each newly enrolled node's HostRecord (the target side allows its host NQN)
    register_host: Callable[[Any], Any] | None = None
    #: FastAPI routers a part adds to the API: (router, what it is, for the log if it cannot mount)
    routers: list[tuple[Any, str]] = field(default_factory=list)


#: the aggregator's parts besides the registry API, in start order
PARTS: tuple[Callable[[AggregatorContext], None], ...] = (aggregator_enroll.extend, aggregator_target.extend)


def uvicorn_ssl_kwargs(api: ApiSettings) -> dict[str, Any]:
    """TLS for uvicorn from [api]: cert+key serve HTTPS; a client CA requires client certificates."""
    if not api.tls_cert:
        return {}
    kw: dict[str, Any] = {"ssl_certfile": api.tls_cert, "ssl_keyfile": api.tls_key}
    if api.tls_client_ca:
        kw.update(ssl_ca_certs=api.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return kw


def _server_class():
    from pifarm.asgiserver import QuietServer

    class Server(QuietServer):  # no 10 Hz tick: an idle aggregator's server sleeps (issue 19)
        async def shutdown(self, sockets=None):
            # answer parked long-polls before uvicorn waits for (and then cancels) them
            begin = getattr(self.config.app.state, "begin_shutdown", None) if hasattr(self.config.app, "state") else None
            if begin is not None:
                begin()
            await super().shutdown(sockets=sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises SIGTERM after a graceful stop (exit -15); a clean stop exits 0 here
            prev = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in prev.items():
                    signal.signal(s, h)

    return Server


def _enroll_router(d: Path, ctx: AggregatorContext):
    from pifarm.registry.enroll_api import enroll_router

    return enroll_router(d, cert_days=ctx.config.enroll.cert_days, register_host=ctx.register_host)


def _include(app, router, what: str) -> None:
    """Mount an extension's router. A router whose schema cannot be generated must not turn
    /openapi.json into a 500: it is then mounted outside the schema (its routes still work)."""
    before = len(app.router.routes)
    app.include_router(router)
    app.openapi_schema = None
    try:
        app.openapi()
    except Exception as e:
        del app.router.routes[before:]
        app.include_router(router, include_in_schema=False)
        log.warning("%s left out of /openapi.json: its schema cannot be generated (%s)", what,
                    str(e).splitlines()[0][:160])
    app.openapi_schema = None


def _check_listen(host: str, port: int) -> None:
    """Fail with one clear line before start-up when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PifarmError(f"aggregator cannot listen on {host}:{port}: {e.strerror or e} "
                              "(another process there? set [api] listen or --listen)") from e


def run(config=None, data_dir=None, listen=None) -> int:
    import uvicorn

    from pifarm.appliance import loglevel, threaddump
    from pifarm.cache.metrics import add_process_collectors

    threaddump.install()  # `kill -USR1` dumps every thread's stack (as `node run` does)
    cfg = load_aggregator_config(config, data_dir=data_dir, listen=listen)
    loglevel.daemon(cfg.registry.log_level)
    api = cfg.api
    host, port = parse_listen(api.listen)
    _check_listen(host, port)
    d = Path(cfg.registry.data_dir)
    registry = Registry.open(d, cfg)
    try:
        token = ensure_api_token(d, api)
        metrics = CollectorRegistry()
        add_process_collectors(metrics)  # process_* and python_gc_* beside the registry's own
        ctx = AggregatorContext(registry, cfg, d, metrics)
        for extend in PARTS:
            extend(ctx)
        app = create_app(registry, api, token=token, health_providers=ctx.health_providers,
                         metrics_registry=ctx.metrics_registry)
        _include(app, _enroll_router(d, ctx), "enrollment routes (pifarm.registry.enroll_api)")
        for router, what in ctx.routers:
            _include(app, router, what)
        fleet = aggregator_fleet.mount(app, ctx, token)
        if cfg.haproxy.socket:  # [haproxy]: this aggregator keeps an HAProxy in step with the fleet
            from pifarm.appliance import aggregator_haproxy

            aggregator_haproxy.mount(app, ctx, fleet)
        server = _server_class()(uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=3,
            access_log=False, limit_concurrency=api.max_connections, **uvicorn_ssl_kwargs(api),
            **aggregator_fleet.uvicorn_kwargs(api)))
        if api.tls_client_ca:  # client certificates are checked against the farm's CRL (pifarm enroll revoke)
            from pifarm.pki.revocation import install_uvicorn

            install_uvicorn(server.config, d, certfile=api.tls_cert, keyfile=api.tls_key, client_ca=api.tls_client_ca)
        try:
            for hook in ctx.on_start:
                hook()
            scheme = "https" if api.tls_cert else "http"
            log.info("pifarm aggregator: %s://%s:%d data dir %s, store %s, revision %d%s", scheme, host, port,
                     d, registry.store.location, registry.revision,
                     f", READ-ONLY: {registry.read_only_reason}" if registry.read_only_reason else "")
            try:
                server.run()  # returns on SIGTERM/SIGINT
            except SystemExit:  # uvicorn exits (code 3) when it cannot bind; it logged why
                raise PifarmError(f"aggregator could not serve on {api.listen} (see the error above)") from None
        finally:
            # stop hooks run newest first even when start-up or the server failed (so they must
            # tolerate a part that never started)
            for hook in reversed(ctx.on_stop):
                try:
                    hook()
                except Exception:
                    log.exception("aggregator stop hook %r failed", hook)
        return 0 if server.started else 1
    finally:
        registry.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m pifarm.appliance.aggregator` == `pifarm aggregator run`."""
    from pifarm.appliance.cli import main as cli_main

    return cli_main(["aggregator", "run", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
