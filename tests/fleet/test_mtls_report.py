"""Over mTLS a node reports without a token: its client certificate names it (the enrolled host
record of the certificate's serial holds its host id, the node id). Real aggregator, real
enrollment through `pifarm setup node`."""

from __future__ import annotations

import json

import httpx
import pytest

from pifarm.fleetwire.report import ModelReport, Report
from pifarm.pki.farm import NodeTls
from tests.appliance.test_mtls import _setup_node, farm  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_an_enrolled_node_reports_as_itself_over_mtls_and_only_as_itself(farm, tmp_path):  # noqa: F811
    root, r = _setup_node(tmp_path, farm, "pi7")
    assert r.returncode == 0, r.stdout + r.stderr
    hostid = (root / "etc/nvme/hostid").read_text().strip()
    ctx = NodeTls(root / "etc/pifarm/tls").ssl_context()
    rep = Report(node=hostid, hostname="pi7", state="ready", models={"m": ModelReport(active=1, ready=True)})
    url = farm.url + "/v1/fleet/report"
    ok = httpx.post(url, content=rep.encode(), verify=ctx, timeout=10)
    assert ok.status_code == 200, ok.text
    other = Report(node="another-node", state="degraded")
    r = httpx.post(url, content=other.encode(), verify=ctx, timeout=10)
    assert r.status_code == 403 and "names node" in r.json()["error"] and hostid in r.json()["error"]
    nodes = httpx.get(farm.url + "/v1/fleet", verify=ctx, timeout=10).json()["nodes"]
    assert [(n["node"], n["auth"], n["state"]) for n in nodes] == [(hostid, "mtls", "ready")], json.dumps(nodes)
