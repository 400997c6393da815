"""The node reporter's readers: Pi firmware throttling bits, SoC temperature, the per-version
histogram from the inference server's /metrics, and which version a failure concerns."""

from __future__ import annotations

from pifarm.initiator.report import _failed_version, histograms, temperature, throttling


def test_throttling_bits_now_and_since_boot(tmp_path):
    f = tmp_path / "get_throttled"
    f.write_text("0x50005\n")  # undervoltage + throttled now; undervoltage + throttled since boot
    t = throttling(f)
    assert t["status"] == "throttled" and t["bits"] == 0x50005
    assert t["flags"] == ["undervoltage", "throttled", "undervoltage-since-boot", "throttled-since-boot"]
    f.write_text("0x0")
    assert throttling(f) == {"status": "ok", "bits": 0, "flags": [], "reason": None}
    f.write_text("garbage")
    assert throttling(f)["status"] == "unknown" and "garbage" in throttling(f)["reason"]


def test_throttling_elsewhere_is_unknown_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vcgencmd either
    t = throttling(tmp_path / "absent")
    assert t["status"] == "unknown" and "not a Raspberry Pi" in t["reason"]


def test_temperature(tmp_path):
    (tmp_path / "temp").write_text("48312\n")
    (tmp_path / "type").write_text("cpu-thermal\n")
    assert temperature(tmp_path) == {"celsius": 48.3, "zone": "cpu-thermal", "reason": None}
    t = temperature(tmp_path / "none")
    assert t["celsius"] is None and "no SoC thermal zone" in t["reason"]


def test_histograms_from_metrics_text():
    text = "\n".join([
        "# HELP pifarm_inference_version_request_seconds x",
        'pifarm_inference_version_request_seconds_bucket{le="0.001",model="m",version="3"} 10.0',
        'pifarm_inference_version_request_seconds_bucket{le="0.01",model="m",version="3"} 12.0',
        'pifarm_inference_version_request_seconds_bucket{le="+Inf",model="m",version="3"} 12.0',
        'pifarm_inference_version_request_seconds_count{model="m",version="3"} 12.0',
        'pifarm_inference_request_seconds_bucket{le="0.001",model="m"} 99.0',
    ])
    assert histograms(text) == {("m", "3"): [(0.001, 10), (0.01, 12)]}


def test_failed_version_from_either_side():
    assert _failed_version("version 4 (blake3:ab…) refused: not a tflite model") == 4
    assert _failed_version("v7: blob blake3:… failed verification") == 7
    assert _failed_version("no active version of m yet") is None and _failed_version(None) is None
