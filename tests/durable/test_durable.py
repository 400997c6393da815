"""pifarm.durable: whole files or none, exact modes, no leftovers, create-once."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from pifarm.durable import atomic_create, atomic_write, atomic_write_json


@pytest.fixture
def tight_umask():
    old = os.umask(0o077)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_write_replaces_whole_with_the_exact_mode_whatever_the_umask(tmp_path, tight_umask):
    p = tmp_path / "sub" / "unit.service"
    atomic_write(p, b"old", 0o644)
    atomic_write(p, b"new", 0o644)
    assert p.read_bytes() == b"new" and _mode(p) == 0o644
    atomic_write(tmp_path / "key", b"secret", 0o600)
    assert _mode(tmp_path / "key") == 0o600
    assert sorted(os.listdir(tmp_path)) == ["key", "sub"] and os.listdir(tmp_path / "sub") == ["unit.service"]


def test_json_is_sorted_and_ends_with_a_newline(tmp_path):
    atomic_write_json(tmp_path / "s.json", {"b": 1, "a": [1]})
    assert (tmp_path / "s.json").read_text() == '{\n "a": [\n  1\n ],\n "b": 1\n}\n'


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "state.json"
    atomic_write(p, b"old")
    with pytest.raises(TypeError):
        atomic_write(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["state.json"]


def test_create_never_replaces_and_one_of_racing_creators_wins_whole(tmp_path, tight_umask):
    p = tmp_path / "signing.key"
    wins, losses = [], []

    def create(i: int) -> None:
        try:
            atomic_create(p, f"key {i}\n".encode() * 1000, 0o600)
            wins.append(i)
        except FileExistsError:
            losses.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert p.read_bytes() == f"key {wins[0]}\n".encode() * 1000 and _mode(p) == 0o600
    assert os.listdir(tmp_path) == ["signing.key"]
