"""Fixtures: a real model volume on disk and the real userspace target serving it on 127.0.0.1."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pifarm.signed.integrity import digest_bytes
from pifarm.signed.manifest import FileEntry, Manifest
from pifarm.volume.format import write_volume
from pifarm.target.userspace import NamespaceExport, SubsystemExport, TargetConfig, ThreadedTarget

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
OTHER_HOST = "nqn.2014-08.org.nvmexpress:uuid:99999999-8888-7777-6666-555555555555"
SUBNQN = "nqn.2024-01.io.pifarm:test"


@dataclass
class Volume:
    path: Path
    manifest: Manifest
    blobs: dict[str, bytes]


def make_volume(root: Path, name: str = "demo", version: int = 1, sizes=(3 * 2**20 + 5, 4096, 1, 70001)) -> Volume:
    blobs = {}
    files = []
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        d = digest_bytes(data)
        blobs[d] = data
        files.append(FileEntry(f"part{i}.bin", size, d))
    store = root / "blobs"
    store.mkdir(parents=True, exist_ok=True)
    for d, data in blobs.items():
        (store / d.split(":")[1]).write_bytes(data)
    m = Manifest(name, version, "raw", tuple(files), "2026-11-27T10:00:00Z")
    path = root / "volumes" / f"{name}-{version}.vol"
    write_volume(path, m.to_json(), lambda d: store / d.split(":")[1])
    return Volume(path, m, blobs)


@pytest.fixture
def volume(tmp_path) -> Volume:
    return make_volume(tmp_path)


def target_config(vol: Volume, **sub_kw) -> TargetConfig:
    ns = NamespaceExport.from_volume(1, vol.path)
    kw = {"allowed_hosts": frozenset({HOSTNQN}), **sub_kw}
    return TargetConfig((SubsystemExport(SUBNQN, (ns,), **kw),), port=0)


@pytest.fixture
def target(volume):
    with ThreadedTarget(target_config(volume)) as t:
        yield t
