"""`[target]` section of aggregator.toml: the kernel NVMe/TCP target and the model volumes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pifarm.errors import ConfigError

__all__ = ["TargetSettings"]


@dataclass(frozen=True)
class TargetSettings:
    #: keep the kernel target in step with the registry inside the aggregator (volumes built and
    #: configfs reconciled on publish/promote/retire); unset = only when the configfs root exists
    enabled: bool | None = None
    #: the nvmet configfs tree; "fake:FILE" keeps an in-memory tree in FILE (tests, dry runs; the
    #: appliance opens that test double, see pifarm.appliance.target_root)
    configfs_root: str = "/sys/kernel/config/nvmet"
    #: subsystem NQN; "" derives nqn.2014-08.org.pifarm:aggregator:<hostname>
    subsystem_nqn: str = ""
    #: where volume files live; "" = <data_dir>/volumes (must be writable: nvmet opens files O_RDWR)
    volume_dir: str = ""
    #: listen address(es) of the NVMe/TCP port(s); port ids are 1, 2, ... in this order
    addresses: tuple[str, ...] = ("0.0.0.0",)
    trsvcid: int = 4420
    #: controller ids this target hands out (nvmet's attr_cntlid_min/max). Aggregators exporting
    #: one subsystem NQN to the same node must use disjoint ranges: the host's multipath refuses a
    #: second controller with a cntlid it already has in that subsystem ("Duplicate cntlid")
    cntlid_min: int = 1
    cntlid_max: int = 65519
    #: hosts always allowed (besides `pifarm target allow-host` and the node inventory)
    allowed_hosts: tuple[str, ...] = ()
    #: "auto" probes O_DIRECT on each volume file (tmpfs has none), "on"/"off" force it
    buffered_io: str = "auto"
    #: extra block devices to report SMART health for (the volume dir's device is always included)
    drives: tuple[str, ...] = ()
    #: re-verify every exported volume blob by blob this often (seconds; 0 = only when a node
    #: reports one corrupt), reading at most scrub_rate bytes/s; damaged volumes are rebuilt
    scrub_interval: float = 86400.0
    scrub_rate: int = 32 << 20

    def __post_init__(self) -> None:
        if self.scrub_interval < 0 or self.scrub_rate < 65536:
            raise ConfigError("[target] scrub_interval must be >= 0 and scrub_rate at least 65536 bytes/s")
        if self.buffered_io not in ("auto", "on", "off"):
            raise ConfigError(f"[target] buffered_io must be auto, on or off, got {self.buffered_io!r}")
        if not 0 < self.trsvcid < 65536:
            raise ConfigError(f"[target] trsvcid must be a TCP port 1-65535, got {self.trsvcid}")
        if not 1 <= self.cntlid_min < self.cntlid_max <= 65519:
            raise ConfigError(f"[target] cntlid_min/cntlid_max must satisfy 1 <= min < max <= 65519, "
                              f"got {self.cntlid_min}..{self.cntlid_max}")
        for a in self.addresses:
            try:
                ipaddress.ip_address(a)
            except ValueError as e:
                raise ConfigError(f"[target] addresses: {a!r} is not an IP address") from e
        if not self.addresses:
            raise ConfigError("[target] addresses is empty: nothing to listen on")
        if len(self.addresses) > 65535:
            raise ConfigError("[target] too many addresses")

    @property
    def buffered_io_choice(self) -> bool | None:
        return {"auto": None, "on": True, "off": False}[self.buffered_io]
