"""The snapshot's optional `rollouts` field: old snapshots keep their exact bytes and verify;
a node follows the rollout only inside its cohort, canary nodes with a canary version ignore it."""

from __future__ import annotations

import pytest

from pifarm.errors import IntegrityError
from pifarm.signed.canonical import canonical_bytes
from pifarm.signed.cohort import SPACE, bucket
from pifarm.signed.signing import SigningKey, TrustedKeys
from pifarm.signed.snapshot import (ModelEntry, RolloutPointer, Snapshot, VersionPointer, iso, utcnow,
                                    verify_snapshot)

D1, D2, D3 = ("blake3:" + c * 64 for c in "123")
ENTRY = ModelEntry({"stable": VersionPointer(1, D1)}, (VersionPointer(1, D1), VersionPointer(2, D2)))


def expires() -> str:
    from datetime import timedelta

    return iso(utcnow() + timedelta(days=1))


def test_a_snapshot_without_rollouts_is_byte_for_byte_what_it_was(tmp_path):
    old = {"type": "snapshot", "revision": 3, "expires": expires(), "models": {"m": ENTRY.to_json()}}
    snap = Snapshot.from_json(old)
    assert snap.rollouts == {} and canonical_bytes(snap.to_json()) == canonical_bytes(old)
    key = SigningKey.generate()
    key.write(tmp_path)
    trusted = TrustedKeys.from_files([str(tmp_path / "signing.pub")])
    assert verify_snapshot(key.sign(old), trusted).desired("stable", node_id="n1") == {"m": VersionPointer(1, D1)}


def test_only_the_cohort_follows_the_rollout():
    nodes = [f"n{i}" for i in range(50)]
    seed = "s1"
    cohort = sorted(bucket(seed, n) for n in nodes)[9] + 1  # the 10 lowest
    snap = Snapshot(4, expires(), {"m": ENTRY}, {"m": RolloutPointer(2, D2, cohort, seed)})
    snap = Snapshot.from_json(snap.to_json())
    on_new = [n for n in nodes if snap.desired("stable", node_id=n)["m"].version == 2]
    assert len(on_new) == 10
    assert snap.desired("stable")["m"].version == 1  # no node id: never in a partial cohort
    everyone = Snapshot(5, expires(), {"m": ENTRY}, {"m": RolloutPointer(2, D2, SPACE, seed)})
    assert everyone.desired("stable")["m"].version == 2
    canary = ModelEntry({"stable": VersionPointer(1, D1), "canary": VersionPointer(3, D3)}, ENTRY.versions)
    snap = Snapshot(6, expires(), {"m": canary}, {"m": RolloutPointer(2, D2, SPACE, seed)})
    assert snap.desired("canary", node_id="n1")["m"].version == 3


@pytest.mark.parametrize("bad", [{"cohort": -1}, {"cohort": SPACE + 1}, {"seed": ""}, {"seed": 5}, {"cohort": "x"}])
def test_a_malformed_rollout_is_refused(bad):
    good = {"version": 2, "manifest_digest": D2, "cohort": 10, "seed": "s"}
    doc = {"type": "snapshot", "revision": 1, "expires": expires(), "models": {"m": ENTRY.to_json()},
           "rollouts": {"m": {**good, **bad}}}
    with pytest.raises(IntegrityError):
        Snapshot.from_json(doc)
