"""Aggregator settings: TLS wiring for uvicorn, listen parsing, env overrides, extension loading."""

from __future__ import annotations

import ssl

import pytest

from pifarm.appliance.aggregator import load_extensions, load_settings, uvicorn_ssl_kwargs
from pifarm.errors import ConfigError
from pifarm.registry.settings import ApiSettings, StoreSettings, parse_listen


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
    s = load_settings(cfg, tmp_path / "d", "127.0.0.1:2000")
    assert s["api"].listen == "127.0.0.1:2000" and s["api"].max_upload == 10 and s["api"].token == "tok"
    assert s["store"].url == "s3://env-bucket/y" and s["store"].endpoint_url == "http://127.0.0.1:8333"
    assert s["registry"].data_dir == str(tmp_path / "d")


def test_extensions_are_discovered_by_module_name(tmp_path, monkeypatch):
    import sys

    import pifarm.appliance as pkg

    (tmp_path / "aggext_zzprobe.py").write_text("def extend(ctx):\n    ctx.append('probe')\n")
    (tmp_path / "notanext.py").write_text("def extend(ctx):\n    raise AssertionError('loaded')\n")
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "pifarm.appliance.aggext_zzprobe", raising=False)
    exts = load_extensions()
    assert exts[-1].__module__ == "pifarm.appliance.aggext_zzprobe"
    calls: list = []
    exts[-1](calls)
    assert calls == ["probe"]
    assert all(f.__module__.startswith("pifarm.appliance.aggext_") for f in exts)
