"""A pure-Python NVMe/TCP host for Pis whose kernel has no NVMe-oF support.

`Controller` (asyncio) does the NVMe work; `NvmeTcpClient` wraps it for blocking callers with
reconnect and backoff; `source.make_source` plugs it into the cache as `nvme-tcp-userspace`.
Never imports pifarm.target: the wire format is shared through pifarm.nvmewire.
"""

from pifarm.initiator.nvme_tcp._client import NvmeTcpClient
from pifarm.initiator.nvme_tcp._controller import (
    AUTH_MESSAGE, ConnectParams, Controller, NamespaceInfo, host_id_for, parse_address,
)

__all__ = ["AUTH_MESSAGE", "ConnectParams", "Controller", "NamespaceInfo", "NvmeTcpClient", "host_id_for", "parse_address"]
