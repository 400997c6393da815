"""Issue 11, finding 10: every name, digest and NQN check matches the whole string (a trailing
newline used to pass `re.match(...$)`), and malformed numeric headers are a 4xx, never a 500."""

from __future__ import annotations

import pytest

from pifarm.errors import ConfigError, PifarmError, UsageError

HEX = "ab" * 32
NQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"


def checks():
    from pifarm.initiator import identity
    from pifarm.initiator.nvme_tcp import parse_address
    from pifarm.pki import certs
    from pifarm.signed import integrity, manifest
    from pifarm.target import hosts

    return [
        (integrity.digest_hex, f"blake3:{HEX}"),
        (manifest.check_name, "mobilenet"),
        (certs.check_hostnqn, NQN),
        (hosts.check_nqn, NQN),
        (identity.check_hostnqn, NQN),
        (parse_address, "agg.local:4420"),
    ]


@pytest.mark.parametrize("check,good", checks(), ids=lambda x: getattr(x, "__qualname__", ""))
@pytest.mark.parametrize("tail", ["\n", "\r\n", "\n\n"])
def test_a_trailing_newline_is_refused(check, good, tail):
    check(good)
    with pytest.raises((UsageError, ConfigError, PifarmError)):
        check(good + tail)


def test_cache_and_pki_patterns_match_the_whole_name():
    from pifarm.cache.store import HEX_RE, PARTIAL_RE
    from pifarm.pki.certs import HOSTID_RE, NAME_RE

    assert HEX_RE.match(HEX) and not HEX_RE.match(HEX + "\n")
    assert PARTIAL_RE.match(HEX + ".partial") and not PARTIAL_RE.match(HEX + ".partial\n")
    assert NAME_RE.match("pi-01") and not NAME_RE.match("pi-01\n")
    assert not HOSTID_RE.match("11111111-2222-3333-4444-555555555555\n")


def test_target_nqn_refuses_control_characters():
    from pifarm.target.hosts import check_nqn

    with pytest.raises(UsageError):
        check_nqn("nqn.2024-01.io.pifarm:a\x01b")


def _parse_range():
    try:
        from pifarm.registry.routes.blobs import parse_range
    except ImportError:  # before the API split into routers
        from pifarm.registry.api import parse_range
    return parse_range


def test_range_of_thousands_of_digits_is_416_not_500():
    parse_range = _parse_range()
    huge = "9" * 5000  # int() of more than 4300 digits raises ValueError (the 500)
    with pytest.raises(UsageError):  # UsageError on a Range is answered 416
        parse_range(f"bytes={huge}-", 100)
    with pytest.raises(UsageError):
        parse_range(f"bytes={huge}-{huge}", 100)
    assert parse_range(f"bytes=-{huge}", 100) == (0, 100)  # a suffix longer than the blob: all of it
    assert parse_range(f"bytes=0-{huge}", 100) == (0, 100)


@pytest.mark.parametrize("value", ["²", "١٢", "1" * 5000, "-1", " 3", ""])
def test_inference_header_content_length_garbage_is_400(value):
    from pifarm.inference.codec import BadInput
    from pifarm.inference.protocol import parse_request

    with pytest.raises(BadInput):
        parse_request(b'{"inputs": []}', value)
