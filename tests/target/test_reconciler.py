"""The reconciler's promises, checked over many random starting points on the fake kernel:
from any reachable tree, one `apply(diff(...))` reaches the desired state (the fake refusing
anything out of kernel order), the next diff is empty, and connected namespaces are untouched."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pifarm.errors import ConfigfsError, UsageError
from pifarm.signed.integrity import digest_bytes
from pifarm.target.configfs import Mode, Root
from pifarm.target.dhchap import gen_dhchap_key
from pifarm.target.reconciler import Op, apply, diff, render
from pifarm.target.spec import Export, Scope, TargetSpec, build_spec, observe
from pifarm.testing.fake_configfs import FakeConfigfs

NQN = "nqn.2014-08.org.pifarm:aggregator:test"
HOSTS = [f"nqn.2014-08.org.pifarm:node:n{i}" for i in range(3)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("vols")
    out = []
    for i in range(1, 7):
        p = d / f"m-v{i}.vol"
        p.write_bytes(b"\0" * 4096)
        out.append(Export("m", i, digest_bytes(bytes([i])), str(p)))
    return out


def spec(exports, versions, hosts, port_addr, keyed=frozenset()):
    ex = [e for e in exports if e.version in versions]
    hs = {h: ({"dhchap_key": str(gen_dhchap_key(h, 1, secret=bytes(32)))} if h in keyed else {}) for h in hosts}
    return build_spec(subsystem_nqn=NQN, exports=ex, nsids={e.key: e.version for e in ex},
                      ports={1: port_addr}, hosts=hs, buffered_io=False)


states = st.tuples(
    st.frozensets(st.integers(1, 6)),
    st.frozensets(st.sampled_from(HOSTS)),
    st.sampled_from([("127.0.0.1", 4420), ("127.0.0.1", 4421), ("::1", 4420)]),
    st.frozensets(st.sampled_from(HOSTS)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=states, goal=states)
def test_any_state_reaches_any_other_in_one_run(exports, start, goal):
    root = Root(FakeConfigfs("6.12"))
    a, b = spec(exports, *start), spec(exports, *goal)
    apply(root, diff(a, observe(root), Scope.of(a)))
    before = observe(root)
    ops = diff(b, before, Scope.of(a) | Scope.of(b))
    apply(root, ops)  # the fake refuses any out-of-order step
    after = observe(root)
    assert diff(b, after, Scope.of(b)) == []
    # namespaces whose volume stays the same are never disabled (connected nodes keep reading)
    for nsid in start[0] & goal[0]:
        assert not any(o.path.endswith(f"namespaces/{nsid}/enable") for o in ops)
        assert after.subsystems[NQN].namespaces[nsid].enabled
    # an unchanged port keeps its link (no reconnect storm)
    if start[2] == goal[2]:
        assert not any(o.path.startswith("ports/") for o in ops)


def test_plan_is_pure_and_renders_without_secrets(exports):
    root = Root(FakeConfigfs("6.12"))
    want = spec(exports, {1}, {HOSTS[0]}, ("127.0.0.1", 4420), keyed={HOSTS[0]})
    writes_before = root.backend.writes
    ops = diff(want, observe(root), Scope.of(want))
    assert root.backend.writes == writes_before  # planning touched nothing
    text = render(ops)
    assert "dhchap_key = <secret>" in text and "DHHC-1" not in text
    assert render([]) .startswith("nothing to do")
    # build order: host before its key write; allow_any_host=0 before the link; enable last
    paths = [str(o) for o in ops]
    assert paths.index(f"mkdir  hosts/{HOSTS[0]}") < next(i for i, p in enumerate(paths) if "dhchap_key" in p)
    assert (next(i for i, p in enumerate(paths) if "attr_allow_any_host" in p)
            < next(i for i, p in enumerate(paths) if "allowed_hosts/" in p))
    assert paths.index(f"write  subsystems/{NQN}/namespaces/1/enable = 1") > paths.index(
        f"write  subsystems/{NQN}/namespaces/1/device_path = {exports[0].path}")
    assert paths[-1].startswith("link   ports/1/subsystems/")


def test_removing_a_key_recreates_the_host(exports):
    root = Root(FakeConfigfs("6.12"))
    a = spec(exports, {1}, {HOSTS[0]}, ("127.0.0.1", 4420), keyed={HOSTS[0]})
    apply(root, diff(a, observe(root), Scope.of(a)))
    b = spec(exports, {1}, {HOSTS[0]}, ("127.0.0.1", 4420))
    ops = [str(o) for o in diff(b, observe(root), Scope.of(b))]
    assert ops == [f"unlink subsystems/{NQN}/allowed_hosts/{HOSTS[0]}", f"rmdir  hosts/{HOSTS[0]}",
                   f"mkdir  hosts/{HOSTS[0]}", f"link   subsystems/{NQN}/allowed_hosts/{HOSTS[0]} -> hosts/{HOSTS[0]}"]
    apply(root, diff(b, observe(root), Scope.of(b)))
    assert root.host(HOSTS[0]).get("dhchap_key") == ""


def test_auth_unknown_kernel_fails_at_the_key_not_after_exporting(exports):
    """With no host to look at, a 6.1 kernel is only found out when the key is written: the run
    must stop there, before the host is allowed and before any port exports the subsystem."""
    root = Root(FakeConfigfs("6.1"))
    want = spec(exports, {1}, {HOSTS[0]}, ("127.0.0.1", 4420), keyed={HOSTS[0]})
    with pytest.raises(ConfigfsError, match="no DH-HMAC-CHAP.*refusing to export without authentication"):
        apply(root, diff(want, observe(root), Scope.of(want)))
    t = observe(root)
    assert t.ports == {} and t.subsystems == {}


def test_locked_attribute_change_disables_rewrites_reenables(exports):
    root = Root(FakeConfigfs("6.12"))
    a = spec(exports, {1}, set(), ("127.0.0.1", 4420))
    apply(root, diff(a, observe(root), Scope.of(a)))
    moved = Export("m", 1, exports[0].manifest_digest, exports[1].path)
    b = build_spec(subsystem_nqn=NQN, exports=[moved], nsids={"m@1": 1}, ports={1: ("127.0.0.1", 4420)},
                   hosts={}, buffered_io=False)
    assert [str(o) for o in diff(b, observe(root), Scope.of(b))] == [
        f"write  subsystems/{NQN}/namespaces/1/enable = 0",
        f"write  subsystems/{NQN}/namespaces/1/device_path = {exports[1].path}",
        f"write  subsystems/{NQN}/namespaces/1/enable = 1"]


def test_restore_scope_none_removes_everything_else(exports):
    root = Root(FakeConfigfs("6.12"))
    root.subsystem("nqn.2014-08.org.other:thing", Mode.CREATE)
    want = spec(exports, {1}, set(), ("127.0.0.1", 4420))
    assert not any("org.other" in o.path for o in diff(want, observe(root), Scope.of(want)))
    assert Op("rmdir", "subsystems/nqn.2014-08.org.other:thing") in diff(want, observe(root), None)


def test_build_spec_refuses_inconsistent_input(exports):
    with pytest.raises(UsageError, match="no namespace id"):
        build_spec(subsystem_nqn=NQN, exports=exports[:1], nsids={}, ports={}, hosts={})
    with pytest.raises(UsageError, match="twice"):
        build_spec(subsystem_nqn=NQN, exports=exports[:2], nsids={"m@1": 1, "m@2": 1}, ports={}, hosts={})
    t = build_spec(subsystem_nqn=NQN, exports=[], nsids={}, ports={}, hosts={})
    assert t.subsystems[NQN].attrs["attr_allow_any_host"] == "0" and t == TargetSpec(
        {}, {NQN: t.subsystems[NQN]}, {})


def test_cntlid_range_is_written_in_an_order_the_kernel_accepts_and_default_writes_nothing(exports):
    """Issue 17: aggregators exporting one subsystem NQN need disjoint controller id ranges. The
    kernel refuses min >= max at every single write, so moving a range up past the current
    maximum writes the maximum first, and moving it down writes the minimum first."""
    from pifarm.errors import ConfigError
    from pifarm.target.settings import TargetSettings

    root = Root(FakeConfigfs("6.1"))
    plain = build_spec(subsystem_nqn=NQN, exports=[], nsids={}, ports={}, hosts={})
    first = diff(plain, observe(root), Scope.of(plain))
    assert not [op for op in first if "cntlid" in op.path]  # the kernel's default range: no write
    apply(root, first)
    for lo, hi in ((1000, 1999), (2000, 2999), (100, 199), (1, 65519)):
        want = build_spec(subsystem_nqn=NQN, exports=[], nsids={}, ports={}, hosts={}, cntlid=(lo, hi))
        apply(root, diff(want, observe(root), Scope.of(want)))  # the fake refuses min >= max
        got = observe(root).subsystems[NQN].attrs
        assert (got["attr_cntlid_min"], got["attr_cntlid_max"]) == (str(lo), str(hi))
        assert diff(want, observe(root), Scope.of(want)) == []
    for bad in ((0, 10), (10, 10), (20, 10), (1, 65520)):
        with pytest.raises(ConfigError, match="cntlid_min/cntlid_max"):
            TargetSettings(cntlid_min=bad[0], cntlid_max=bad[1])
