"""KServe V2 tensor decoding: every datatype, and every way a tensor can fail to fit a model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pifarm.inference.codec import DATATYPES, BadInput, TensorInfo, decode, encode, fit_inputs

ISSUE_TYPES = ["FP32", "FP16", "INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL"]


@pytest.mark.parametrize("datatype", ISSUE_TYPES)
def test_each_issue_datatype_decodes_to_its_numpy_type(datatype):
    data = [True, False, True, False] if datatype == "BOOL" else [0, 1, 2, 3]
    a = decode("x", datatype, [2, 2], data)
    assert a.dtype == DATATYPES[datatype]
    assert a.shape == (2, 2)
    assert a.reshape(-1).tolist() == ([True, False, True, False] if datatype == "BOOL" else [0, 1, 2, 3])


def test_nested_data_is_accepted_like_flat_data():
    assert np.array_equal(decode("x", "FP32", [2, 2], [[1, 2], [3, 4]]), decode("x", "FP32", [2, 2], [1, 2, 3, 4]))


@pytest.mark.parametrize(
    "datatype,data,needle",
    [
        ("INT32", [1.5, 2.0], "integer values"),
        ("BOOL", [1, 0], "true/false"),
        ("FP32", [1, "a"], "numeric values"),
        ("FP32", [None, 1], "numeric"),
        ("INT8", [127, 128], "outside the INT8 range"),
        ("UINT8", [-1, 2], "outside the UINT8 range"),
        ("FP16", [1.0, 1e6], "outside the FP16 range"),
        ("FP32", [[1], [2, 3]], "ragged"),
    ],
)
def test_values_that_do_not_fit_the_datatype_are_refused(datatype, data, needle):
    with pytest.raises(BadInput, match=needle):
        decode("x", datatype, [2], data)


def test_element_count_must_match_shape():
    with pytest.raises(BadInput, match=r"needs 6 elements, data has 5"):
        decode("x", "FP32", [2, 3], [1, 2, 3, 4, 5])


def test_unknown_datatype_and_bad_shape():
    with pytest.raises(BadInput, match="unknown datatype"):
        decode("x", "FLOAT", [1], [1])
    with pytest.raises(BadInput, match="non-negative"):
        decode("x", "FP32", [-1], [1])


FIXED = [TensorInfo("x", 0, np.dtype(np.float32), (2, 3))]
BATCH = [TensorInfo("a", 0, np.dtype(np.float32), (-1, 3)), TensorInfo("b", 1, np.dtype(np.int32), (-1, 2))]


def test_fit_inputs_fixed_shape():
    arrays, rows = fit_inputs(FIXED, [("x", "FP32", [2, 3], list(range(6)))], batchable=False)
    assert rows is None and arrays[0].shape == (2, 3)
    with pytest.raises(BadInput, match=r"shape \[3, 2\] given, model wants \[2, 3\]"):
        fit_inputs(FIXED, [("x", "FP32", [3, 2], list(range(6)))], batchable=False)
    with pytest.raises(BadInput, match="datatype INT32 given, model wants FP32"):
        fit_inputs(FIXED, [("x", "INT32", [2, 3], list(range(6)))], batchable=False)


def test_fit_inputs_batch_dim_orders_by_model_and_checks_rows():
    arrays, rows = fit_inputs(BATCH, [("b", "INT32", [4, 2], [0] * 8), ("a", "FP32", [4, 3], [0.5] * 12)], True)
    assert rows == 4 and [a.shape for a in arrays] == [(4, 3), (4, 2)]
    with pytest.raises(BadInput, match="batch size 2 differs"):
        fit_inputs(BATCH, [("a", "FP32", [4, 3], [0] * 12), ("b", "INT32", [2, 2], [0] * 4)], True)
    with pytest.raises(BadInput, match="missing"):
        fit_inputs(BATCH, [("a", "FP32", [1, 3], [0] * 3)], True)
    with pytest.raises(BadInput, match="no input 'c'"):
        fit_inputs(BATCH, [("c", "FP32", [1, 3], [0] * 3)], True)
    with pytest.raises(BadInput, match="given twice"):
        fit_inputs(BATCH, [("a", "FP32", [1, 3], [0] * 3), ("a", "FP32", [1, 3], [0] * 3)], True)
    with pytest.raises(BadInput, match="shape"):
        fit_inputs(BATCH, [("a", "FP32", [0, 3], []), ("b", "INT32", [0, 2], [])], True)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ISSUE_TYPES).flatmap(
    lambda dt: st.tuples(st.just(dt), hnp.arrays(DATATYPES[dt], hnp.array_shapes(max_dims=3, max_side=4),
                                                 elements={"allow_nan": False, "allow_infinity": False}
                                                 if DATATYPES[dt].kind == "f" else None))))
def test_encode_then_decode_round_trips(case):
    datatype, array = case
    t = encode("y", array)
    assert t["datatype"] == datatype
    back = decode("y", t["datatype"], t["shape"], t["data"])
    assert back.dtype == array.dtype and np.array_equal(back, array)
