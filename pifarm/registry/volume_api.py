"""`POST /v1/volumes/{name}/{version}/corrupt`: a node found a blob of this version's NVMe volume
corrupt. The aggregator re-verifies that volume at once and rebuilds it if it is damaged
(`pifarm.target.volume_scrub`). Open like the other reads: a report only schedules a check
(deduplicated, rate-limited by the scrubber), it changes nothing by itself."""

from __future__ import annotations

from typing import Callable

from pifarm.signed.manifest import check_name


def volume_router(report: Callable[[str, int], bool]):
    from fastapi import APIRouter, HTTPException, Path

    router = APIRouter(tags=["volumes"])

    @router.post("/v1/volumes/{name}/{version}/corrupt", status_code=202,
                 summary="Report a corrupt NVMe volume (the aggregator re-verifies and rebuilds it)")
    def corrupt(name: str = Path(max_length=64), version: int = Path(ge=1, le=2**31)) -> dict:
        try:
            check_name(name)
        except Exception as e:
            raise HTTPException(400, str(e)) from e
        if not report(name, version):
            raise HTTPException(404, f"{name} v{version} has no exported volume here")
        return {"scheduled": f"{name} v{version}"}

    return router
