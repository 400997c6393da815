"""Drive health: SMART through pySMART; never a crash, "unknown" with a reason when there is no data."""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from pySMART.interface.nvme import NvmeAttributes

from pifarm.target.health import DriveHealthCollector, backing_device, drives_for, from_smart, probe, summary

# `smartctl -a /dev/nvme0` on a worn but healthy NVMe drive (the section pySMART parses)
NVME_CAPTURE = """\
=== START OF SMART DATA SECTION ===
SMART overall-health self-assessment test result: PASSED

SMART/Health Information (NVMe Log 0x02)
Critical Warning:                   0x00
Temperature:                        41 Celsius
Available Spare:                    100%
Available Spare Threshold:          10%
Percentage Used:                    7%
Data Units Read:                    1234567
Data Units Written:                 2345678
Host Read Commands:                 12,345,678
Host Write Commands:                23,456,789
Controller Busy Time:               123
Power Cycles:                       45
Power On Hours:                     1,234
Unsafe Shutdowns:                   6
Media and Data Integrity Errors:    0
Error Information Log Entries:      0

"""


def nvme(text: str) -> NvmeAttributes:
    return NvmeAttributes(iter(text.splitlines()))


def test_nvme_fields_map_to_the_report():
    r = from_smart("/dev/nvme0", smart_capable=True, assessment="PASS", model="X", interface="nvme",
                   nvme=nvme(NVME_CAPTURE))
    assert (r.status, r.temperature_c, r.percentage_used, r.media_errors, r.critical_warning) == ("ok", 41, 7, 0, 0)


def test_warnings_and_failures():
    bad = NVME_CAPTURE.replace("0x00", "0x04").replace("Errors:    0", "Errors:    3")
    r = from_smart("/dev/nvme0", smart_capable=True, assessment="PASS", nvme=nvme(bad))
    assert r.status == "warning" and "critical warning 0x04" in r.reason and "3 media" in r.reason
    worn = from_smart("/dev/nvme0", smart_capable=True, assessment="PASS",
                      nvme=nvme(NVME_CAPTURE.replace("Used:                    7%", "Used:                    104%")))
    assert worn.status == "warning" and "104%" in worn.reason
    assert from_smart("/dev/sda", smart_capable=True, assessment="FAIL").status == "failed"
    virt = from_smart("/dev/vda", smart_capable=False, assessment=None)
    assert virt.status == "unknown" and "no SMART data" in virt.reason


def test_missing_smartctl_is_unknown_with_reason(tmp_path):
    if shutil.which("smartctl"):
        reports = probe(["/dev/definitely-not-a-disk"])
        assert reports[0].status == "unknown" and reports[0].reason
    else:
        reports = probe(["/dev/nvme0n1", "/dev/sda"])
        assert [r.status for r in reports] == ["unknown", "unknown"]
        assert all("smartctl is not installed" in r.reason for r in reports)
    broken = tmp_path / "smartctl"
    broken.write_text("not an executable")
    r = probe(["/dev/nvme0n1"], smartctl=str(broken))[0]
    assert r.status == "unknown" and "could not read" in r.reason


def test_backing_device_of_real_paths(tmp_path):
    dev, why = backing_device(tmp_path)
    assert (dev or "").startswith("/dev/") or "not on a block device" in why
    assert backing_device(tmp_path / "nope")[0] is None
    shm = Path("/dev/shm")
    if shm.is_dir():
        dev, why = backing_device(shm)
        assert dev is None and "tmpfs" in why
        devices, early = drives_for(shm, ["/dev/sdz"])
        assert devices == ["/dev/sdz"] and early[0].status == "unknown"


def test_summary_and_metrics():
    reports = [from_smart("/dev/nvme0", smart_capable=True, assessment="PASS", nvme=nvme(NVME_CAPTURE)),
               from_smart("/dev/vda", smart_capable=False, assessment=None)]
    s = summary(reports)
    assert s["status"] == "unknown" and len(s["drives"]) == 2
    assert summary([])["status"] == "unknown"
    calls = []

    def report():
        calls.append(1)
        return reports

    reg = CollectorRegistry()
    reg.register(DriveHealthCollector(report, ttl=3600))
    text = generate_latest(reg).decode()
    assert 'pifarm_drive_temperature_celsius{device="/dev/nvme0"} 41.0' in text
    assert 'pifarm_drive_health{device="/dev/vda",status="unknown"} 1.0' in text
    generate_latest(reg)
    assert len(calls) == 1  # cached: scrapes do not re-run smartctl


def test_probe_failure_never_breaks_metrics():
    def boom():
        raise RuntimeError("smartctl hung")

    reg = CollectorRegistry()
    reg.register(DriveHealthCollector(boom))
    assert b"pifarm_drive_health" in generate_latest(reg)
