"""Project rules the inference package must keep: its public names, and no network imports."""

from __future__ import annotations

import subprocess
import sys

import pifarm.inference
from tests.inference.helpers import REPO


def test_public_names_are_pinned():
    assert sorted(pifarm.inference.__all__) == ["InferenceSettings", "ModelSettings", "create_app", "serve"]
    for name in pifarm.inference.__all__:
        assert getattr(pifarm.inference, name) is not None


def test_inference_reads_the_cache_never_the_network():
    code = (
        "import sys, pifarm.inference.server, pifarm.inference.manager, pifarm.inference.loader;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'boto3', 'botocore', 'requests')"
        " or m.startswith(('pifarm.target', 'pifarm.appliance', 'pifarm.initiator')));"
        "print(','.join(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"pifarm.inference pulled in: {r.stdout.strip()}"


def test_runtime_module_imports_nothing_but_numpy_and_the_runtime():
    # It must also run in the tflite-runtime venv, which has no fastapi, blake3 or tflite schema.
    code = (
        "import sys, pifarm.inference.runtime;"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'blake3', 'tflite', 'pydantic', 'cryptography', 'watchdog'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
