"""Loading from the cache: the interpreter only ever gets bytes that match the signed manifest."""

from __future__ import annotations

import json

import pytest

from pifarm.appliance.demo import samplemodel as sm
from pifarm.cache.layout import CacheLayout, RefValue
from pifarm.errors import InferenceError, IntegrityError, NotFound, SignatureError
from pifarm.inference.loader import check_flatbuffer, load_verified
from pifarm.signed.signing import SigningKey, TrustedKeys
from tests.inference.helpers import make_cache

MODEL = sm.linear_model(16, 4, 1)


@pytest.fixture
def tc(tmp_path):
    return make_cache(tmp_path / "cache")


def test_loads_the_active_version_bytes(tc):
    ref = tc.publish("lin", 1, MODEL)
    vm = load_verified(CacheLayout(tc.root), "lin", ref, TrustedKeys([tc.key.public]))
    assert vm.content == MODEL and vm.version == 1 and vm.manifest_digest == ref.manifest_digest


def test_truncated_blob_is_refused_before_the_runtime(tc):
    ref = tc.publish("lin", 1, MODEL)
    tc.tamper(MODEL, MODEL[: len(MODEL) // 2])
    with pytest.raises(IntegrityError, match="bytes on disk, manifest says"):
        load_verified(CacheLayout(tc.root), "lin", ref)


def test_same_size_corruption_is_refused(tc):
    ref = tc.publish("lin", 1, MODEL)
    bad = bytearray(MODEL)
    bad[len(bad) // 2] ^= 0xFF
    tc.tamper(MODEL, bytes(bad))
    with pytest.raises(IntegrityError, match="corrupt or tampered"):
        load_verified(CacheLayout(tc.root), "lin", ref)


def test_missing_blob_and_manifest_are_not_found(tc):
    ref = tc.publish("lin", 1, MODEL)
    tc.blob_path(MODEL).unlink()
    with pytest.raises(NotFound, match="missing from the cache"):
        load_verified(CacheLayout(tc.root), "lin", ref)
    with pytest.raises(NotFound, match="manifest"):
        load_verified(CacheLayout(tc.root), "lin", RefValue(9, ref.manifest_digest))


def test_ref_naming_another_manifest_is_refused(tc):
    ref = tc.publish("lin", 1, MODEL)
    other = RefValue(1, "blake3:" + "0" * 64)
    with pytest.raises(IntegrityError, match="active ref names"):
        load_verified(CacheLayout(tc.root), "lin", other)
    assert load_verified(CacheLayout(tc.root), "lin", ref).content == MODEL


def test_manifest_signed_by_an_untrusted_key_is_refused_when_keys_are_configured(tc):
    ref = tc.publish("lin", 1, MODEL)
    with pytest.raises(SignatureError, match="unknown key"):
        load_verified(CacheLayout(tc.root), "lin", ref, TrustedKeys([SigningKey.generate().public]))


def test_edited_manifest_does_not_hash_to_the_ref(tc):
    ref = tc.publish("lin", 1, MODEL)
    p = CacheLayout(tc.root).manifest("lin", 1)
    doc = json.loads(p.read_text())
    doc["signed"]["labels"] = {"evil": "yes"}
    p.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError):
        load_verified(CacheLayout(tc.root), "lin", ref)


def test_verified_bytes_that_are_not_tflite_are_refused(tc):
    ref = tc.publish("junk", 1, b"this is not a flatbuffer at all")
    with pytest.raises(InferenceError, match="TFL3"):
        load_verified(CacheLayout(tc.root), "junk", ref)


def test_flatbuffer_check_catches_damaged_offsets():
    bad = bytearray(MODEL)
    bad[0:4] = (len(bad) + 1000).to_bytes(4, "little")  # root table offset past the end
    with pytest.raises(InferenceError, match="damaged TFLite flatbuffer|no subgraphs"):
        check_flatbuffer(bytes(bad), "m")
    check_flatbuffer(MODEL, "m")
