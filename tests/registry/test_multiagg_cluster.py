"""Two aggregators on a real SeaweedFS cluster (master, two volume servers with replication 001,
filer, S3 gateway: `tests/support/seaweed_cluster.py`), one volume server stopped during
publishes (issue 17).

While a volume server is down SeaweedFS cannot place a replicated write, so publishes then fail
(the aggregators go read-only with the reason) or wait; reads go on. Whatever happens, nothing
acknowledged is lost, the history stays linear, and publishing resumes once it is back.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.registry.test_multiagg import check_acks, publish_many
from tests.support.multiagg import SharedFarm
from tests.support.seaweed_cluster import start_cluster
from tests.support.wait import wait_for

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_two_aggregators_on_a_cluster_with_a_volume_server_stopped_during_publishes(tmp_path):
    cluster = start_cluster(tmp_path / "cluster")
    farm = None
    try:
        s3 = cluster.client()
        s3.create_bucket(Bucket="multiagg")
        s3.put_bucket_versioning(Bucket="multiagg", VersioningConfiguration={"Status": "Enabled"})
        farm = SharedFarm(tmp_path, cluster.endpoint, "s3://multiagg/farm", cluster.access_key, cluster.secret_key,
                          n=2)
        acks, failures = publish_many(farm, tmp_path / "before", 20, workers=4)
        assert not failures and len(acks) == 20
        before = farm.converged()
        check_acks(farm, acks, before)

        during: dict = {}

        def publish_during() -> None:
            during["acks"], during["failures"] = publish_many(farm, tmp_path / "during", 8, workers=4)

        cluster.stop_volume(1)
        t = threading.Thread(target=publish_during)
        t.start()
        # reads go on with a volume server down: both aggregators still serve the signed snapshot
        for i in range(2):
            snap = farm.snapshot(i)
            assert snap is not None and snap["signed"]["revision"] >= before["signed"]["revision"]
        time.sleep(5)
        cluster.start_volume(1)
        t.join(timeout=600)
        assert not t.is_alive()
        # every publish during the outage either was acknowledged or failed with the reason
        for f in during["failures"]:
            assert "read-only" in f or "unreachable" in f or "timed out" in f or "S3" in f, f

        def after() -> dict | None:  # writes resume once the store answers again
            more, fails = publish_many(farm, tmp_path / f"after-{time.monotonic_ns()}", 4, workers=2)
            return more if not fails else None

        more = wait_for(after, "publishes after the outage", timeout=180, interval=2.0)
        final = farm.converged(timeout=180)
        check_acks(farm, {**acks, **{1000 + k: v for k, v in during["acks"].items()},
                          **{2000 + k: v for k, v in more.items()}}, final)
        farm.check_linear_history()
    finally:
        if farm is not None:
            farm.stop()
        cluster.stop()
