"""Config loading: TOML < env < CLI, and errors that name file, key and type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pifarm.appliance.config import ByteSize, load_role, parse_size
from pifarm.errors import ConfigError


@dataclass(frozen=True)
class Store:
    url: str = "file:///var/lib/pifarm"
    endpoint_url: str | None = None
    part_size: ByteSize = ByteSize(8 << 20)
    retries: int = 3
    verify: bool = True
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Role:
    store: Store = field(default_factory=Store)


def test_precedence_file_env_cli(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[store]\nurl = "s3://b/p"\nretries = 5\npart_size = "16MiB"\nhosts = ["a", "b"]\n')
    cfg = load_role(Role, f, environ={})
    assert cfg.store == Store(url="s3://b/p", retries=5, part_size=16 << 20, hosts=("a", "b"))
    cfg = load_role(Role, f, environ={"PIFARM_STORE_URL": "s3://env", "PIFARM_STORE_VERIFY": "false",
                                      "PIFARM_STORE_HOSTS": "x,y"})
    assert (cfg.store.url, cfg.store.verify, cfg.store.hosts) == ("s3://env", False, ("x", "y"))
    cfg = load_role(Role, f, environ={"PIFARM_STORE_URL": "s3://env"}, overrides={"store": {"url": "s3://cli"}})
    assert cfg.store.url == "s3://cli"


@pytest.mark.parametrize(
    "text, match",
    [
        ('[store]\nretries = "many"\n', r"a.toml: \[store\] retries must be int"),
        ("[store]\nbogus = 1\n", r"unknown key \[store\] bogus"),
        ("[nope]\n", r"unknown section \[nope\]"),
        ("[store\n", "not valid TOML"),
        ('[store]\npart_size = "lots"\n', r"\[store\] part_size must be ByteSize"),
    ],
)
def test_malformed_files_name_file_key_and_type(tmp_path, text, match):
    f = tmp_path / "a.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_role(Role, f, environ={})


def test_missing_file_and_bad_env_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_role(Role, tmp_path / "none.toml", environ={})
    with pytest.raises(ConfigError, match="environment PIFARM_STORE_RETRIES"):
        load_role(Role, None, environ={"PIFARM_STORE_RETRIES": "x"})


@pytest.mark.parametrize("text, n", [("8GiB", 8 << 30), ("512MB", 512 * 10**6), ("1.5KiB", 1536), (4096, 4096), ("7", 7)])
def test_sizes(text, n):
    assert parse_size(text) == n


# -- the two roles: a bad value in every section names the file, the key and what was expected ----
from pifarm.appliance.config import find_config, load_aggregator_config, load_node_config  # noqa: E402

AGGREGATOR_BAD = [
    # (section text, key, expected): a wrong type, then a value a settings check refuses
    ('[store]\nverify_uploads = "yes"\n', "[store] verify_uploads", "bool"),
    ('[store]\nurl = "ftp://x"\n', "[store] url", "s3://bucket/prefix"),
    ('[api]\nmax_upload = "big"\n', "[api] max_upload", "int"),
    ('[api]\nlisten = "8470"\n', "[api] listen", "HOST:PORT"),
    ('[api]\ntls_cert = "c.pem"\n', "[api] tls_cert", "set together"),
    ('[registry]\nsnapshot_lifetime = 1.5\n', "[registry] snapshot_lifetime", "int"),
    ('[registry]\ndata_dir = 7\n', "[registry] data_dir", "str"),
    ('[target]\ntrsvcid = "4420"\n', "[target] trsvcid", "int"),
    ('[target]\nbuffered_io = "maybe"\n', "[target] buffered_io", "auto, on or off"),
    ('[target]\naddresses = ["not-an-ip"]\n', "[target] addresses", "IP address"),
    ('[enroll]\ndhchap = 1\n', "[enroll] dhchap", "bool"),
    ('[enroll]\ncert_days = 0\n', "[enroll] cert_days", "1..3650"),
    ('[enroll]\nlisten = "nowhere"\n', "[enroll] listen", "HOST:PORT"),
    ('[haproxy]\nweight = "heavy"\n', "[haproxy] weight", "int"),
    ('[haproxy]\nweight_degraded = 0\n', "[haproxy] weight_degraded", "1 to 256"),
    ('[haproxy]\nbind = "8000"\n', "[haproxy] bind", "HOST:PORT"),
]

NODE_BAD = [
    ('[node]\nmodels = "a"\n', "[node] models", "list"),
    ('[node]\nchannel = "beta"\n', "[node] channel", "stable, canary"),
    ('[node]\nlisten = "8080"\n', "[node] listen", "HOST:PORT"),
    ('[node]\nmetrics_listen = "x"\n', "[node] metrics_listen", "HOST:PORT"),
    ('[cache]\nscrub_interval = "daily"\n', "[cache] scrub_interval", "float"),
    ('[cache]\nscrub_interval = -1\n', "[cache] scrub_interval", ">= 0"),
    ('[s3]\nconcurrency = "4"\n', "[s3] concurrency", "int"),
    ('[s3]\npart_size = 1024\n', "[s3] part_size", "at least 64KiB"),
    ('[watcher]\nrate = "fast"\n', "[watcher] rate", "float"),
    ('[watcher]\nbackoff_base = 0\n', "[watcher] backoff_base", "> 0"),
    ('[inference]\nmax_body = "x"\n', "[inference] max_body", "int"),
    ('[inference]\nruntime = "tensorflow"\n', "[inference] runtime", "one of"),
    ('[inference.models.m]\nnum_threads = 0\n', "[inference.models.m]: num_threads", "integer >= 1"),
    ('[peers]\nmin_size = "big"\n', "[peers] min_size", "not a size"),
    ('[peers]\ntls = "maybe"\n', "[peers] tls", "auto, on or off"),
    ('[[sources]]\nkind = "http"\ndeadline = "soon"\n', "[[sources]] #1 (http) deadline", "float"),
    ('[[sources]]\nkind = "http"\noptions = {connect_timeout = "x"}\n',
     "[[sources]] #1 (http) options connect_timeout", "float"),
    ('[[sources]]\nkind = "s3"\noptions = {concurrency = "8"}\n', "[[sources]] #1 (s3) options concurrency", "int"),
    ('[[sources]]\nkind = "nvme-kernel"\noptions = {ctrl_loss_tmo = "long"}\n',
     "[[sources]] #1 (nvme-kernel) options ctrl_loss_tmo", "int"),
    ('[[sources]]\nkind = "nvme-tcp-userspace"\noptions = {hdgst = "on"}\n',
     "[[sources]] #1 (nvme-tcp-userspace) options hdgst", "bool"),
    ('[[sources]]\nkind = "nvme-kernel"\noptions = {ctrl_loss = 5}\n', "unknown key [[sources]] #1 (nvme-kernel) options ctrl_loss", "known keys"),
]


def _refused(load, tmp_path, text: str) -> str:
    f = tmp_path / "role.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(f, environ={})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{f}: "), msg  # the file first
    return msg


@pytest.mark.parametrize("text, key, expected", AGGREGATOR_BAD, ids=[k for _t, k, _e in AGGREGATOR_BAD])
def test_aggregator_bad_value_names_file_key_and_expected(tmp_path, text, key, expected):
    msg = _refused(load_aggregator_config, tmp_path, text)
    assert key in msg and expected in msg, msg


@pytest.mark.parametrize("text, key, expected", NODE_BAD, ids=[k for _t, k, _e in NODE_BAD])
def test_node_bad_value_names_file_key_and_expected(tmp_path, text, key, expected):
    msg = _refused(load_node_config, tmp_path, text)
    assert key in msg and expected in msg, msg


def test_every_section_of_both_roles_has_a_bad_value_test():
    from pifarm.appliance.config import SECTION_TYPES, AggregatorConfig, NodeConfig

    for role, cases in ((AggregatorConfig, AGGREGATOR_BAD), (NodeConfig, NODE_BAD)):
        tested = {key.split("]")[0].lstrip("[").split(".")[0] for _t, key, _e in cases if key.startswith("[")}
        assert set(SECTION_TYPES[role]) <= tested, set(SECTION_TYPES[role]) - tested
    assert any(key.startswith("[[sources]]") for _t, key, _e in NODE_BAD)


def test_a_bad_variable_is_named_instead_of_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"environment PIFARM_API_LISTEN: \[api\] listen address 'x'"):
        load_aggregator_config(None, environ={"PIFARM_API_LISTEN": "x"})
    with pytest.raises(ConfigError, match=r"command line: \[node\] channel must be one of"):
        load_node_config(None, environ={}, overrides={"node": {"channel": "beta"}})


def test_one_lookup_for_both_roles(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    assert find_config("node", a, {"PIFARM_CONFIG": str(b)}) == a  # --config first
    assert find_config("node", None, {"PIFARM_CONFIG": str(b)}) == str(b)  # then PIFARM_CONFIG
    expect = "/etc/pifarm/aggregator.toml" if Path("/etc/pifarm/aggregator.toml").is_file() else None
    assert find_config("aggregator", None, {}) == expect  # then /etc/pifarm/<role>.toml if present
    b.write_text('[node]\nchannel = "canary"\n')
    assert load_node_config(None, environ={"PIFARM_CONFIG": str(b)}).node.channel == "canary"
    b.write_text('[api]\nlisten = "127.0.0.1:9"\n')
    assert load_aggregator_config(None, environ={"PIFARM_CONFIG": str(b)}).api.listen == "127.0.0.1:9"
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_config(None, environ={"PIFARM_CONFIG": str(tmp_path / "missing.toml")})


def test_serve_reads_only_inference_of_a_node_config(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('[inference]\nruntime = "ai-edge-litert"\n[cache]\nx = 1\n')
    assert load_node_config(f, environ={}, only=("inference",)).inference.runtime == "ai-edge-litert"
    with pytest.raises(ConfigError, match=r"unknown key \[cache\] x"):
        load_node_config(f, environ={})
