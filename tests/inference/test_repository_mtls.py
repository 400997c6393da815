"""Repository writes over mTLS: a `pifarm serve` with tls_cert, tls_key and tls_client_ca (and
no token) requires a client certificate on both endpoints, and a client that shows one may
unload and load; a client without one is refused at the TLS layer."""

from __future__ import annotations

import ssl

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from pifarm.pki.farm import AggregatorPki
from tests.inference.helpers import make_cache
from tests.support.models import model_path, require_models
from tests.support.procs import free_port, start_pifarm


@pytest.fixture
def tls_node(tmp_path):
    require_models()
    pki = AggregatorPki(tmp_path / "pki")
    pki.init(dns_names=["localhost"], ips=["127.0.0.1"])
    client = pki.issue_client("operator", tmp_path / "operator")
    tc = make_cache(tmp_path / "cache")
    tc.publish("face", 1, model_path("face_landmark").read_bytes())
    http_port, grpc_port = free_port(), free_port()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[inference]\ngrpc_listen = "127.0.0.1:{grpc_port}"\ntls_cert = "{pki.server_cert}"\n'
                   f'tls_key = "{pki.server_key}"\ntls_client_ca = "{pki.bundle}"\n'
                   '[inference.defaults]\nnum_threads = 1\nbatching = "off"\n')
    ctx = ssl.create_default_context(cafile=str(pki.bundle))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    url = f"https://127.0.0.1:{http_port}"
    proc = start_pifarm(["serve", "--cache", str(tc.root), "--config", str(cfg), "--listen", f"127.0.0.1:{http_port}"],
                        tmp_path / "serve.log", f"{url}/v2/health/ready", verify=ctx, timeout=60,
                        ready_any_status=False)
    try:
        yield {"url": url, "ctx": ctx, "pki": pki, "client": client, "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        proc.stop()


def test_mtls_client_may_unload_and_load_without_a_token(tls_node):
    with httpx.Client(base_url=tls_node["url"], verify=tls_node["ctx"], timeout=60) as c:
        assert c.post("/v2/repository/models/face/unload").status_code == 200
        assert c.get("/v2/models/face/ready").status_code == 503
        assert c.post("/v2/repository/models/face/load").status_code == 200
        assert c.get("/v2/models/face/ready").status_code == 200
    # no client certificate: refused before any HTTP
    bare = ssl.create_default_context(cafile=str(tls_node["pki"].bundle))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(f"{tls_node['url']}/v2/repository/models/face/unload", verify=bare, timeout=10)

    pki, client = tls_node["pki"], tls_node["client"]
    g = grpcclient.InferenceServerClient(tls_node["grpc"], ssl=True, root_certificates=str(pki.bundle),
                                         private_key=str(client.key), certificate_chain=str(client.cert))
    try:
        g.unload_model("face")
        assert not g.is_model_ready("face")
        g.load_model("face")
        x = np.zeros((1, 192, 192, 3), np.float32)
        inp = grpcclient.InferInput("input_1", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert g.infer("face", [inp]).as_numpy("conv2d_21").shape == (1, 1, 1, 1404)
    finally:
        g.close()
