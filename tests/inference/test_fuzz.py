"""Schemathesis fuzzes the server's own OpenAPI document: no input may cause a 5xx.

Path parameters are pinned to the served models and versions (plus the generated ones), so the
bodies reach the tensor checks of real models rather than stopping at 404.
"""

from __future__ import annotations

import copy

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from pifarm.appliance.demo import samplemodel as sm
from pifarm.inference.server import create_app
from pifarm.inference.settings import InferenceSettings
from tests.inference.helpers import LiveServer, make_cache
from tests.support.wait import wait_http

MODELS = {"lin": (1, sm.linear_model(16, 4, 1)), "nb": (3, sm.nobatch_model(8, 2)), "i64": (1, sm.add_model("int64", 4, 3))}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tc = make_cache(tmp_path_factory.mktemp("fuzz") / "cache")
    for name, (version, model) in MODELS.items():
        tc.publish(name, version, model)
    app = create_app(InferenceSettings(max_body=256 * 1024), tc.root, None)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        wait_http(c, "/health", lambda r: r.status_code == 200)
        yield srv.url, c.get("/openapi.json").json()


def pinned_schema(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for path in doc["paths"].values():
        for op in path.values():
            for p in op.get("parameters", []):
                if p["name"] == "model":
                    p["schema"] = {"type": "string", "enum": sorted(MODELS) + ["ghost"]}
                elif p["name"] == "version":
                    p["schema"] = {"type": "string", "enum": ["1", "3", "9"]}
    return doc


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_causes_a_server_error(live, mode):
    url, doc = live
    strategy = schemathesis.openapi.from_dict(pinned_schema(doc)).as_strategy(generation_mode=mode)
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=strategy)
    def fuzz(case):
        response = case.call(base_url=url, timeout=30)
        seen.add(f"{case.method} {case.path}")
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

    fuzz()
    assert any("infer" in op for op in seen), f"the fuzzer never reached an infer route: {sorted(seen)}"


scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False, width=32), st.booleans(),
                    st.none(), st.text(max_size=3))


@st.composite
def near_valid_bodies(draw):
    """Bodies that name the real input and vary shape, datatype and values around the valid one."""
    model = draw(st.sampled_from(sorted(MODELS)))
    shape = draw(st.one_of(st.just({"lin": [1, 16], "nb": [8], "i64": [4]}[model]),
                           st.lists(st.integers(0, 20), min_size=0, max_size=3)))
    n = 1
    for d in shape:
        n *= d
    count = draw(st.one_of(st.just(n), st.integers(0, 40)))
    kind = draw(st.sampled_from(["float", "int", "bool", "mixed"]))
    elem = {"float": st.floats(-1e6, 1e6, width=32), "int": st.integers(-(2**40), 2**40),
            "bool": st.booleans(), "mixed": scalars}[kind]
    data = draw(st.lists(elem, min_size=count, max_size=count))
    datatype = draw(st.sampled_from(["FP32", "FP16", "INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL", "FP64", "BYTES"]))
    return model, {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


def test_near_valid_tensors_get_200_or_400_never_5xx(live):
    url, _ = live
    codes: set[int] = set()
    with httpx.Client(base_url=url, timeout=30) as c:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(near_valid_bodies())
        def fuzz(case):
            model, body = case
            r = c.post(f"/v2/models/{model}/infer", json=body)
            codes.add(r.status_code)
            assert r.status_code in (200, 400), f"{model} {body} -> {r.status_code}: {r.text[:300]}"
            if r.status_code == 400:
                assert "\n" not in r.json()["error"]

        fuzz()
    assert codes == {200, 400}, f"fuzzing saw only {codes}"
