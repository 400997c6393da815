"""Aggregator settings: TLS wiring for uvicorn, listen parsing, env overrides, its explicit parts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from pifarm.appliance.aggregator import PARTS, uvicorn_ssl_kwargs
from pifarm.appliance.config import load_aggregator_config
from pifarm.errors import ConfigError
from pifarm.listen import parse_listen
from pifarm.registry.settings import ApiSettings, StoreSettings


def test_tls_settings_reach_uvicorn():
    assert uvicorn_ssl_kwargs(ApiSettings()) == {}
    kw = uvicorn_ssl_kwargs(ApiSettings(tls_cert="c.pem", tls_key="k.pem"))
    assert kw == {"ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"}
    kw = uvicorn_ssl_kwargs(ApiSettings(tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem"))
    assert kw["ssl_ca_certs"] == "ca.pem" and kw["ssl_cert_reqs"] == ssl.CERT_REQUIRED


@pytest.mark.parametrize("kw,needle", [
    ({"tls_cert": "c.pem"}, "set together"),
    ({"tls_client_ca": "ca.pem"}, "needs tls_cert"),
    ({"listen": "8470"}, "HOST:PORT"),
    ({"listen": "h:99999"}, "HOST:PORT"),
    ({"max_upload": 0}, "positive"),
])
def test_bad_api_settings_are_refused(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        ApiSettings(**kw)


def test_listen_and_store_url_parsing():
    assert parse_listen("[::1]:8470") == ("::1", 8470)
    assert StoreSettings(url="s3://b/p").kind == "s3" and StoreSettings().kind == "fs"
    with pytest.raises(ConfigError, match="names no bucket"):
        StoreSettings(url="s3:///p")


def test_env_and_flags_override_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text('[api]\nlisten = "127.0.0.1:1000"\nmax_upload = 10\n[store]\nurl = "s3://file-bucket/x"\n')
    monkeypatch.setenv("PIFARM_STORE_URL", "s3://env-bucket/y")
    monkeypatch.setenv("PIFARM_STORE_ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("PIFARM_API_TOKEN", "tok")
    s = load_aggregator_config(cfg, data_dir=tmp_path / "d", listen="127.0.0.1:2000")
    assert s.api.listen == "127.0.0.1:2000" and s.api.max_upload == 10 and s.api.token == "tok"
    assert s.store.url == "s3://env-bucket/y" and s.store.endpoint_url == "http://127.0.0.1:8333"
    assert s.registry.data_dir == str(tmp_path / "d")


def test_the_aggregators_parts_are_one_explicit_list():
    # no discovery: the parts are named in pifarm.appliance.aggregator.PARTS, and nothing else in
    # the package is picked up by its file name
    import pifarm.appliance as pkg

    assert [f.__module__ for f in PARTS] == ["pifarm.appliance.aggregator_enroll", "pifarm.appliance.aggregator_target"]
    assert all(f.__name__ == "extend" for f in PARTS)
    assert not list(Path(pkg.__path__[0]).glob("aggext_*.py"))
