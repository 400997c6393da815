"""The node report schema: bounds, malformed input, round trip; cohorts; histogram arithmetic."""

from __future__ import annotations

import json

import pytest

from pifarm.errors import TooLarge, UsageError
from pifarm.fleetwire.histogram import Hist, delta, merge, quantile
from pifarm.fleetwire.report import MAX_BYTES, ModelReport, Report, VersionStats, parse_report
from pifarm.signed.cohort import SPACE, bucket, member, threshold_for, wave_size


def sample(**kw) -> Report:
    stats = {"3": VersionStats(120, 1, 0.5, ((0.001, 100), (0.01, 120)))}
    return Report(node="5f0c7d0e-1b2a-4c3d-9e8f-001122334455", hostname="pi-1", address="http://10.0.0.1:8080",
                  state="ready", models={"m": ModelReport(active=3, previous=2, ready=True, serving=3, stats=stats)},
                  **kw)


def test_round_trip():
    r = sample()
    assert parse_report(r.encode()) == r


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.pop("node"), "node"),
    (lambda d: d.update(node="a b"), "node"),
    (lambda d: d.update(state="happy"), "state"),
    (lambda d: d.update(type="other"), "node-report"),
    (lambda d: d["models"]["m"].update(ready="yes"), "ready"),
    (lambda d: d["models"]["m"]["stats"]["3"].update(requests=-1), "requests"),
    (lambda d: d["models"]["m"]["stats"]["3"].update(buckets=[[0.01, 5], [0.001, 9]]), "buckets"),
    (lambda d: d["models"]["m"]["stats"]["3"].update(buckets=[[0.01, 500]]), "buckets"),
    (lambda d: d.update(interval=0), "interval"),
    (lambda d: d.update(reason="x" * 600), "reason"),
    (lambda d: d["models"].update({"../etc": {}}), "models"),
    (lambda d: d["throttling"].update(status="hot"), "throttling"),
])
def test_malformed_reports_name_the_field(mutate, where):
    d = sample().to_json()
    mutate(d)
    with pytest.raises(UsageError) as e:
        parse_report(json.dumps(d).encode())
    assert where in str(e.value) and not isinstance(e.value, TooLarge)


def test_not_json_and_too_large():
    with pytest.raises(UsageError, match="not JSON"):
        parse_report(b"{nope")
    with pytest.raises(TooLarge):
        parse_report(b" " * (MAX_BYTES + 1))
    big = sample(reason="x" * 500).to_json()
    big["models"] = {f"m{i}": big["models"]["m"] for i in range(40)}
    with pytest.raises(UsageError, match="at most"):
        parse_report(json.dumps(big).encode())


def test_cohort_membership_is_stable_and_exact():
    ids = [f"node-{i}" for i in range(20)]
    assert bucket("s", "node-1") == bucket("s", "node-1") and bucket("s", "a") != bucket("t", "a")
    assert [wave_size(("count", 1), 20), wave_size(("percent", 25), 20), wave_size(("percent", 100), 20)] == [1, 5, 20]
    t1 = threshold_for(1, ids, "seed")
    t2 = threshold_for(5, ids, "seed", floor=t1)
    in1 = [n for n in ids if member(t1, "seed", n)]
    in2 = [n for n in ids if member(t2, "seed", n)]
    assert len(in1) == 1 and len(in2) == 5 and set(in1) <= set(in2)
    assert all(member(SPACE, "seed", n) for n in ids + ["never-seen"])
    assert threshold_for(3, ids, "seed", floor=t2) == t2  # a wave never shrinks


def test_histogram_delta_merge_quantile():
    a = Hist((0.001, 0.01, 0.1), (50, 90, 100), 100)
    b = Hist((0.001, 0.01, 0.1), (60, 180, 200), 200)
    d = delta(b, a)
    assert d == Hist((0.001, 0.01, 0.1), (10, 90, 100), 100)
    assert delta(a, b) == a  # counters went down: the node restarted, all of `a` is new
    m = merge([a, Hist((0.005,), (10,), 10)])
    assert m.total == 110 and m.at(0.005) == 60
    assert quantile(Hist(), 0.99) is None
    q = quantile(a, 0.99)
    assert 0.01 < q <= 0.1
    assert quantile(Hist((0.001,), (0,), 10), 0.5) == 0.001  # in +Inf: the highest finite bound
