"""The node's NVMe host identity: `/etc/nvme/hostnqn` and `/etc/nvme/hostid`, written once.

These are the files nvme-cli and libnvme read. Without them libnvme derives an identity from
DMI, which a Raspberry Pi does not have, and falls back to a random NQN on every boot, which
breaks the aggregator's per-host access list. So on first start the node writes both if absent
(hostid a random UUID, hostnqn the standard `nqn.2014-08.org.nvmexpress:uuid:<hostid>`) and
from then on only reads them: an existing file is never rewritten, a malformed one is an error
to fix by hand, not something to paper over. Two processes starting together agree, because a
file is published with link(2), which fails instead of replacing.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from pifarm.errors import ConfigError

DEFAULT_ROOT = Path("/etc/nvme")
UUID_NQN_PREFIX = "nqn.2014-08.org.nvmexpress:uuid:"
NQN_MAX = 223  # NVMe base spec: NQNs are at most 223 bytes
_NQN_RE = re.compile(r"^nqn\.\d{4}-\d{2}\.[^\s/]+(:[\x21-\x7e]+)?\Z")


@dataclass(frozen=True)
class HostIdentity:
    hostnqn: str
    hostid: str  # canonical lowercase UUID
    root: Path
    created: tuple[str, ...] = ()  # file names written by this call (empty when both existed)

    def to_json(self) -> dict[str, object]:
        return {"hostnqn": self.hostnqn, "hostid": self.hostid, "root": str(self.root), "created": list(self.created)}


def identity_root(path: str | os.PathLike | None) -> Path:
    """Accept the directory or the path of its `hostnqn` file (how node.toml may name it)."""
    if path is None or str(path) == "":
        return DEFAULT_ROOT
    p = Path(path)
    return p.parent if p.name in ("hostnqn", "hostid") else p


def check_hostnqn(nqn: str, where: str = "host NQN") -> str:
    if len(nqn.encode()) > NQN_MAX or not _NQN_RE.match(nqn):
        raise ConfigError(f"{where}: {nqn!r} is not an NVMe qualified name (nqn.YYYY-MM.reverse.domain[:suffix], "
                          f"at most {NQN_MAX} bytes)")
    return nqn


def check_hostid(value: str, where: str = "host id") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as e:
        raise ConfigError(f"{where}: {value!r} is not a UUID") from e


def _read(path: Path) -> str | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    return text.strip()


def _publish(path: Path, value: str) -> bool:
    """Write `value` to `path` unless it exists; True when this call created it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror} (run the node as root or set [node] host_identity)") from e
    finally:
        tmp.unlink(missing_ok=True)


def read_identity(root: str | os.PathLike | None = None) -> HostIdentity | None:
    """The identity on disk, or None when either file is missing. Never writes."""
    r = identity_root(root)
    nqn, hid = _read(r / "hostnqn"), _read(r / "hostid")
    if nqn is None or hid is None:
        return None
    return HostIdentity(check_hostnqn(nqn, str(r / "hostnqn")), check_hostid(hid, str(r / "hostid")), r)


def ensure_identity(root: str | os.PathLike | None = None) -> HostIdentity:
    """Return the host identity, writing whichever file is missing (once, never overwriting).

    A missing hostid is taken from a `...:uuid:<UUID>` hostnqn when there is one, and a missing
    hostnqn is built from the hostid, so a half-written pair is completed consistently.
    """
    r = identity_root(root)
    try:
        r.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {r}: {e.strerror}") from e
    created = []
    for _ in range(6):  # another starter may publish between our read and our link
        nqn, hid = _read(r / "hostnqn"), _read(r / "hostid")
        if nqn is not None:
            check_hostnqn(nqn, str(r / "hostnqn"))
        if hid is not None:
            check_hostid(hid, str(r / "hostid"))
        if nqn is not None and hid is not None:
            return HostIdentity(nqn, check_hostid(hid), r, tuple(created))
        if hid is None:
            from_nqn = nqn[len(UUID_NQN_PREFIX):] if nqn and nqn.startswith(UUID_NQN_PREFIX) else None
            hid = check_hostid(from_nqn) if from_nqn else str(uuid.uuid4())
            if _publish(r / "hostid", hid):
                created.append("hostid")
            continue
        if _publish(r / "hostnqn", UUID_NQN_PREFIX + check_hostid(hid)):
            created.append("hostnqn")
    raise ConfigError(f"host identity in {r} keeps changing under us; is another process rewriting it?")
