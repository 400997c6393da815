"""The aggregator's enrollment part: node enrollment.

Hands the aggregator the host-registration hook for the enrollment routes it mounts on the API
(renewal works there over mTLS) and, when the API runs
TLS with the farm PKI, a second listener with server TLS only, where nodes that have no client
certificate yet can enroll with a one-time token. An enrolled host is added to the target's host allow
list (`<data>/target/hosts.json`), with a DH-HMAC-CHAP secret wherever the kernel target has it
(`[enroll] dhchap`: unset = that; true/false force it).
"""

from __future__ import annotations

import logging
import threading

from pifarm.errors import Conflict
from pifarm.pki.certs import CA_KEY, PKI_DIR, HostRecord
from pifarm.pki.settings import EnrollSettings
from pifarm.registry.enroll_api import enroll_listen, enrollment_server

log = logging.getLogger(__name__)


def dhchap_for_hosts(ctx) -> bool:
    """Whether an enrolled host gets a DH-HMAC-CHAP secret. A host NQN is a claim anyone on the LAN
    can make (/etc/nvme/hostnqn is world-readable and travels in clear), so with `[enroll] dhchap`
    unset it is on wherever the kernel target can do it, and where it cannot, enrollment is
    refused until the operator sets `dhchap = false` knowingly."""
    settings: EnrollSettings = ctx.config.enroll
    if settings.dhchap is not None:
        return settings.dhchap
    from pifarm.appliance.target_root import kernel_target

    supported = kernel_target(ctx.config.target, ctx.data_dir).auth_supported()
    if supported is False:
        raise Conflict("this kernel's NVMe target has no DH-HMAC-CHAP (CONFIG_NVME_TARGET_AUTH): refusing to enroll "
                       "a host it would know by NQN alone; use a kernel with it (Debian 13's 6.12) or set "
                       "[enroll] dhchap = false to accept that any host claiming an enrolled NQN can read volumes")
    return bool(supported)  # None: no kernel target here, nothing for a secret to protect


def extend(ctx) -> None:
    settings: EnrollSettings = ctx.config.enroll
    if not settings.enabled:
        return

    def register_host(rec: HostRecord) -> str | None:
        from pifarm.target.hosts import HostStore

        attrs = HostStore(ctx.data_dir / "target" / "hosts.json").allow(rec.hostnqn, dhchap=dhchap_for_hosts(ctx))
        return attrs.get("dhchap_key")

    ctx.register_host = register_host  # the aggregator mounts the enrollment routes itself
    api = ctx.config.api
    if not (api.tls_cert and (ctx.data_dir / PKI_DIR / CA_KEY).is_file()):
        return
    host, port = enroll_listen(settings, api.listen)
    server = enrollment_server(ctx.data_dir, host, port, certfile=api.tls_cert, keyfile=api.tls_key,
                               register_host=register_host)
    thread = threading.Thread(target=server.run, name="pifarm-enroll", daemon=True)

    def start() -> None:
        thread.start()
        log.info("pifarm enrollment listener: https://%s:%d (server TLS, one-time enrollment tokens)", host, port)

    def stop() -> None:
        server.should_exit = True
        server.wake()  # a QuietServer sees should_exit at once, not at its next 1 s tick
        thread.join(timeout=5)

    ctx.on_start.append(start)
    ctx.on_stop.append(stop)
