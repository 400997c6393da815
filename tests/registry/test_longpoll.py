"""Long-poll against the real daemon (uvicorn on loopback): no revision is ever missed."""

from __future__ import annotations

import asyncio
import threading

import httpx

from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_snapshot

WATCHERS = 200
PUBLISHES = 12


async def _watch(client: httpx.AsyncClient, url: str, final: asyncio.Event, seen: list[int]) -> None:
    since = 0
    for _ in range(PUBLISHES * 4 + 10):  # bounded: each reply moves `since` forward or times out
        r = await client.get(url + "/v1/metadata", params={"since": since, "wait": 20})
        if r.status_code == 200:
            rev = int(r.headers["x-pifarm-revision"])
            assert rev > since, f"200 without progress: {rev} after {since}"
            assert r.json()["signed"]["revision"] == rev
            seen.append(rev)
            since = rev
            if since >= PUBLISHES:
                return
        else:
            assert r.status_code == 304
    raise AssertionError(f"watcher stuck at revision {since}")


def test_every_watcher_reaches_every_revision_under_concurrent_publishes(aggregator, tmp_path):
    files = []
    for i in range(PUBLISHES):
        p = tmp_path / f"m{i}.bin"
        p.write_bytes(b"model %d" % i)
        files.append(p)

    def publisher(idx: list[int]) -> None:
        with aggregator.client() as c:
            for i in idx:
                c.publish(files[i], f"model-{i % 3}", channel="stable")

    async def main() -> list[list[int]]:
        limits = httpx.Limits(max_connections=WATCHERS + 10)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            seen: list[list[int]] = [[] for _ in range(WATCHERS)]
            done = asyncio.Event()
            tasks = [asyncio.create_task(_watch(client, aggregator.url, done, s)) for s in seen]
            # wait until the watchers are parked on the server, then publish from three threads at once
            for _ in range(200):
                m = (await client.get(aggregator.url + "/metrics")).text
                if f"pifarm_metadata_waiters {float(WATCHERS)}" in m:
                    break
                await asyncio.sleep(0.05)
            threads = [threading.Thread(target=publisher, args=(list(range(k, PUBLISHES, 3)),)) for k in range(3)]
            for t in threads:
                t.start()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
            for t in threads:
                t.join(timeout=60)
            return seen

    seen = asyncio.run(main())
    for s in seen:
        assert s == sorted(set(s)) and s[-1] == PUBLISHES
    # the final snapshot every watcher got carries every model with its latest stable version
    doc = httpx.get(aggregator.url + "/v1/metadata").json()
    snap = verify_snapshot(doc, TrustedKeys.from_files([aggregator.pubkey]))
    assert snap.revision == PUBLISHES
    assert sorted(snap.models) == ["model-0", "model-1", "model-2"]
    assert all(len(m.versions) == PUBLISHES // 3 for m in snap.models.values())


def test_waiting_request_returns_on_publish_and_304_on_timeout(aggregator, tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"x")
    result: dict = {}

    def wait() -> None:
        result["r"] = httpx.get(aggregator.url + "/v1/metadata", params={"since": 0, "wait": 30}, timeout=60)

    t = threading.Thread(target=wait)
    t.start()
    with aggregator.client() as c:
        for _ in range(200):
            if "pifarm_metadata_waiters 1.0" in httpx.get(aggregator.url + "/metrics").text:
                break
            threading.Event().wait(0.02)
        c.publish(p, "x")
    t.join(timeout=30)
    assert result["r"].status_code == 200 and result["r"].headers["x-pifarm-revision"] == "1"
    r = httpx.get(aggregator.url + "/v1/metadata", params={"since": 1, "wait": 0.3}, timeout=10)
    assert r.status_code == 304 and r.headers["x-pifarm-revision"] == "1"
    r = httpx.get(aggregator.url + "/v1/metadata", params={"since": 7, "wait": 30}, timeout=10)
    assert r.status_code == 200 and r.headers["x-pifarm-reset"] == "1"
