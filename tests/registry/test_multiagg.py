"""Several real aggregator processes on one real SeaweedFS bucket (issue 17).

200 concurrent publishes spread over the aggregators must give one linear history: every
acknowledged publish present exactly once, revisions strictly increasing without gaps, every
signed snapshot verifiable by a node; an aggregator killed with SIGKILL mid-publishes loses
nothing acknowledged, and catches up when it comes back.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

import httpx
import pytest

from pifarm.client.http import AggregatorClient
from pifarm.errors import PifarmError
from tests.support.multiagg import TOKEN, SharedFarm, store_toml

pytestmark = [pytest.mark.s3, pytest.mark.slow]


@pytest.fixture
def farm_factory(tmp_path, seaweed, s3_bucket):
    farms = []

    def make(n: int, **kw) -> SharedFarm:
        f = SharedFarm(tmp_path, seaweed.endpoint, f"s3://{s3_bucket}/farm", seaweed.access_key, seaweed.secret_key,
                       n=n, **kw)
        farms.append(f)
        return f

    yield make
    for f in farms:
        f.stop()


def publish_many(farm: SharedFarm, tmp_path, count: int, workers: int = 12, on_progress=None):
    """`count` publishes of distinct content, job i sent to aggregator i % n; a job whose
    aggregator fails moves to the next one (as an operator's script would). Returns the acks."""
    src = tmp_path / "payloads"
    src.mkdir(parents=True, exist_ok=True)
    jobs: queue.Queue = queue.Queue()
    for i in range(count):
        p = src / f"p{i}.bin"
        p.write_bytes(os.urandom(64) + i.to_bytes(4, "big"))
        jobs.put((i, p))
    acks: dict[int, dict] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        clients = {}
        while True:
            try:
                i, p = jobs.get_nowait()
            except queue.Empty:
                break
            name = "race" if i % 4 else "other"  # two models: both versions and revisions contend
            for attempt in range(len(farm.aggs) * 3):
                k = (i + attempt) % len(farm.aggs)
                c = clients.get(k) or clients.setdefault(k, AggregatorClient(farm.aggs[k].url, TOKEN, timeout=60))
                try:
                    out = c.publish(p, name, format="raw")
                except PifarmError as e:
                    last = str(e)
                    continue
                with lock:
                    acks[i] = {"name": out["name"], "version": out["version"], "digest": out["manifest_digest"]}
                    if on_progress:
                        on_progress(len(acks))
                break
            else:
                with lock:
                    failures.append(f"publish {i}: {last}")
        for c in clients.values():
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acks, failures


def check_acks(farm: SharedFarm, acks: dict[int, dict], snap: dict) -> None:
    """Every acknowledged publish is in the served snapshot exactly once, under the version it was
    acknowledged with."""
    served = {(n, v["version"]): v["manifest_digest"]
              for n, m in snap["signed"]["models"].items() for v in m["versions"]}
    for i, a in acks.items():
        assert served.get((a["name"], a["version"])) == a["digest"], f"acknowledged publish {i} {a} not served"
    assert len({(a["name"], a["version"]) for a in acks.values()}) == len(acks), "two acks with one version"
    assert len({a["digest"] for a in acks.values()}) == len(acks), "one manifest acknowledged twice"
    for name in {n for n, _ in served}:
        versions = sorted(v for n, v in served if n == name)
        assert versions == list(range(1, len(versions) + 1)), f"{name}: versions with gaps {versions}"


def test_two_aggregators_200_concurrent_publishes_one_linear_history(farm_factory, tmp_path):
    farm = farm_factory(2)
    store = httpx.get(farm.aggs[1].url + "/health", timeout=10).json()["store"]
    assert store["writer"].startswith("shared") and store["conditional_writes"] is True
    acks, failures = publish_many(farm, tmp_path, 200)
    assert not failures, failures[:5]
    assert len(acks) == 200
    snap = farm.converged()
    check_acks(farm, acks, snap)
    docs = farm.check_linear_history()
    # every publish is one revision of its own (nothing merged away, nothing doubled)
    assert sum(len(d["added"]) for d in docs) == 200
    # namespace ids: one per version, assigned in the shared state, the same on both aggregators
    ids = [v["nsid"] for v in docs[-1]["state"]["versions"]]
    assert len(set(ids)) == len(ids) == 200


def test_sigkill_one_of_three_mid_publishes_others_go_on_and_it_catches_up(farm_factory, tmp_path):
    farm = farm_factory(3)
    victim = farm.aggs[2]
    killed = threading.Event()

    def progress(n: int) -> None:
        if n >= 60 and not killed.is_set():
            killed.set()
            victim.kill()  # SIGKILL: no clean shutdown, publishes in flight on it die with it

    acks, failures = publish_many(farm, tmp_path, 200, on_progress=progress)
    assert killed.is_set()
    assert not failures, failures[:5]
    snap = farm.converged([0, 1])
    check_acks(farm, acks, snap)
    farm.check_linear_history()
    victim.start(timeout=60)
    again = farm.converged()  # the restarted one serves the very same signed snapshot
    assert again == snap or again["signed"]["revision"] >= snap["signed"]["revision"]
    check_acks(farm, acks, again)


def test_rebuild_db_from_the_bucket(farm_factory, tmp_path):
    farm = farm_factory(1)
    acks, failures = publish_many(farm, tmp_path, 6, workers=2)
    assert not failures
    snap = farm.converged()
    a = farm.aggs[0]
    a.stop()
    (a.data_dir / "registry.db").unlink()
    for extra in ("registry.db-wal", "registry.db-shm"):
        (a.data_dir / extra).unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "pifarm", "aggregator", "rebuild-db", "--data-dir", str(a.data_dir),
                          "--config", str(a.config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"revision {snap['signed']['revision']}" in out.stdout
    a.start(timeout=60)
    assert farm.converged() == snap


def test_endpoint_without_conditional_writes_is_refused_for_multi_aggregator_mode(tmp_path, seaweed, s3_bucket):
    """The bad endpoint under test is a tiny in-repo proxy that strips If-None-Match/If-Match (an
    S3 that ignores them, as older gateways do); a real SeaweedFS stands behind it."""
    from tests.support.s3strip import StrippingProxy

    with StrippingProxy(seaweed.endpoint) as proxy:
        farm = SharedFarm(tmp_path, proxy.url, f"s3://{s3_bucket}/bad", seaweed.access_key, seaweed.secret_key,
                          n=1, start=False)
        a = farm.aggs[0]
        out = subprocess.run([sys.executable, "-m", "pifarm", "aggregator", "run", "--data-dir", str(a.data_dir),
                              "--listen", f"127.0.0.1:{a.port}", "--config", str(a.config)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if "If-None-Match" in ln]
        assert lines and "refused for multi-aggregator mode" in lines[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        # single-aggregator mode keeps working there, and says it is single-writer
        cfg = tmp_path / "single.toml"
        cfg.write_text(f'[api]\ntoken = "{TOKEN}"\n\n' + store_toml(proxy.url, f"s3://{s3_bucket}/bad",
                                                                   seaweed.access_key, seaweed.secret_key, "auto")
                       + "\n[target]\nenabled = false\n")
        a.config = cfg
        a.start(timeout=60)
        try:
            assert "single-writer" in a.log()
            store = httpx.get(a.url + "/health", timeout=10).json()["store"]
            assert store["writer"].startswith("single-writer") and store["conditional_writes"] is False
            p = tmp_path / "one.bin"
            p.write_bytes(b"single writer still publishes")
            with AggregatorClient(a.url, TOKEN) as c:
                assert c.publish(p, "solo", format="raw")["version"] == 1
        finally:
            a.stop()


def test_every_aggregator_exports_a_version_under_the_same_namespace_id(farm_factory, tmp_path):
    """Each aggregator builds the volumes of versions another one published and exports them (a
    file-backed configfs here) under the NSID the registry assigned: with the UUID and NGUID
    derived from the manifest digest, the same namespace identity on every aggregator."""
    import json

    from tests.support.wait import wait_for

    farm = farm_factory(2, target=f'enabled = true\naddresses = ["127.0.0.1"]\n'
                                  f'configfs_root = "fake:{tmp_path}/configfs-{{i}}.json"\n')
    # a version published before the second aggregator's table knew anything, and one after
    acks, failures = publish_many(farm, tmp_path, 4, workers=2)
    assert not failures
    farm.converged()

    def table(i: int) -> dict:
        p = farm.aggs[i].data_dir / "target" / "nsids.json"
        try:
            return {k: v["nsid"] for k, v in json.loads(p.read_text())["assigned"].items()}
        except (OSError, ValueError, KeyError):
            return {}

    want = {f"{a['name']}@{a['version']}" for a in acks.values()}
    wait_for(lambda: set(table(0)) >= want and set(table(1)) >= want, "both targets exporting every version",
             timeout=120, interval=0.3)
    assert {k: table(0)[k] for k in want} == {k: table(1)[k] for k in want}
    state = farm.revision_doc(farm.head())["state"]
    assigned = {f"{v['name']}@{v['version']}": v["nsid"] for v in state["versions"]}
    assert {k: table(0)[k] for k in want} == {k: assigned[k] for k in want}  # the registry's ids
    signed = farm.converged()["signed"]["models"]  # ... carried in the signed snapshot nodes verify
    assert {f"{n}@{v['version']}": v["nsid"] for n, m in signed.items() for v in m["versions"]} == assigned
    assert len({table(0)[k] for k in want}) == len(want)
