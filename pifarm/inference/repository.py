"""The model repository extension (Triton's shape), over the node's verified cache.

    index(ready_only)        every model in the cache, each cached version with its state:
                             READY (served) | LOADING | UNAVAILABLE (cached, not served: reason)
    load(name)               serve the model's active cached version again (verified, as every
                             load is) and return once it serves, or raise why it cannot
    unload(name)             stop serving it: new requests get 503, in-flight ones finish; the
                             rescan leaves it alone and readiness stops waiting for it

The repository *is* the cache: nothing here fetches from the network (the node daemon keeps
the cache current). Writes (load, unload) need the configured Bearer token, or a client that
passed mTLS (`tls_client_ca` makes both endpoints require a client certificate).
"""

from __future__ import annotations

import hmac
from typing import Any

from pifarm.errors import Forbidden, NotFound, Unauthorized
from pifarm.inference.manager import ModelManager


class Repository:
    def __init__(self, manager: ModelManager, token: str | None, mtls: bool):
        self.manager = manager
        self._token = token
        self._mtls = mtls

    def authorize(self, authorization: str | None) -> None:
        """Refuse a write without the token (401 absent, 403 wrong) unless every client is mTLS-verified."""
        if self._mtls:
            return
        if self._token is None:
            raise Forbidden("repository writes are disabled: set [inference] token / token_file, or mTLS "
                            "(tls_client_ca)")
        if not authorization:
            raise Unauthorized("repository writes need Authorization: Bearer <token>")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise Forbidden("wrong token for repository writes")

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        m = self.manager
        try:
            cached = m.layout.models()
        except OSError:
            cached = []
        health = m.health()["models"]
        out: list[dict[str, Any]] = []
        for name in sorted(set(cached) | set(m.names())):
            h = health.get(name)
            served = h["version"] if h and h["ready"] else None
            loading = bool(h and h["loading"])
            versions = m.versions(name) or ([served] if served else [])
            if not versions:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": (h or {}).get("error") or "not in the cache"})
            for v in versions:
                if v == served:
                    e = {"name": name, "version": str(v), "state": "READY", "reason": ""}
                elif m.unloaded(name):
                    e = {"name": name, "version": str(v), "state": "UNAVAILABLE", "reason": "unloaded"}
                elif loading and served is None:
                    e = {"name": name, "version": str(v), "state": "LOADING", "reason": ""}
                else:
                    why = (h or {}).get("error") if served is None else None
                    e = {"name": name, "version": str(v), "state": "UNAVAILABLE",
                         "reason": why or ("cached; not the active version" if served else "not loaded")}
                out.append(e)
        return [e for e in out if e["state"] == "READY"] if ready_only else out

    def load(self, name: str) -> None:
        self.manager.load(name)

    def unload(self, name: str) -> None:
        if not self.manager.known(name):
            raise NotFound(f"model {name!r} is not in the cache")
        self.manager.unload(name)
