"""The pure part: fleet state -> plan -> haproxy.cfg (checked by HAProxy itself), and [haproxy]
settings refused with one clear line."""

from __future__ import annotations

import subprocess

import pytest

from pifarm.appliance.config import load_aggregator_config
from pifarm.appliance.haproxy.plan import plan, safe_name, swaps_from_rollouts
from pifarm.appliance.haproxy.render import render
from pifarm.appliance.haproxy.settings import HaproxySettings
from pifarm.errors import ConfigError
from tests.haproxy.test_sync_real import node

S = HaproxySettings(weight=100, weight_degraded=40, weight_throttled=30)


def states(p, backend="model_m"):
    return {k: (v.state, v.weight) for k, v in p.backends[backend].servers.items()}


def test_weights_and_states_from_fleet_state():
    nodes = [node("a", 1), node("b", 2, state="degraded"), node("c", 3, throttled=True),
             node("d", 4, state="degraded", throttled=True), node("e", 5, state="missing"), node("f", 6, ready=False)]
    p = plan(nodes, {}, S)
    assert states(p) == {"a": ("ready", 100), "b": ("ready", 40), "c": ("ready", 30), "d": ("ready", 30),
                         "e": ("maint", 100), "f": ("drain", 100)}
    assert set(p.backends) == {"all_models", "model_m"} and p.structure() == ("all_models", "model_m")


def test_a_rollout_drains_the_nodes_it_moves_but_never_the_last_ready_ones():
    nodes = [node("a", 1), node("b", 2), node("c", 3, serving=2)]
    r = {"active": {"m": {"state": "running", "phase": "activating", "version": 2, "members": ["a", "c"]}}}
    assert swaps_from_rollouts(nodes, r) == {"a": ("m", 2)}  # c already serves v2
    assert states(plan(nodes, r, S))["a"] == ("drain", 100)
    everyone = {"active": {"m": {"state": "running", "phase": "activating", "version": 3, "members": ["a", "b", "c"]}}}
    assert {s for s, _ in states(plan(nodes, everyone, S)).values()} == {"ready"}  # swap in place


def test_unreachable_and_unusable_addresses():
    nodes = [node("a", 1), {"node": "x", "state": "ready", "report": {"address": "https://h:1", "models": {"m": {}}}}]
    p = plan(nodes, {}, S, unreachable={"a": "refused"})
    assert states(p) == {"a": ("maint", 100)} and "x: address 'https://h:1' is not http://HOST:PORT" in p.skipped


def test_names_haproxy_accepts():
    assert safe_name("00f9fb13-ea15-4cd3-8549-c74781dc0b0a") == "00f9fb13-ea15-4cd3-8549-c74781dc0b0a"
    assert safe_name("pi 7") != safe_name("pi/7") and safe_name("").startswith("x-") and len(safe_name("y" * 200)) <= 48


def test_rendered_config_is_valid_for_haproxy(tmp_path, haproxy_bin):
    nodes = [node("a", 1, models=("m", "face.det-v2")), node("pi 07/é", 2, state="degraded"), node("c", 3, state="missing")]
    text = render(plan(nodes, {}, S), S, socket=str(tmp_path / "s.sock"), bind="127.0.0.1:8000")
    for want in ("option redispatch", "retry-on conn-failure empty-response junk-response response-timeout 503", "retries 3",
                 "option http-buffer-request",
                 "option httpchk GET /v2/models/face.det-v2/ready", "use_backend model_face.det-v2",
                 "stats socket", "level admin", "default_backend all_models", "disabled"):
        assert want in text, want
    cfg = tmp_path / "h.cfg"
    cfg.write_text(text)
    r = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr + text


@pytest.mark.parametrize("toml, words", [
    ("weight = 0", "weight must be an integer from 1 to 256"),
    ("weight_degraded = 300", "weight_degraded must be an integer from 1 to 256"),
    ("bind = 'nope'", "bind"),
    ("probe_interval = -1", "probe_interval"),
    ("retries = 50", "retries"),
])
def test_bad_settings_are_one_clear_line(tmp_path, toml, words):
    p = tmp_path / "aggregator.toml"
    p.write_text(f"[haproxy]\n{toml}\n")
    with pytest.raises(ConfigError) as e:
        load_aggregator_config(p, environ={})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_late_reports_never_empty_a_backend_but_dead_ports_do():
    nodes = [node("a", 1, state="missing"), node("b", 2, state="missing")]
    assert {s for s, _ in states(plan(nodes, {}, S)).values()} == {"ready"}  # health checks decide
    assert states(plan(nodes, {}, S, unreachable={"a": "refused", "b": "refused"})) == {
        "a": ("maint", 100), "b": ("maint", 100)}
    assert states(plan(nodes + [node("c", 3)], {}, S))["a"] == ("maint", 100)  # c serves: a stays out
