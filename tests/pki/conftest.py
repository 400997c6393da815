"""A farm CA in a temp data dir and the real enrollment routes (FastAPI TestClient, no network)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from pifarm.pki.farm import AggregatorPki, make_csr
from pifarm.pki import certs as x
from pifarm.registry.enroll_api import enroll_app
from pifarm.target.hosts import HostStore


class Farm:
    def __init__(self, data):
        self.data = data
        self.pki = AggregatorPki(data)
        self.pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
        self.hosts = HostStore(data / "target" / "hosts.json")
        # the aggregator's hook: allow the host on the target, with a DH-HMAC-CHAP secret
        self.client = TestClient(enroll_app(data, register_host=lambda rec: self.hosts.allow(
            rec.hostnqn, dhchap=True).get("dhchap_key")))

    def enroll(self, token: str, hostnqn: str | None = None, name: str = "pi1", csr: str | None = None):
        key = x.new_key()
        body = {"secret": token, "hostnqn": hostnqn or f"nqn.2014-08.org.nvmexpress:uuid:{uuid.uuid4()}",
                "hostid": str(uuid.uuid4()), "hostname": name, "csr": csr or make_csr(key, name)}
        r = self.client.post("/v1/enroll", json=body)
        return r, key


@pytest.fixture
def farm(tmp_path):
    return Farm(tmp_path / "agg")
