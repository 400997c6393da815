"""Issue 20, the aggregator: failures named in one line with their real reason, metrics by route,
status and failure reason. Real processes: `pifarm aggregator run`, the CLI, a real tmpfs that
fills up (root mounts it), a real SeaweedFS that goes away."""

from __future__ import annotations

import os
import re
import subprocess

import httpx
import pytest

from tests.support.procs import run_cli
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("pifarm: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_disk_full_during_upload_is_one_line_and_counted(aggregator_factory, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"this test mounts a tmpfs (as root): {r.stderr}"
    try:
        agg = aggregator_factory(name="tiny/agg")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(4 * 2**20))  # more than the whole file system
        r = run_cli(["publish", str(big), "--name", "big", "--format", "raw", "--registry", agg.url],
                    env={"PIFARM_API_TOKEN": agg.token})
        line = one_line_error(r)
        assert r.returncode == 1 and "disk is full" in line and "Internal Server Error" not in line, r.stderr
        log = agg.log()
        assert "Traceback" not in log and "disk is full" in log, log[-3000:]
        assert httpx.get(agg.url + "/health").status_code == 200  # it keeps serving
        text = httpx.get(agg.url + "/metrics").text
        assert metric(text, "pifarm_registry_write_failures_total", reason="disk_full") >= 1, text
        assert metric(text, "pifarm_http_requests_total", route="/v1/blobs/{digest}", method="PUT", status="503") >= 1
        assert not list((agg.data_dir / "tmp").glob("upload.*")), "the partial upload is removed"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: the aggregator stops after the test


def test_requests_counted_by_route_and_failed_writes_by_reason(aggregator, tmp_path):
    from pifarm.appliance.demo import samplemodel as sm

    model = tmp_path / "m.tflite"
    sm.write_sample(model, "linear", seed=3)
    r = run_cli(["publish", str(model), "--name", "m", "--registry", aggregator.url],
                env={"PIFARM_API_TOKEN": "wrong"})
    assert r.returncode == 1 and "403" in one_line_error(r)
    for i in range(50):  # raw paths never become label values
        httpx.get(f"{aggregator.url}/v1/models/x{i}")
        httpx.get(f"{aggregator.url}/nothing/{i}")
    text = httpx.get(aggregator.url + "/metrics").text
    assert metric(text, "pifarm_registry_write_failures_total", reason="Forbidden") >= 1, text
    assert metric(text, "pifarm_http_requests_total", route="/v1/models/{name}", status="404") == 50
    assert metric(text, "pifarm_http_requests_total", route="other", status="404") == 50
    series = re.findall(r"^pifarm_http_requests_total\{.*$", text, re.M)
    assert len(series) < 20, series
    assert re.search(r"^process_resident_memory_bytes ", text, re.M) and "python_gc_objects_collected_total" in text


@pytest.mark.s3
def test_publish_during_s3_outage_names_the_read_only_reason(aggregator_factory, seaweed, s3_bucket, tmp_path):
    from pifarm.appliance.demo import samplemodel as sm

    cfg = tmp_path / "agg.toml"
    cfg.write_text(f'[store]\nurl = "s3://{s3_bucket}/farm"\nendpoint_url = "{seaweed.endpoint}"\n'
                   'region = "us-east-1"\ncheck_interval = 1.0\n')
    agg = aggregator_factory(config=cfg, env=seaweed.env())
    model = tmp_path / "m.tflite"
    sm.write_sample(model, "linear", seed=5)
    seaweed.stop()
    try:
        r = run_cli(["publish", str(model), "--name", "m", "--registry", agg.url],
                    env={"PIFARM_API_TOKEN": agg.token}, timeout=180)
        line = one_line_error(r)
        assert r.returncode == 1 and "Service Unavailable" not in line, line
        assert "read-only" in line or "unreachable" in line, line
    finally:
        seaweed.start()
    wait_for(lambda: httpx.get(agg.url + "/health").json().get("status") == "ok", "writable again", timeout=60)


@pytest.mark.s3
def test_missing_bucket_is_reported_as_a_missing_bucket(seaweed, tmp_path):
    from pifarm.signed.signing import SigningKey, public_pem

    key = tmp_path / "signing.pub"
    key.write_bytes(public_pem(SigningKey.generate().public))
    r = run_cli(["pull", "m", "--registry", "s3://no-such-bucket-20/farm", "--endpoint-url", seaweed.endpoint,
                 "--cache", str(tmp_path / "c"), "--trust", str(key), "-q"],
                env={**seaweed.env(), "PIFARM_NODE_STATE_DIR": str(tmp_path / "s")}, timeout=180)
    line = one_line_error(r)
    assert r.returncode == 1 and "bucket no-such-bucket-20 does not exist" in line, line
    assert "not in the bucket" not in line
