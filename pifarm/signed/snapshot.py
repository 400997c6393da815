"""The registry-wide signed snapshot that nodes watch.

    {"type": "snapshot", "revision": 42, "expires": "2026-12-04T10:00:00Z",
     "models": {"mobilenet": {"channels": {"stable": {"version": 3, "manifest_digest": "blake3:…"},
                                           "canary": {...}},
                              "versions": [{"version": 3, "manifest_digest": "blake3:…"}, …]}},
     "rollouts": {"mobilenet": {"version": 4, "manifest_digest": "blake3:…", "cohort": 1073741824,
                                "seed": "r7f3…"}}}

`rollouts` is optional (absent when no rollout runs, so older snapshots and older nodes stay
valid): a node on `stable` whose `cohort.bucket(seed, node_id) < cohort` runs the rollout's
version instead of the channel's (see `Snapshot.desired`).

`verify_snapshot` is what every node runs, whatever transport delivered the document: signature,
then rollback (a revision below the highest seen), then freeze (an expired snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pifarm.errors import IntegrityError
from pifarm.signed.cohort import SPACE, member
from pifarm.signed.integrity import digest_hex
from pifarm.signed.manifest import check_name
from pifarm.signed.signing import TrustedKeys

CHANNELS = ("stable", "canary")
DEFAULT_LIFETIME = timedelta(days=7)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(s: str) -> datetime:
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"bad timestamp {s!r} (expected YYYY-MM-DDTHH:MM:SSZ)") from e


@dataclass(frozen=True)
class VersionPointer:
    version: int
    manifest_digest: str
    #: the NVMe namespace id the registry assigned this version (in `versions` only; optional, so
    #: older snapshots parse; not part of equality: a channel's pointer names the same version)
    nsid: int | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = {"version": self.version, "manifest_digest": self.manifest_digest}
        if self.nsid is not None:
            out["nsid"] = self.nsid
        return out

    @classmethod
    def from_json(cls, d: Any) -> "VersionPointer":
        try:
            nsid = d.get("nsid")
            if nsid is not None and (not isinstance(nsid, int) or isinstance(nsid, bool) or not 1 <= nsid <= 0xFFFFFFFE):
                raise ValueError(f"nsid {nsid!r} is not 1..4294967294")
            p = cls(int(d["version"]), str(d["manifest_digest"]), nsid)
            digest_hex(p.manifest_digest)
            return p
        except (KeyError, TypeError, ValueError, Exception) as e:
            raise IntegrityError(f"malformed version pointer {d!r}") from e


@dataclass(frozen=True)
class ModelEntry:
    channels: dict[str, VersionPointer]
    versions: tuple[VersionPointer, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": {c: p.to_json() for c, p in sorted(self.channels.items())},
            "versions": [v.to_json() for v in self.versions],
        }


@dataclass(frozen=True)
class RolloutPointer:
    """A rollout in the snapshot: the version a cohort of `stable` nodes runs instead."""

    version: int
    manifest_digest: str
    cohort: int  # 0 .. cohort.SPACE (everyone)
    seed: str

    @property
    def pointer(self) -> VersionPointer:
        return VersionPointer(self.version, self.manifest_digest)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "manifest_digest": self.manifest_digest, "cohort": self.cohort,
                "seed": self.seed}

    @classmethod
    def from_json(cls, d: Any) -> "RolloutPointer":
        p = VersionPointer.from_json(d)
        try:
            cohort, seed = d["cohort"], d["seed"]
        except (KeyError, TypeError) as e:
            raise IntegrityError(f"malformed rollout {d!r}") from e
        if not isinstance(cohort, int) or isinstance(cohort, bool) or not 0 <= cohort <= SPACE \
                or not isinstance(seed, str) or not 0 < len(seed) <= 64:
            raise IntegrityError(f"malformed rollout {d!r} (cohort 0..2**32, seed a short string)")
        return cls(p.version, p.manifest_digest, cohort, seed)


@dataclass(frozen=True)
class Snapshot:
    revision: int
    expires: str
    models: dict[str, ModelEntry]
    rollouts: dict[str, RolloutPointer] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": "snapshot",
            "revision": self.revision,
            "expires": self.expires,
            "models": {n: m.to_json() for n, m in sorted(self.models.items())},
        }
        if self.rollouts:  # absent otherwise: the bytes of a snapshot without rollouts do not change
            out["rollouts"] = {n: r.to_json() for n, r in sorted(self.rollouts.items())}
        return out

    @classmethod
    def from_json(cls, d: Any) -> "Snapshot":
        if not isinstance(d, dict) or d.get("type") != "snapshot":
            raise IntegrityError("document is not a snapshot")
        try:
            models = {}
            for name, m in (d.get("models") or {}).items():
                check_name(name)
                models[name] = ModelEntry(
                    channels={c: VersionPointer.from_json(p) for c, p in (m.get("channels") or {}).items() if c in CHANNELS},
                    versions=tuple(VersionPointer.from_json(v) for v in m.get("versions") or []),
                )
            rev = d["revision"]
            if not isinstance(rev, int) or rev < 0:
                raise ValueError("revision must be a non-negative integer")
            parse_iso(d["expires"])
            rollouts = {}
            for name, r in (d.get("rollouts") or {}).items():
                check_name(name)
                rollouts[name] = RolloutPointer.from_json(r)
            return cls(rev, d["expires"], models, rollouts)
        except IntegrityError:
            raise
        except Exception as e:
            raise IntegrityError(f"malformed snapshot: {e}") from e

    def channel(self, model: str, channel: str) -> VersionPointer | None:
        m = self.models.get(model)
        return m.channels.get(channel) if m else None

    def desired(self, channel: str, only: list[str] | None = None,
                node_id: str | None = None) -> dict[str, VersionPointer]:
        """What a node on `channel` should run: canary falls back to stable where unset; a node
        following stable (`node_id` given) whose id falls in a rollout's cohort runs its version."""
        out = {}
        for name, m in self.models.items():
            if only and name not in only:
                continue
            explicit = m.channels.get(channel) if channel != "stable" else None  # canary set for this model
            p = explicit or (m.channels.get("stable") if channel in ("stable", "canary") else None)
            r = self.rollouts.get(name)
            if r is not None and explicit is None and (r.cohort >= SPACE or node_id and member(r.cohort, r.seed, node_id)):
                p = r.pointer
            if p:
                out[name] = p
        return out


def verify_snapshot(
    document: Any,
    trusted: TrustedKeys,
    highest_seen: int = -1,
    now: datetime | None = None,
) -> Snapshot:
    """Check signature, rollback and freeze; return the snapshot or raise IntegrityError."""
    body = trusted.verify(document, what="snapshot")
    snap = Snapshot.from_json(body)
    if snap.revision < highest_seen:
        raise IntegrityError(
            f"snapshot revision {snap.revision} is older than revision {highest_seen} already seen (rollback refused)"
        )
    if parse_iso(snap.expires) <= (now or utcnow()):
        raise IntegrityError(f"snapshot revision {snap.revision} expired at {snap.expires} (freeze refused)")
    return snap


def verify_manifest(document: Any, trusted: TrustedKeys, expected_digest: str | None = None):
    """Check a signed manifest and, when given, that it is the one the snapshot points at."""
    from pifarm.signed.manifest import Manifest, manifest_digest

    body = trusted.verify(document, what="manifest")
    if expected_digest is not None and manifest_digest(body) != expected_digest:
        raise IntegrityError(
            f"manifest digest {manifest_digest(body)} differs from {expected_digest} named by the snapshot"
        )
    return Manifest.from_json(body)
