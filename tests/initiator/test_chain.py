"""The `[[sources]]` factory table: lazy imports, clear errors, deadlines."""

from __future__ import annotations

import time

import pytest

from pifarm.errors import ConfigError, SourceError, SourceTimeout
from pifarm.initiator import chain
from pifarm.initiator.chain import SOURCE_KINDS, Deadlined, build_sources, load_factory
from pifarm.initiator.http_source import HttpSource
from pifarm.initiator.settings import SourceContext, SourceSpec
from pifarm.signed.signing import TrustedKeys
from tests.cache.helpers import blob


def test_contract_table_names_every_kind():
    assert set(SOURCE_KINDS) == {"http", "s3", "nvme-kernel", "nvme-tcp-userspace", "peers"}


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown source kind 'ftp'"):
        load_factory("ftp")


def test_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(chain.SOURCE_KINDS, "nvme-kernel", "pifarm.initiator.no_such_module:make_source")
    with pytest.raises(ConfigError, match="needs module pifarm.initiator.no_such_module"):
        build_sources([SourceSpec("nvme-kernel")], SourceContext(TrustedKeys()))


def test_http_source_built_from_aggregator_url():
    [src] = build_sources([SourceSpec("http", deadline=5)], SourceContext(TrustedKeys(), aggregator_url="http://127.0.0.1:9"))
    assert isinstance(src, Deadlined) and isinstance(src.inner, HttpSource) and src.name == "http"
    with pytest.raises(SourceError, match="no url and no aggregator"):
        build_sources([SourceSpec("http")], SourceContext(TrustedKeys()))


def test_s3_source_needs_a_url():
    with pytest.raises(SourceError, match=r"set \[s3\] url"):
        build_sources([SourceSpec("s3")], SourceContext(TrustedKeys()))
    assert build_sources([SourceSpec("s3")], SourceContext(TrustedKeys()), strict=False) == []


def test_bad_spec_values():
    with pytest.raises(ValueError, match="deadline"):
        SourceSpec("http", deadline=0)


class Slow:
    name = "slow"

    def chunks(self, ref, start=0):
        for _ in range(100):
            time.sleep(0.02)
            yield b"x"

    def close(self):
        pass


def test_deadline_wrapper_cuts_a_slow_source():
    with pytest.raises(SourceTimeout, match="missed its 0.1s deadline"):
        list(Deadlined(Slow(), 0.1).chunks(blob(b"x" * 100)))
