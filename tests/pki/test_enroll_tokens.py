"""Issue 11, findings 3 and 5: one-time expiring enrollment tokens, NQN takeover refused unless
the operator allowed it, and no enrollment without a pinned CA unless asked for."""

from __future__ import annotations

import json

import pytest

from pifarm.errors import Forbidden, UsageError
from pifarm.pki import revocation
from pifarm.pki.tokens import TokenStore, parse_ttl

NQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"


def test_a_token_enrolls_once(farm):
    secret, tok = TokenStore(farm.data).create(3600)
    r, _ = farm.enroll(secret)
    assert r.status_code == 200, r.text
    again, _ = farm.enroll(secret)
    assert again.status_code == 403 and "used" in again.json()["detail"]
    [t] = TokenStore(farm.data).list()
    assert t.state() == "used" and t.used_by == r.json()["hostnqn"]


def test_only_the_hash_is_stored(farm):
    secret, _ = TokenStore(farm.data).create(60)
    text = (farm.data / "enroll-tokens.json").read_text()
    assert secret not in text and secret[5:] not in text
    assert (farm.data / "enroll-tokens.json").stat().st_mode & 0o077 == 0


def test_an_expired_token_is_refused(farm):
    store = TokenStore(farm.data)
    secret, tok = store.create(60)
    doc = json.loads(store.path.read_text())
    doc["tokens"][0]["expires"] = "2020-01-01T00:00:00Z"  # as if its hour had passed
    store.path.write_text(json.dumps(doc))
    r, _ = farm.enroll(secret)
    assert r.status_code == 403 and "expired" in r.json()["detail"]


def test_unknown_token_and_wrong_host_are_refused(farm):
    assert farm.enroll("pfe1_not-a-token")[0].status_code == 403
    assert farm.enroll("anything")[0].status_code == 403  # no fleet-wide secret file: nothing else works
    secret, _ = TokenStore(farm.data).create(60, hostnqn=NQN)
    other = farm.enroll(secret)[0]
    assert other.status_code == 403 and NQN in other.json()["detail"]
    assert farm.enroll(secret, hostnqn=NQN)[0].status_code == 200


def test_a_refused_request_does_not_spend_the_token(farm):
    secret, _ = TokenStore(farm.data).create(60)
    bad = farm.enroll(secret, csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")[0]
    assert bad.status_code == 400
    assert farm.enroll(secret)[0].status_code == 200


def test_reenrolling_a_held_nqn_is_refused_unless_the_token_allows_a_takeover(farm):
    store = TokenStore(farm.data)
    first, _ = farm.enroll(store.create(60)[0], hostnqn=NQN, name="pi1")
    assert first.status_code == 200
    key1 = first.json()["dhchap_key"]
    thief, _ = farm.enroll(store.create(60)[0], hostnqn=NQN, name="evil")
    assert thief.status_code == 409 and "already enrolled" in thief.json()["detail"]
    assert farm.hosts.load()[NQN]["dhchap_key"] == key1  # the holder's secret is untouched
    taken, _ = farm.enroll(store.create(60, takeover=True)[0], hostnqn=NQN, name="pi1-new")
    assert taken.status_code == 200
    assert taken.json()["dhchap_key"] not in (None, key1)  # a fresh secret: the old one stops working
    old_serial = format(__import__("cryptography.x509", fromlist=["x"]).load_pem_x509_certificate(
        first.json()["certificate"].encode()).serial_number, "x")
    assert revocation.is_revoked(farm.data, old_serial)


def test_reenrolling_after_revocation_needs_no_takeover(farm):
    store = TokenStore(farm.data)
    assert farm.enroll(store.create(60)[0], hostnqn=NQN)[0].status_code == 200
    revocation.revoke(farm.data, NQN)
    assert farm.enroll(store.create(60)[0], hostnqn=NQN)[0].status_code == 200


def test_the_legacy_fleet_secret_still_works_while_its_file_exists(farm):
    (farm.data / "enroll-secret").write_text("old-fleet-secret\n")
    assert farm.enroll("old-fleet-secret")[0].status_code == 200


def test_ttl_parsing():
    assert parse_ttl("1h") == 3600 and parse_ttl("15m") == 900 and parse_ttl("90") == 90
    for bad in ("0", "8d", "1w", "h", "-1h", "1 h x"):
        with pytest.raises(UsageError):
            parse_ttl(bad)


def test_redeem_refuses_reuse_directly(tmp_path):
    store = TokenStore(tmp_path)
    secret, _ = store.create(60)
    with store.redeem(secret, NQN):
        pass
    with pytest.raises(Forbidden):
        with store.redeem(secret, NQN):
            pass


def test_node_enrollment_requires_a_pinned_ca_unless_tofu_is_asked_for(tmp_path):
    from pifarm.errors import SourceError
    from pifarm.pki.farm import fetch_bundle

    with pytest.raises(UsageError, match="--ca-hash"):
        fetch_bundle("https://127.0.0.1:9", ca_hash=None)
    with pytest.raises(SourceError):  # asked for: it goes to the network (nobody there)
        fetch_bundle("https://127.0.0.1:9", ca_hash=None, trust_on_first_use=True, timeout=2)
