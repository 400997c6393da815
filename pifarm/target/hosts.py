"""The host allow list with per-host DH-HMAC-CHAP secrets (`<data>/target/hosts.json`, mode 0600).

`pifarm target allow-host NQN [--dhchap]` and `deny-host NQN` edit it; the node inventory (or
`[target] allowed_hosts`) can add hosts too. The file holds secrets in plaintext because the
kernel needs them in plaintext (and reads them back that way from configfs).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pifarm.errors import ConfigError, NotFound, UsageError
from pifarm.durable import atomic_write_json
from pifarm.target.dhchap import DHGROUPS, HASHES, KERNEL_HASH_NAMES, gen_dhchap_key, parse_dhchap_key

__all__ = ["HostStore", "check_nqn"]

_NQN_RE = re.compile(r"^nqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9.-]+(:[\x21-\x7e]+)?\Z|^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-fA-F-]{36}\Z")


def check_nqn(nqn: str) -> str:
    if not isinstance(nqn, str) or len(nqn.encode()) > 223 or "/" in nqn or not _NQN_RE.match(nqn):
        raise UsageError(f"invalid NQN {nqn!r}: expected nqn.YYYY-MM.reverse.domain[:name] (at most 223 bytes, no '/')")
    return nqn


class HostStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, str]]:
        """{nqn: configfs host attrs (dhchap_key, dhchap_ctrl_key, dhchap_hash, dhchap_dhgroup)}."""
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ConfigError(f"{self.path} is not valid JSON ({e}); fix or remove it") from e
        if not isinstance(d, dict) or not all(isinstance(v, dict) for v in d.values()):
            raise ConfigError(f"{self.path} is not a host table")
        return d

    def _save(self, d: dict) -> None:
        atomic_write_json(self.path, d, mode=0o600)  # holds DH-HMAC-CHAP secrets

    def allow(self, nqn: str, *, dhchap: bool = False, bidirectional: bool = False, hmac: int = 1,
              dhgroup: str = "null", key: str | None = None, ctrl_key: str | None = None) -> dict[str, str]:
        """Allow `nqn`; with dhchap, generate (or take) its secret. Returns the host's attrs."""
        check_nqn(nqn)
        if dhgroup not in DHGROUPS:
            raise UsageError(f"unknown DH group {dhgroup!r}; expected one of {', '.join(DHGROUPS)}")
        attrs: dict[str, str] = {}
        if dhchap or key or ctrl_key or bidirectional:
            k = parse_dhchap_key(key) if key else gen_dhchap_key(nqn, hmac)
            name = HASHES[hmac][0] or "sha256"
            attrs = {"dhchap_hash": KERNEL_HASH_NAMES[name], "dhchap_dhgroup": dhgroup, "dhchap_key": str(k)}
            if bidirectional or ctrl_key:
                attrs["dhchap_ctrl_key"] = str(parse_dhchap_key(ctrl_key) if ctrl_key else gen_dhchap_key(nqn, hmac))
        d = self.load()
        d[nqn] = attrs
        self._save(d)
        return attrs

    def deny(self, nqn: str) -> None:
        d = self.load()
        if nqn not in d:
            raise NotFound(f"host {nqn} is not in the allow list ({self.path})")
        del d[nqn]
        self._save(d)
