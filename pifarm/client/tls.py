"""The one client TLS context builder: what every pifarm HTTP client passes as httpx `verify=`."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from pifarm.errors import ConfigError

Pathish = str | os.PathLike


def tls_context(ca: Pathish = "", cert: Pathish = "", key: Pathish = "", *, cadata: str | None = None,
                hint: str = "") -> ssl.SSLContext | None:
    """Trust `ca` (a CA bundle file) or `cadata` (PEM text), else the system CAs, and for mTLS
    present `cert` with `key`. None when nothing is given: the caller keeps httpx's defaults.
    A missing or unusable file is a ConfigError; `hint` says where it was configured."""
    ca, cert, key = (str(p) if p else "" for p in (ca, cert, key))
    if not (ca or cert or cadata):
        return None
    for p in (ca, cert, key):
        if p and not Path(p).is_file():
            raise ConfigError(f"TLS file {p} does not exist{hint}")
    try:
        ctx = ssl.create_default_context(cafile=ca or None, cadata=cadata)
        if cert:
            ctx.load_cert_chain(cert, key or None)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(f"TLS files ca={ca!r} cert={cert!r} key={key!r} are not usable: {e}{hint}") from e
    return ctx
