"""The sample model generator writes valid TFLite that a real runtime runs to the known answer."""

from __future__ import annotations

import numpy as np
import pytest

from pifarm.appliance.demo import samplemodel as sm
from pifarm.errors import UsageError
from pifarm.inference.runtime import build_interpreter, resolve


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    it = build_interpreter(resolve("ai-edge-litert"), model).interpreter
    d = it.get_input_details()[0]
    if tuple(d["shape"]) != x.shape:
        it.resize_tensor_input(d["index"], list(x.shape), strict=True)
        it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_same_seed_same_bytes_other_seed_other_bytes():
    assert sm.linear_model(16, 4, 7) == sm.linear_model(16, 4, 7)
    assert sm.linear_model(16, 4, 7) != sm.linear_model(16, 4, 8)


@pytest.mark.parametrize("rows", [1, 5])
def test_linear_model_computes_x_w_plus_b_with_a_resizable_batch(rows):
    x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
    got = run(sm.linear_model(16, 4, 3), x)
    assert got.shape == (rows, 4)
    assert np.allclose(got, sm.expected("linear", x, 3, in_features=16, out_features=4), atol=1e-5)


def test_nobatch_model_has_no_batch_dimension():
    model = sm.nobatch_model(8, 2)
    it = build_interpreter(resolve("ai-edge-litert"), model).interpreter
    assert list(it.get_input_details()[0]["shape_signature"]) == [8]
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    assert np.allclose(run(model, x), sm.expected("nobatch", x, 2, length=8), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "int32", "int64"])
def test_add_model_in_each_dtype(dtype):
    x = np.arange(4).astype(dtype)
    got = run(sm.add_model(dtype, 4, 1), x)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got, sm.expected("add", x, 1, length=4, dtype=dtype))


def test_large_model_is_about_five_megabytes():
    assert 4_800_000 < len(sm.large_model(0)) < 5_300_000


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        sm.linear_model(0, 4)
    with pytest.raises(UsageError):
        sm.add_model("float64")
    with pytest.raises(UsageError, match="unknown sample model kind"):
        sm.write_sample(tmp_path / "m.tflite", "huge")
    assert sm.write_sample(tmp_path / "m.tflite", "nobatch", 3).read_bytes() == sm.nobatch_model(8, 3)
