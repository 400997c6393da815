"""The fleet page and the http_sd list behind the API's own access rules: with client
certificates required ([api] tls_client_ca), no certificate, no page (refused in the handshake)."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tests.appliance.test_mtls import _ctx, _start_farm


@pytest.fixture
def agg(tmp_path):
    a = _start_farm(tmp_path)
    yield a
    a.stop()


def test_the_page_and_sd_need_a_client_certificate(agg):
    ok = _ctx(agg.admin, agg.pki.bundle)
    for path in ("/ui", "/ui/fragment", "/ui/static/fleet.js", "/v1/fleet/prometheus-sd"):
        assert httpx.get(agg.url + path, verify=ok, timeout=10).status_code == 200, path
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            httpx.get(agg.url + path, verify=_ctx(None, agg.pki.bundle), timeout=5)
    sd = httpx.get(agg.url + "/v1/fleet/prometheus-sd", verify=ok, timeout=10).json()
    assert [(g["labels"]["role"], g["labels"]["__scheme__"], g["targets"]) for g in sd] == \
        [("aggregator", "https", [f"127.0.0.1:{agg.port}"])]
