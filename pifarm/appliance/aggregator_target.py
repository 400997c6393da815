"""The aggregator's target part: keep the kernel NVMe/TCP target in step with the registry.

On start and after every registry change (publish, promote, retire) a worker thread builds the
missing volumes and reconciles configfs; it also re-runs every `RESYNC` seconds, so a failure
(configfs not mounted yet, a disk hiccup) heals itself. Failures never stop the API: they show in
`/health` under "target". Drive health (pySMART) goes to `/health` ("drives") and `/metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)
RESYNC = 60.0


def extend(ctx) -> None:
    from pifarm.appliance.target_root import kernel_target
    from pifarm.target.health import DriveHealthCollector, drives_for, probe, summary
    from pifarm.target.settings import TargetSettings
    from pifarm.target.volumes import VolumeBuilder

    settings: TargetSettings = ctx.config.target
    target = kernel_target(settings, ctx.data_dir)

    def drive_reports():
        devices, early = drives_for(target.volume_dir if target.volume_dir.exists() else ctx.data_dir, settings.drives)
        return early + probe(devices)

    drives = DriveHealthCollector(drive_reports)
    ctx.metrics_registry.register(drives)
    state: dict[str, Any] = {"last_ok": None, "last_error": None, "steps": 0}

    enabled = settings.enabled if settings.enabled is not None else target.configfs_present()

    def health() -> dict:
        out: dict[str, Any] = {"drives": summary(drives.reports())}
        if enabled:
            out["target"] = {"subsystem": target.nqn, "configfs_root": settings.configfs_root, **state}
        return out

    ctx.health_providers.append(health)
    _scrub_volumes(ctx, target.volume_dir, settings)
    if not enabled:
        return

    wake, stop = threading.Event(), threading.Event()

    def sync_once() -> None:
        try:
            exports = VolumeBuilder(ctx.registry, target.volume_dir).sync()
            ops = target.apply(exports)
            state.update(last_ok=time.time(), last_error=None, steps=state["steps"] + len(ops))
        except Exception as e:  # reported in /health; the next wake-up retries
            state["last_error"] = str(e)
            log.warning("target sync failed (will retry): %s", e)

    def worker() -> None:
        while not stop.is_set():
            sync_once()
            wake.wait(RESYNC)
            wake.clear()

    thread = threading.Thread(target=worker, name="pifarm-target", daemon=True)
    unsubscribe = ctx.registry.subscribe(lambda revision: wake.set())

    def start() -> None:
        thread.start()

    def halt() -> None:
        unsubscribe()
        stop.set()
        wake.set()
        thread.join(timeout=30)

    ctx.on_start.append(start)
    ctx.on_stop.append(halt)


def _scrub_volumes(ctx, volume_dir, settings) -> None:
    """Issue 11: exported volumes are re-verified blob by blob (rate-limited) and rebuilt in place
    when damaged (an allowed host can write into a kernel-exported namespace); a node's report of
    a corrupt volume (POST /v1/volumes/{name}/{version}/corrupt) moves it to the front."""
    from prometheus_client.core import CounterMetricFamily

    from pifarm.registry.volume_api import volume_router
    from pifarm.target.volume_scrub import VolumeScrubber
    from pifarm.target.volumes import repair_volume, volume_name

    scrubber = VolumeScrubber(volume_dir, lambda p: repair_volume(ctx.registry, p), rate=settings.scrub_rate,
                              interval=settings.scrub_interval or float("inf"))
    ctx.routers.append((volume_router(lambda n, v: scrubber.report(volume_name(n, v))),
                        "volume reports (pifarm.registry.volume_api)"))
    st = scrubber.stats

    class Collector:
        def collect(self):
            for name, value, doc in (("volume_scrub_bytes", st.bytes_read, "Volume bytes re-verified"),
                                     ("volumes_damaged", st.damaged, "Exported volumes found damaged"),
                                     ("volumes_rebuilt", st.repaired, "Damaged volumes rebuilt in place")):
                c = CounterMetricFamily(f"pifarm_{name}", doc)
                c.add_metric([], value)
                yield c

    ctx.metrics_registry.register(Collector())
    ctx.health_providers.append(lambda: {"volume_scrub": {"checked": st.volumes_checked, "damaged": st.damaged,
                                                          "rebuilt": st.repaired, "last_damage": dict(st.last_damage)}})
    stop = threading.Event()
    thread = threading.Thread(target=scrubber.run, args=(stop,), name="pifarm-volume-scrub", daemon=True)
    ctx.on_start.append(thread.start)

    def halt() -> None:
        stop.set()
        scrubber._wake.set()
        if thread.is_alive():
            thread.join(timeout=10)

    ctx.on_stop.append(halt)
