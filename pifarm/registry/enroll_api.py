"""The enrollment endpoints of the aggregator: a FastAPI router over `pifarm.pki.enrollment`.

A node presents a one-time enrollment token (`pifarm enroll token create`), sends a CSR and its
host identity, and gets back a client certificate for mTLS plus its host registration.

    GET  /v1/enroll/ca       the CA bundle (nodes pin it by hash before sending the token)
    POST /v1/enroll          {secret (the token), hostnqn, hostid, hostname, csr} -> certificate, ...
                             403 bad/used/expired token, 409 NQN held by a live certificate
    POST /v1/enroll/renew    {certificate, csr, proof} -> a fresh certificate from the current CA
                             (403 unless the certificate is on record and not revoked)
"""

from __future__ import annotations

import os
from typing import Any, Callable

from pydantic import BaseModel, Field

from pifarm.errors import Conflict, Forbidden, IntegrityError, UsageError
from pifarm.pki.certs import BUNDLE, CA_KEY, CLIENT_DAYS, HostRecord
from pifarm.pki.enrollment import Enrollment
from pifarm.pki.settings import EnrollSettings


def enroll_listen(settings: EnrollSettings, api_listen: str) -> tuple[str, int]:
    from pifarm.listen import parse_listen

    if settings.listen:
        return parse_listen(settings.listen)
    host, port = parse_listen(api_listen)
    return host, (port + 1 if port else 0)


class EnrollBody(BaseModel):
    secret: str = Field(max_length=256)
    hostnqn: str = Field(max_length=223)
    hostid: str = Field(max_length=64)
    hostname: str = Field(max_length=63)
    csr: str = Field(max_length=16384)


class RenewBody(BaseModel):
    certificate: str = Field(max_length=16384)
    csr: str = Field(max_length=16384)
    proof: str = Field(max_length=1024)


def enroll_router(data_dir: str | os.PathLike, *, cert_days: int = CLIENT_DAYS,
                  register_host: Callable[[HostRecord], str | None] | None = None):
    """The enrollment endpoints as a FastAPI router; mount it on the aggregator app."""
    from fastapi import APIRouter, HTTPException
    from fastapi.responses import Response

    from pifarm.errors import PifarmError

    enr = Enrollment(data_dir, cert_days=cert_days, register_host=register_host)
    router = APIRouter(tags=["enroll"])

    def _http(e: PifarmError) -> HTTPException:
        # refused (bad token, revoked or unknown certificate) 403; taken NQN 409; bad input 400;
        # anything else is ours (a CA file we cannot read): 503
        if isinstance(e, (IntegrityError, Forbidden)):
            return HTTPException(403, str(e))
        if isinstance(e, (UsageError, Conflict)):
            return HTTPException(e.http_status, str(e))
        return HTTPException(503, str(e))

    def _unavailable() -> HTTPException:
        return HTTPException(404, "enrollment is not set up on this aggregator; run `pifarm setup aggregator`")

    @router.get("/v1/enroll/ca", response_class=Response)
    def enroll_ca():
        if not (enr.pki / BUNDLE).is_file():
            raise _unavailable()
        return Response(enr.bundle_pem(), media_type="application/x-pem-file")

    @router.post("/v1/enroll")
    def enroll(body: EnrollBody) -> dict[str, Any]:
        if not enr.enabled():
            raise _unavailable()
        try:  # a one-time token (or the legacy fleet secret) is checked and spent inside
            return enr.enroll(body.secret, body.hostnqn, body.hostid, body.hostname, body.csr)
        except PifarmError as e:
            raise _http(e) from e

    @router.post("/v1/enroll/renew")
    def renew(body: RenewBody) -> dict[str, Any]:
        if not (enr.pki / CA_KEY).is_file():
            raise _unavailable()
        try:
            return enr.renew(body.certificate, body.csr, body.proof)
        except PifarmError as e:
            raise _http(e) from e

    return router


def enroll_app(data_dir: str | os.PathLike, **kwargs):
    """A FastAPI app with only the enrollment routes: served on the enrollment listener, where
    nodes that have no client certificate yet may connect (server TLS only)."""
    from fastapi import FastAPI

    app = FastAPI(title="pifarm enrollment", docs_url=None, redoc_url=None)
    app.include_router(enroll_router(data_dir, **kwargs))
    return app


def enrollment_server(data_dir: str | os.PathLike, host: str, port: int, *, certfile: str, keyfile: str,
                      register_host: Callable[[HostRecord], str | None] | None = None, log_level: str = "warning"):
    """A uvicorn.Server for the enrollment listener (server TLS only: the nodes calling it have no
    client certificate yet). The aggregator runs it beside its mTLS API; `await server.serve()`.
    A QuietServer: no 10 Hz tick while no node enrolls (issue 19); `wake()` after `should_exit`."""
    import uvicorn

    from pifarm.asgiserver import QuietServer

    config = uvicorn.Config(enroll_app(data_dir, register_host=register_host), host=host, port=port,
                            ssl_certfile=certfile, ssl_keyfile=keyfile, log_level=log_level, access_log=False,
                            lifespan="off")
    return QuietServer(config)
