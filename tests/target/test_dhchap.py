"""DHHC-1 secrets: the representation `nvme gen-dhchap-key` prints and the kernel parses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib

import pytest

from pifarm.errors import UsageError
from pifarm.target.dhchap import gen_dhchap_key, parse_dhchap_key

NQN = "nqn.2014-08.org.pifarm:node:n1"


@pytest.mark.parametrize("hh,length", [(0, 32), (1, 32), (2, 48), (3, 64)])
def test_generated_keys_have_the_standard_shape(hh, length):
    k = gen_dhchap_key(NQN, hh)
    s = str(k)
    assert s.startswith(f"DHHC-1:{hh:02x}:") and s.endswith(":")
    blob = base64.b64decode(s.split(":")[2])
    assert len(blob) == length + 4
    assert blob[-4:] == zlib.crc32(blob[:-4]).to_bytes(4, "little")  # CRC-32, little-endian
    assert parse_dhchap_key(s) == k
    assert "DHHC" not in repr(k) and k.key.hex() not in repr(k)


def test_transform_is_hmac_of_nqn_and_the_nvme_seed():
    secret = bytes(range(48))
    k = gen_dhchap_key(NQN, 2, secret=secret)
    assert k.key == hmac.new(secret, NQN.encode() + b"NVMe-over-Fabrics", hashlib.sha384).digest()
    assert gen_dhchap_key(NQN, 0, key_len=64, secret=bytes(64)).key == bytes(64)  # hh 00: untransformed
    assert gen_dhchap_key(NQN, 1).key != gen_dhchap_key(NQN, 1).key  # fresh randomness each time


@pytest.mark.parametrize("text,msg", [
    ("DHHC-1:01:abc", "not a DH-HMAC-CHAP secret"),
    ("DHHC-2:01:" + base64.b64encode(bytes(36)).decode() + ":", "not a DH-HMAC-CHAP secret"),
    ("DHHC-1:07:" + base64.b64encode(bytes(36)).decode() + ":", "unknown hash"),
    ("DHHC-1:01:" + base64.b64encode(bytes(20)).decode() + ":", "32, 48 or 64"),
    ("DHHC-1:01:" + base64.b64encode(bytes(36)).decode() + ":", "CRC-32"),
])
def test_bad_secrets_are_refused_clearly(text, msg):
    with pytest.raises(UsageError, match=msg):
        parse_dhchap_key(text)


def test_bad_parameters():
    with pytest.raises(UsageError):
        gen_dhchap_key(NQN, 4)
    with pytest.raises(UsageError):
        gen_dhchap_key(NQN, 1, key_len=64)
    with pytest.raises(UsageError):
        gen_dhchap_key(NQN, 1, secret=b"short")
