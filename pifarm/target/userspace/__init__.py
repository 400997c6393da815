"""A read-only userspace NVMe/TCP target: exports model volumes where kernel nvmet is absent.

Writes are answered "namespace is write protected"; hosts are checked against the subsystem's
allowlist; namespace UUID/NGUID come from the manifest digest, as with the kernel target.
"""

from pifarm.target.userspace._controller import Controllers, QueueSession
from pifarm.target.userspace._exports import (
    NamespaceExport, SubsystemExport, TargetConfig, VolumeDirectory, default_nqn, directory_exports, scan_volumes,
)
from pifarm.target.userspace._server import ThreadedTarget, UserspaceTarget, serve

__all__ = [
    "Controllers", "NamespaceExport", "QueueSession", "SubsystemExport", "TargetConfig", "ThreadedTarget",
    "UserspaceTarget", "VolumeDirectory", "default_nqn", "directory_exports", "scan_volumes", "serve",
]
