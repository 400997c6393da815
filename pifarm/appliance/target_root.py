"""Which nvmet tree `[target] configfs_root` names, and the KernelTarget wired to it.

A path is the kernel's configfs (or a directory laid out like it). `fake:FILE` is the test double
`pifarm.testing.fake_configfs` kept in FILE: a way to try `pifarm target ...` and the aggregator's
target sync without root or nvmet (README, "configfs_root = fake:FILE"). The dispatch lives here,
where the appliance wires the target, because the target package may not import test doubles
(tests/test_layering.py); the double is imported only when such a root is asked for.
"""

from __future__ import annotations

import os

from pifarm.target.configfs import Root
from pifarm.target.exporter import KernelTarget
from pifarm.target.settings import TargetSettings

__all__ = ["FAKE_PREFIX", "open_root", "kernel_target"]

FAKE_PREFIX = "fake:"


def open_root(spec: str | os.PathLike) -> Root:
    """The nvmet root `spec` names: a path, or `fake:FILE` (an in-memory tree persisted in FILE)."""
    s = str(spec)
    if s.startswith(FAKE_PREFIX):
        from pifarm.testing.fake_configfs import FakeConfigfs

        return Root(FakeConfigfs.persistent(s[len(FAKE_PREFIX):]))
    return Root.at(s)


def kernel_target(settings: TargetSettings, data_dir: str | os.PathLike) -> KernelTarget:
    """A KernelTarget for the configured tree, fake roots included; nothing is touched yet."""
    return KernelTarget(settings, data_dir, open_root=open_root)
