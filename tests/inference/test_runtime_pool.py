"""Runtime selection, delegate fallback, sessions, batching policy and the worker pool."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest

from pifarm.appliance.demo import samplemodel as sm
from pifarm.errors import ConfigError, InferenceError
from pifarm.inference.batching import BatchPolicy, Job, split, stack
from pifarm.inference.loader import VerifiedModel
from pifarm.inference.model import ModelVersion, buckets
from pifarm.inference.pool import Overloaded, Retired, WorkerPool
from pifarm.inference.runtime import DelegateSpec, available, build_interpreter, resolve
from pifarm.inference.settings import InferenceSettings, ModelSettings

LIN = dict(in_features=16, out_features=4)


def version(model: bytes, **settings) -> ModelVersion:
    vm = VerifiedModel("m", 1, "blake3:" + "0" * 64, None, model, None)
    return ModelVersion(vm, resolve("auto"), ModelSettings(**settings))


def test_auto_prefers_ai_edge_litert_and_unknown_names_are_config_errors():
    assert "ai-edge-litert" in available()
    assert resolve("auto").name == "ai-edge-litert"
    with pytest.raises(ConfigError, match="unknown TFLite runtime"):
        resolve("tensorflow")


def test_a_runtime_that_is_not_installed_says_how_to_get_one():
    # The project venv has numpy>=2, so tflite-runtime lives in its own venv (test_tflite_runtime.py).
    if "tflite-runtime" in available():
        assert resolve("tflite-runtime").name == "tflite-runtime"
    else:
        with pytest.raises(ConfigError, match="pip install"):
            resolve("tflite-runtime")


def test_runtime_refusing_a_model_is_an_inference_error():
    with pytest.raises(InferenceError, match="refused the model"):
        build_interpreter(resolve(), b"\x00" * 64)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # litert's Delegate.__del__
def test_delegate_that_fails_to_load_falls_back_to_cpu_with_a_warning():
    built = build_interpreter(resolve(), sm.linear_model(), 1, DelegateSpec("/nonexistent/libai_hat_delegate.so"))
    assert "failed to load" in built.delegate_warning and "running on CPU" in built.delegate_warning
    it = built.interpreter
    x = np.ones((1, 16), np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    assert np.allclose(it.get_tensor(it.get_output_details()[0]["index"]), sm.expected("linear", x, 0, **LIN), atol=1e-5)


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"\[inference.models.m\]: unknown key max_bach"):
        InferenceSettings(models={"m": {"max_bach": 4}})
    with pytest.raises(ConfigError, match="min_workers .* must not exceed max_workers"):
        InferenceSettings(models={"m": {"min_workers": 3, "max_workers": 2}})
    with pytest.raises(ConfigError, match="runtime must be one of"):
        InferenceSettings(runtime="tf")
    s = InferenceSettings(defaults={"num_threads": 2}, models={"m": {"max_batch": 4}})
    assert s.for_model("m").num_threads == 2 and s.for_model("m").max_batch == 4 and s.configured == ["m"]


def test_buckets_cover_every_batch_size_up_to_max():
    assert buckets(8) == (1, 2, 4, 8)
    assert buckets(6) == (1, 2, 4, 6)
    assert buckets(1) == (1,)


def test_linear_model_is_batchable_and_a_session_pads_to_buckets():
    mv = version(sm.linear_model(16, 4, 2), batching="on", max_batch=8)
    session = mv.prepare()
    assert mv.batch.batchable and mv.batch.enabled
    assert mv.inputs[0].shape == (-1, 16)
    for rows in (1, 3, 8, 11):  # 3 pads to 4; 11 is over max_batch and gets its own size
        x = np.random.default_rng(rows).standard_normal((rows, 16)).astype(np.float32)
        (y,) = session.run([x])
        assert y.shape == (rows, 4)
        assert np.allclose(y, sm.expected("linear", x, 2, **LIN), atol=1e-5)


def test_nobatch_model_is_not_batchable():
    mv = version(sm.nobatch_model(8, 1))
    mv.prepare()
    assert not mv.batch.batchable and "leading batch dimension" in mv.batch.reason
    assert mv.inputs[0].shape == (8,)


def test_batching_off_is_respected():
    mv = version(sm.linear_model(), batching="off")
    mv.prepare()
    assert not mv.batch.enabled and mv.inputs[0].shape == (1, 16)


def test_policy_gathers_only_with_a_queue_and_a_short_wait():
    p = BatchPolicy(True, max_batch=8, max_delay=0.002, min_queue=2, max_mean_wait=0.005)
    assert not p.should_gather(1, 0.0)
    assert p.should_gather(2, 0.001)
    assert not p.should_gather(5, 0.010)
    assert not BatchPolicy(False).should_gather(100, 0.0)


def test_stack_and_split_are_inverse():
    jobs = [Job([np.full((n, 2), n, np.float32)], n) for n in (1, 3, 2)]
    merged = stack(jobs)
    assert merged[0].shape == (6, 2)
    parts = split([merged[0] * 10], jobs)
    assert [p[0].shape[0] for p in parts] == [1, 3, 2]
    assert all((p[0] == 10 * n).all() for p, n in zip(parts, (1, 3, 2)))


def make_pool(model: bytes, **settings):
    mv = version(model, **settings)
    first = mv.prepare()
    ms = mv.settings
    batches: list[int] = []
    policy = BatchPolicy(mv.batch.enabled, ms.max_batch, ms.max_delay_ms / 1e3, ms.batch_min_queue,
                         ms.batch_max_mean_wait_ms / 1e3)
    return WorkerPool("m", mv.new_session, first, ms, policy, on_batch=batches.append), batches


BIG = dict(in_features=1024, out_features=1220)


def occupy(pool) -> concurrent.futures.Future:
    """Keep the pool's only worker busy (8000 rows through ~5 MB of weights) so jobs queue up."""
    busy = pool.submit([np.ones((8000, 1024), np.float32)], 8000)
    deadline = time.monotonic() + 10
    while pool.queue_depth and time.monotonic() < deadline:  # until the worker has taken it
        time.sleep(0.001)
    return busy


def test_queued_requests_are_batched_and_each_gets_its_own_rows():
    pool, batches = make_pool(sm.large_model(0), batching="on", max_batch=8, max_delay_ms=50.0,
                              batch_max_mean_wait_ms=60_000.0, min_workers=1, max_workers=1)
    try:
        busy = occupy(pool)
        xs = [np.full((1, 1024), i / 24, np.float32) for i in range(24)]
        futs = [pool.submit([x], 1) for x in xs]
        outs = [f.result(timeout=60) for f in futs]
        busy.result(timeout=60)
        for x, (y,) in zip(xs, outs):
            assert np.allclose(y, sm.expected("linear", x, 0, **BIG), atol=1e-3)
        assert batches[1:] == [8, 8, 8], f"24 queued rows should go as three batches of 8: {batches}"
    finally:
        pool.close()


def test_a_lone_request_is_never_batched():
    pool, batches = make_pool(sm.linear_model(), batching="on", max_delay_ms=1000.0)
    try:
        pool.submit([np.ones((1, 16), np.float32)], 1).result(timeout=30)
        assert batches == [1]
    finally:
        pool.close()


def test_pool_grows_to_max_workers_under_load_and_shrinks_back():
    pool, _ = make_pool(sm.large_model(0), batching="off", min_workers=1, max_workers=3, idle_seconds=0.2)
    try:
        x = np.ones((1, 1024), np.float32)
        futs = [pool.submit([x], None) for _ in range(60)]
        grown = pool.workers  # spawned synchronously by submit() while the queue outgrew the idle workers
        concurrent.futures.wait(futs, timeout=60)
        assert all(f.exception() is None for f in futs)
        assert grown == 3, f"the pool grew to {grown} workers under a queue of 60"
        deadline = time.monotonic() + 30
        while pool.workers > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.workers == 1, "idle workers above min_workers did not exit"
    finally:
        pool.close()


def test_full_queue_is_refused_and_closed_pool_retires():
    pool, _ = make_pool(sm.large_model(0), batching="on", min_workers=1, max_workers=1, queue_limit=2)
    try:
        # One job of 8000 rows through ~5 MB of weights keeps the only worker busy while we fill the queue.
        busy = occupy(pool)
        queued = [pool.submit([np.ones((1, 1024), np.float32)], 1) for _ in range(2)]
        with pytest.raises(Overloaded, match="already queued"):
            for _ in range(10):
                pool.submit([np.ones((1, 1024), np.float32)], 1)
        assert busy.result(timeout=60)[0].shape[0] == 8000
        assert all(f.result(timeout=60)[0].shape[0] == 1 for f in queued)
    finally:
        pool.close()
    with pytest.raises(Retired):
        pool.submit([np.ones((1, 1024), np.float32)], 1)


def test_close_lets_queued_jobs_finish():
    pool, _ = make_pool(sm.nobatch_model(8), min_workers=1, max_workers=1)
    futs = [pool.submit([np.full(8, i, np.float32)], None) for i in range(50)]
    pool.close()
    assert all(f.done() and f.exception() is None for f in futs)


def test_auto_batching_serves_unbatched_until_calibration_decides():
    from pifarm.inference.model import BATCH_GAIN, PENDING

    mv = version(sm.linear_model(), batching="auto")
    mv.prepare()
    assert mv.batch.batchable and not mv.batch.enabled and mv.needs_calibration
    d = mv.calibrate()
    assert d.reason != PENDING and d.single_ms > 0 and d.batched_ms_per_row > 0
    assert "batch 2:" in d.reason and "batch 8:" in d.reason  # a pair and a full batch are both timed
    if d.enabled:
        assert d.batched_ms_per_row < BATCH_GAIN * d.single_ms
