"""The same models through tflite-runtime (its own venv, numpy<2) and ai-edge-litert agree.

`make test` builds .venv-tflite-runtime with tests/tflite_runtime_venv.sh; outside CI the tier
skips when that venv is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pifarm.appliance.demo import samplemodel as sm
from pifarm.inference.runtime import build_interpreter, resolve
from tests.conftest import require
from tests.inference.helpers import REPO
from tests.support.models import model_path, require_models

pytestmark = pytest.mark.tflite_runtime
VENV_PY = REPO / ".venv-tflite-runtime" / "bin" / "python"
PROBE = Path(__file__).with_name("tflite_runtime_probe.py")


def via_tflite_runtime(model: Path, inputs: list[np.ndarray], tmp: Path) -> tuple[subprocess.CompletedProcess, dict]:
    require(VENV_PY.exists(), f"{VENV_PY} missing: run `bash tests/tflite_runtime_venv.sh`")
    np.savez(tmp / "in.npz", **{f"in{k}": a for k, a in enumerate(inputs)})
    out = tmp / "out.npz"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([str(VENV_PY), str(PROBE), "tflite-runtime", str(model), str(tmp / "in.npz"), str(out)],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp)
    return r, (dict(np.load(out)) if r.returncode == 0 else {})


def via_litert(model: Path, inputs: list[np.ndarray]) -> dict:
    it = build_interpreter(resolve("ai-edge-litert"), model.read_bytes(), 1).interpreter
    details = it.get_input_details()
    if any(tuple(d["shape"]) != x.shape for d, x in zip(details, inputs)):
        for d, x in zip(details, inputs):
            it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
    for d, x in zip(details, inputs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def test_sample_model_with_a_batch_agrees_across_runtimes(tmp_path):
    model = tmp_path / "lin.tflite"
    model.write_bytes(sm.linear_model(16, 4, 9))
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    r, got = via_tflite_runtime(model, [x], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok tflite-runtime") and "numpy 1." in r.stdout
    assert np.allclose(got["y"], sm.expected("linear", x, 9, in_features=16, out_features=4), atol=1e-5)
    assert np.allclose(got["y"], via_litert(model, [x])["y"], atol=1e-6)


def test_real_models_agree_across_runtimes(tmp_path):
    require_models()
    rng = np.random.default_rng(1)
    for name in ("face_detection_short_range", "face_landmark", "hand_landmark_full"):
        model = model_path(name)
        it = build_interpreter(resolve("ai-edge-litert"), model.read_bytes()).interpreter
        inputs = [rng.random(tuple(d["shape"]), dtype=np.float32) for d in it.get_input_details()]
        r, got = via_tflite_runtime(model, inputs, tmp_path)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        want = via_litert(model, inputs)
        assert set(got) == set(want)
        for k in want:
            assert np.allclose(got[k], want[k], rtol=1e-4, atol=1e-4), f"{name} output {k} differs"


def test_a_model_tflite_runtime_cannot_run_is_refused_with_one_line(tmp_path):
    # selfie_segmentation needs a custom op that tflite-runtime 2.14 lacks (see the models README).
    require_models()
    model = model_path("selfie_segmentation")
    r, _ = via_tflite_runtime(model, [np.zeros((1, 256, 256, 3), np.float32)], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("refused: tflite-runtime refused the model") and r.stdout.count("\n") == 1
