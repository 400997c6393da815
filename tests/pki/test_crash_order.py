"""Issue 11, finding 8 (PKI part): a crash at any step of a CA rotation or of a node's key +
certificate swap leaves a usable pair behind, and never a state where `pki init` silently makes
a new CA (which would cut off every node)."""

from __future__ import annotations

import os
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

import pifarm.pki.farm as farm_mod
from pifarm.pki import certs as x
from pifarm.pki.farm import AggregatorPki, NodeTls

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Crash(BaseException):
    pass


def crashing(monkeypatch, at: int) -> list[int]:
    """Make the at-th durable write or rename of pifarm.pki.farm die (as a power cut would)."""
    n = [0]
    real_write, real_replace = farm_mod.atomic_write, os.replace

    def tick():
        n[0] += 1
        if n[0] == at:
            raise Crash()

    def write(*a, **k):
        tick()
        return real_write(*a, **k)

    def replace(*a, **k):
        tick()
        return real_replace(*a, **k)

    monkeypatch.setattr(farm_mod, "atomic_write", write)
    monkeypatch.setattr(farm_mod.os, "replace", replace)
    return n


def pair_matches(cert, key) -> bool:
    return x.read_cert(cert).public_key().public_bytes(*SPKI) == x.read_key(key).public_key().public_bytes(*SPKI)


def test_a_crash_anywhere_in_a_rotation_keeps_a_ca(tmp_path, monkeypatch):
    base = tmp_path / "base"
    AggregatorPki(base).init(dns_names=["localhost"], ips=["127.0.0.1"])
    old = x.fingerprint(x.read_cert(base / "pki" / "ca.crt"))
    for at in range(1, 40):
        d = tmp_path / f"run{at}"
        shutil.copytree(base, d)
        with monkeypatch.context() as m:
            crashing(m, at)
            try:
                new = AggregatorPki(d).rotate()[0]
                finished = True
            except Crash:
                finished, new = False, None
        pki = AggregatorPki(d)
        pki.init()  # what the next `pifarm setup aggregator` / `pki init` does
        ca = x.fingerprint(x.read_cert(d / "pki" / "ca.crt"))
        assert ca == old or pki.phase() == "staged", f"crash at step {at}: a CA nobody rotated to"
        assert pair_matches(d / "pki" / "ca.crt", d / "pki" / "ca.key"), f"crash at step {at}"
        bundle = [x.fingerprint(c) for c in x.bundle_certs(d / "pki")]
        assert ca in bundle and old in bundle, f"crash at step {at}: bundle {bundle}"
        if finished:
            assert ca == new
            break
    else:
        pytest.fail("rotate never completed")


def test_a_crash_anywhere_in_a_key_swap_leaves_a_matching_pair(tmp_path, monkeypatch):
    pki = AggregatorPki(tmp_path / "agg")
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    base = tmp_path / "tls-base"
    pki.issue_client("pi1", base)
    for at in range(1, 10):
        d = tmp_path / f"tls{at}"
        shutil.copytree(base, d)
        key = x.new_key()
        cert = x.issue(*pki.ca(), key.public_key(), "pi1", kind="client", days=30)
        with monkeypatch.context() as m:
            crashing(m, at)
            try:
                NodeTls(d).store(key_pem=x.key_pem(key), cert_pem=x.pem(cert), bundle_pem=pki.bundle.read_bytes())
                done = True
            except Crash:
                done = False
        tls = NodeTls(d)
        assert tls.exists()
        assert pair_matches(tls.cert, tls.key), f"crash at step {at}: node.crt and node.key do not match"
        tls.ssl_context()  # and it loads
        if done:
            break


def test_init_refuses_half_a_ca(tmp_path):
    from pifarm.errors import ConfigError

    pki = AggregatorPki(tmp_path)
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    (tmp_path / "pki" / "ca.key").unlink()
    with pytest.raises(ConfigError, match="part of a CA"):
        pki.init()
