"""Drive health for the aggregator (`/health` and `/metrics`): SMART data through pySMART.

Covers the device under the volume directory and any `[target] drives`. Nothing here can crash
the aggregator: no smartctl, a virtual disk, a tmpfs volume dir or an unreadable device all give
status "unknown" with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["DriveHealth", "backing_device", "probe", "drives_for", "from_pysmart", "from_smart", "summary",
           "DriveHealthCollector"]

log = logging.getLogger(__name__)
_RANK = {"ok": 0, "unknown": 1, "warning": 2, "failed": 3}


@dataclass(frozen=True)
class DriveHealth:
    device: str
    status: str  # ok | warning | failed | unknown
    reason: str = ""
    model: str | None = None
    interface: str | None = None
    temperature_c: int | None = None
    percentage_used: int | None = None
    media_errors: int | None = None
    critical_warning: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def backing_device(path: str | os.PathLike, sys_root: str = "/sys") -> tuple[str | None, str]:
    """(/dev/<disk>, "") for the whole disk holding `path`, or (None, reason)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return None, f"cannot stat {path}: {e.strerror}"
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    node = Path(sys_root) / "dev" / "block" / f"{major}:{minor}"
    if not node.exists():
        return None, f"{path} is not on a block device (device {major}:{minor}, e.g. tmpfs or overlay)"
    real = node.resolve()
    disk = real.parent if (real / "partition").exists() else real
    return f"/dev/{disk.name}", ""


def from_pysmart(device: str, dev: Any) -> DriveHealth:
    """Map a pySMART Device onto our report."""
    return from_smart(device, smart_capable=bool(getattr(dev, "smart_capable", False)),
                      assessment=getattr(dev, "assessment", None), model=getattr(dev, "model", None),
                      interface=getattr(dev, "interface", None), temperature=getattr(dev, "temperature", None),
                      nvme=getattr(dev, "if_attributes", None))


def from_smart(device: str, *, smart_capable: bool, assessment: str | None, model: str | None = None,
               interface: str | None = None, temperature: int | None = None, nvme: Any = None) -> DriveHealth:
    """The report for one drive; `nvme` is pySMART's NvmeAttributes (None for SATA/SAS drives)."""
    if not smart_capable and nvme is None:
        return DriveHealth(device, "unknown", "no SMART data (virtual disk, USB bridge, or not permitted)", model=model)
    cw = getattr(nvme, "criticalWarning", None)
    used = getattr(nvme, "percentageUsed", None)
    media = getattr(nvme, "integrityErrors", None)
    if temperature is None:
        temperature = getattr(nvme, "temperature", None)
    a = (assessment or "").upper()
    status = {"PASS": "ok", "WARN": "warning", "FAIL": "failed"}.get(a, "unknown")
    reasons = []
    if cw:
        status = "failed" if status == "failed" else "warning"
        reasons.append(f"critical warning 0x{cw:02x}")
    if used is not None and used >= 100 and status == "ok":
        status = "warning"
        reasons.append(f"{used}% of rated endurance used")
    if media:
        reasons.append(f"{media} media/data integrity errors")
        status = "warning" if status == "ok" else status
    if status == "unknown" and not reasons:
        reasons.append(f"SMART overall assessment unavailable ({a or 'none'})")
    return DriveHealth(device, status, "; ".join(reasons), model, interface, temperature, used, media, cw)


def probe(devices: Iterable[str], smartctl: str | None = None) -> list[DriveHealth]:
    """SMART health of each device; never raises."""
    devices = list(dict.fromkeys(devices))
    exe = smartctl or shutil.which("smartctl")
    if not exe:
        return [DriveHealth(d, "unknown", "smartctl is not installed (apt-get install smartmontools)") for d in devices]
    try:
        from pySMART import Device
        from pySMART.smartctl import Smartctl
    except Exception as e:  # a broken install must not take /health down
        return [DriveHealth(d, "unknown", f"pySMART unavailable: {e}") for d in devices]
    out = []
    for d in devices:
        try:
            dev = Device(d, smartctl=Smartctl(smartctl_path=exe))
            out.append(from_pysmart(d, dev))
        except Exception as e:
            out.append(DriveHealth(d, "unknown", f"smartctl could not read {d}: {e}"))
    return out


def drives_for(volume_dir: str | os.PathLike, configured: Iterable[str] = ()) -> tuple[list[str], list[DriveHealth]]:
    """Devices to probe, plus reports for what cannot be probed at all (e.g. tmpfs volume dir)."""
    dev, why = backing_device(volume_dir)
    devices = [dev] if dev else []
    early = [] if dev else [DriveHealth(str(volume_dir), "unknown", why)]
    return devices + [d for d in configured if d not in devices], early


def summary(reports: list[DriveHealth]) -> dict[str, Any]:
    """For `/health`: the worst status, and every drive."""
    worst = max((r.status for r in reports), key=lambda s: _RANK[s], default="unknown")
    return {"status": worst, "drives": [r.to_json() for r in reports]}


class DriveHealthCollector:
    """A prometheus_client collector: `registry.register(DriveHealthCollector(lambda: reports()))`.

    SMART queries are cached for `ttl` seconds so a fast scrape interval never hammers the drives.
    """

    def __init__(self, report: Callable[[], list[DriveHealth]], ttl: float = 60.0):
        self._report = report
        self._ttl = ttl
        self._cache: tuple[float, list[DriveHealth]] | None = None
        self._lock = threading.Lock()

    def reports(self) -> list[DriveHealth]:
        with self._lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] > self._ttl:
                try:
                    self._cache = (now, self._report())
                except Exception as e:  # never break /metrics
                    log.warning("drive health probe failed: %s", e)
                    self._cache = (now, [])
            return self._cache[1]

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        reports = self.reports()
        status = GaugeMetricFamily("pifarm_drive_health", "Drive health status (1 for the current status)",
                                   labels=["device", "status"])
        gauges = {
            "temperature_c": GaugeMetricFamily("pifarm_drive_temperature_celsius", "Drive temperature", labels=["device"]),
            "percentage_used": GaugeMetricFamily("pifarm_drive_percentage_used", "NVMe percentage of rated endurance used",
                                                 labels=["device"]),
            "media_errors": GaugeMetricFamily("pifarm_drive_media_errors", "NVMe media and data integrity errors",
                                              labels=["device"]),
            "critical_warning": GaugeMetricFamily("pifarm_drive_critical_warning", "NVMe critical warning bits",
                                                  labels=["device"]),
        }
        for r in reports:
            # every status of every drive, 1 for the current one: an alert on
            # {status="failed"} == 1 then has a series to watch before anything fails
            for st in _RANK:
                status.add_metric([r.device, st], 1 if st == r.status else 0)
            for field, g in gauges.items():
                v = getattr(r, field)
                if v is not None:
                    g.add_metric([r.device], v)
        yield status
        yield from gauges.values()
