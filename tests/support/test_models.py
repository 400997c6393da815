"""The models set-up: pinned bytes, no second download, one sentence offline, nothing read beside the repo."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require
from tests.support.models import LICENSE, LICENSE_NAME, MODELS, model_path, require_models

REPO = Path(__file__).resolve().parents[2]


def offline_fetch(models_dir: Path) -> subprocess.CompletedProcess:
    """`python -m tests.support.models` in a network namespace of its own (loopback only, down)."""
    unshare = shutil.which("unshare")
    require(unshare is not None, "unshare (util-linux) missing")
    argv = [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-rn"]
    return subprocess.run([*argv, sys.executable, "-m", "tests.support.models"], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "PIFARM_MODELS_DIR": str(models_dir)})


def copy_cache(dst: Path) -> Path:
    src = require_models()
    shutil.copytree(src, dst)
    return dst


def test_cached_models_are_the_pinned_bytes():
    d = require_models()
    for name, (_, digest) in MODELS.items():
        assert hashlib.sha256(model_path(name).read_bytes()).hexdigest() == digest, name
    assert hashlib.sha256((d / LICENSE_NAME).read_bytes()).hexdigest() == LICENSE[1]
    assert "Apache License" in (d / LICENSE_NAME).read_text()


def test_a_filled_cache_needs_no_network(tmp_path):
    r = offline_fetch(copy_cache(tmp_path / "models"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"all {len(MODELS)} present" in r.stdout and "downloading" not in r.stdout


def test_offline_with_a_damaged_model_stops_with_one_sentence(tmp_path):
    d = copy_cache(tmp_path / "models")
    bad = d / "face_landmark.tflite"
    data = bad.read_bytes()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, wrong digest
    r = offline_fetch(d)
    assert r.returncode == 1
    assert "for 1 file(s)" in r.stdout  # only the damaged file is wanted again
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "needs network access" in err and "pip download --no-deps mediapipe==0.10.21" in err
    assert str(d) in err and "Traceback" not in err


def test_unknown_model_name_is_refused():
    try:
        model_path("face_mesh")
    except KeyError as e:
        assert "unknown model 'face_mesh'" in str(e)
    else:
        raise AssertionError("model_path accepted an unknown name")


def test_nothing_in_the_repository_reads_a_folder_beside_it():
    # A user's clone has nothing beside it: no path may climb out of the checkout to "shared".
    needles = ["../" + "shared", '".." / "' + "shared", 'parent / "' + "shared", "/work/" + "shared"]
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for f in files:
        p = REPO / f
        if not p.is_file() or p.suffix in (".pcap", ".tflite", ".png"):
            continue
        text = p.read_text(errors="replace")
        hits += [f"{f}: {n}" for n in needles if n in text]
    assert not hits, hits
