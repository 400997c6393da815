"""Where the gRPC endpoint listens: `[inference] grpc_listen` (env PIFARM_INFERENCE_GRPC_LISTEN)."""

from __future__ import annotations

import pytest

from pifarm.errors import ConfigError
from pifarm.inference.settings import InferenceSettings


def test_default_is_the_rest_host_and_next_port_and_explicit_wins():
    assert InferenceSettings().grpc_address("0.0.0.0", 8080) == ("0.0.0.0:8081", False)
    assert InferenceSettings().grpc_address("::1", 9000) == ("[::1]:9001", False)
    assert InferenceSettings().grpc_address("127.0.0.1", 0) == ("127.0.0.1:0", False)
    assert InferenceSettings(grpc_listen="127.0.0.1:7000").grpc_address("0.0.0.0", 8080) == ("127.0.0.1:7000", True)
    assert InferenceSettings(grpc_listen=":7000").grpc_address("127.0.0.1", 8080) == ("0.0.0.0:7000", True)
    assert InferenceSettings(grpc_listen="off").grpc_address("0.0.0.0", 8080) == (None, False)


@pytest.mark.parametrize("bad", ["8081", "host:", "h:99999", "h:x"])
def test_a_bad_address_is_one_config_error(bad):
    with pytest.raises(ConfigError, match="grpc_listen must be HOST:PORT"):
        InferenceSettings(grpc_listen=bad)
