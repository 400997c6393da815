"""`pifarm demo --check`: the whole farm on this machine, real processes on loopback; and the
step logic that makes a missing or broken component FAIL instead of passing silently."""

from __future__ import annotations

import pytest

from pifarm.appliance.demo.farm import Demo, Farm, Step, StepFailed
from tests.support.procs import run_cli


def _check_output(r) -> list[str]:
    lines = [l for l in r.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert lines, r.stdout + r.stderr
    return lines


@pytest.mark.slow
def test_demo_check_passes_end_to_end(tmp_path):
    r = run_cli(["demo", "--check", "--workdir", str(tmp_path / "demo")], timeout=480)
    lines = _check_output(r)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(l.startswith("PASS") for l in lines)
    text = "\n".join(lines)
    for what in ("aggregator running", "inference on v1", "hot swap", "degraded mode, still serving",
                 "degraded mode left", "promoted to stable by its rollout", "aborted in wave 1"):
        assert what in text
    assert "none dropped" in text
    assert "served from" in text or "served by the fallback" in text  # it says which path served
    assert "11/11 steps passed" in r.stdout


@pytest.mark.slow
@pytest.mark.s3
def test_demo_check_with_seaweedfs(tmp_path):
    r = run_cli(["demo", "--check", "--s3", "--workdir", str(tmp_path / "demo")], timeout=480)
    lines = _check_output(r)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SeaweedFS" in lines[0] and "registry and S3 stopped" in r.stdout


def test_a_failed_step_fails_everything_that_needs_it(tmp_path):
    demo = Demo(Farm(tmp_path))
    calls = []

    def ok():
        calls.append("ok")
        return "fine"

    def broken():
        raise StepFailed("component missing")

    def crash():
        raise KeyError("bug")

    demo.steps = [Step("a", "first", ok), Step("b", "second", broken, ("a",)), Step("c", "third", ok, ("b",)),
                  Step("d", "fourth", crash, ("a",)), Step("e", "fifth", ok, ("a",))]
    steps = demo.run()
    assert [s.ok for s in steps] == [True, False, False, False, True]
    assert steps[1].detail == "component missing"
    assert steps[2].detail == "not run: needs 'second', which failed" and calls == ["ok", "ok"]
    assert "KeyError" in steps[3].detail


def test_demo_workdir_that_is_a_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "file"
    bad.write_text("x")
    r = run_cli(["demo", "--check", "--workdir", str(bad)], timeout=120)
    assert r.returncode == 2 and "is a file" in r.stderr
    assert "PASS" not in r.stdout
