"""Stable namespace ids, persisted in the data dir (`<data>/target/nsids.json`).

A model version keeps its nsid for as long as it is served, across restarts and reboots; a
retired version's nsid is not handed out again (ids only grow), so a node that still remembers
"nsid 7" can never be shown a different model under it. Namespaces are found by UUID anyway;
stable ids keep `nvme list` readable and keep the kernel from re-announcing unchanged namespaces.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from pifarm.errors import ConfigError, Conflict
from pifarm.durable import atomic_write_json

__all__ = ["NsidTable", "MAX_NSID"]

MAX_NSID = 0xFFFFFFFE


class NsidTable:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _load(self) -> dict:
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"next": 1, "assigned": {}}
        except ValueError as e:
            raise ConfigError(f"{self.path} is corrupt ({e}); delete it and run `pifarm target apply` "
                              f"(namespaces are re-adopted from configfs by UUID)") from e
        if not isinstance(d.get("next"), int) or not isinstance(d.get("assigned"), dict):
            raise ConfigError(f"{self.path} is not an nsid table; delete it to rebuild")
        return d

    def _save(self, d: dict) -> None:
        atomic_write_json(self.path, d)

    def current(self) -> dict[str, int]:
        return {k: v["nsid"] for k, v in self._load()["assigned"].items()}

    def preview(self, wanted: Iterable[tuple[str, str]], adopt: Mapping[str, int] | None = None) -> dict[str, int]:
        """What `sync` would assign, without writing anything (for `pifarm target plan`)."""
        return self.sync(wanted, adopt, persist=False)

    def sync(self, wanted: Iterable[tuple[str, str]], adopt: Mapping[str, int] | None = None,
             persist: bool = True) -> dict[str, int]:
        """Assign nsids to `wanted` [(key, manifest_digest)], drop the rest; return {key: nsid}.

        `adopt` maps manifest digests to nsids already live in configfs, so a lost table is
        rebuilt without renumbering what nodes are connected to.
        """
        if not persist:
            return self._assign(self._load(), list(wanted), adopt, save=False)[1]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)  # the daemon and the CLI may both sync
            d, out = self._assign(self._load(), list(wanted), adopt)
            return out

    def _assign(self, d: dict, wanted: list[tuple[str, str]], adopt: Mapping[str, int] | None,
                save: bool = True) -> tuple[dict, dict[str, int]]:
        old = d["assigned"]
        new: dict[str, dict] = {}
        for key, digest in wanted:
            e = old.get(key)
            if e and e.get("digest") == digest:
                new[key] = e
        used = {e["nsid"] for e in new.values()}
        for key, digest in wanted:
            if key in new:
                continue
            nsid = (adopt or {}).get(digest)
            if nsid is None or nsid in used:
                nsid = self._next(d, used)
            new[key] = {"nsid": nsid, "digest": digest}
            used.add(nsid)
            d["next"] = max(d["next"], nsid + 1)
        if new != old:
            d["assigned"] = new
            if save:
                self._save(d)
        return d, {k: v["nsid"] for k, v in new.items()}

    @staticmethod
    def _next(d: dict, used: set[int]) -> int:
        n = d["next"]
        while n <= MAX_NSID and n in used:
            n += 1
        if n <= MAX_NSID:
            return n
        # ids ran out (four billion publishes): fall back to the lowest free one
        for i in range(1, MAX_NSID + 1):
            if i not in used:
                return i
        raise Conflict("no free namespace ids left")
