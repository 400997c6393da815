"""Stable namespace ids: kept across runs, never reused, re-adopted from configfs when lost."""

from __future__ import annotations

import pytest

from pifarm.errors import ConfigError
from pifarm.target.nsids import NsidTable


def test_ids_are_stable_and_never_reused(tmp_path):
    t = NsidTable(tmp_path / "nsids.json")
    assert t.sync([("a@1", "d1"), ("a@2", "d2")]) == {"a@1": 1, "a@2": 2}
    assert NsidTable(tmp_path / "nsids.json").sync([("a@2", "d2"), ("a@3", "d3")]) == {"a@2": 2, "a@3": 3}
    assert t.sync([("a@1", "d1")]) == {"a@1": 4}  # a@1 was retired: it comes back under a new id
    assert t.current() == {"a@1": 4}


def test_preview_writes_nothing(tmp_path):
    t = NsidTable(tmp_path / "nsids.json")
    assert t.preview([("a@1", "d1")]) == {"a@1": 1}
    assert not (tmp_path / "nsids.json").exists()


def test_changed_digest_gets_a_new_id_and_lost_table_is_readopted(tmp_path):
    t = NsidTable(tmp_path / "nsids.json")
    t.sync([("a@1", "d1")])
    assert t.sync([("a@1", "other")]) == {"a@1": 2}
    (tmp_path / "nsids.json").unlink()
    assert t.sync([("a@1", "other"), ("b@1", "x")], adopt={"other": 7}) == {"a@1": 7, "b@1": 8}


def test_corrupt_table_says_what_to_do(tmp_path):
    (tmp_path / "nsids.json").write_text("{")
    with pytest.raises(ConfigError, match="delete it"):
        NsidTable(tmp_path / "nsids.json").sync([])
