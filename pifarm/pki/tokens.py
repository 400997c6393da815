"""One-time, expiring enrollment tokens (`pifarm enroll token create --ttl 1h`).

A token lets exactly one node enroll, once, before it expires. Only its SHA-256 is kept, in
`<data_dir>/enroll-tokens.json` (0600), so reading the file does not let anyone enroll. A token
may name the host NQN it is for, and may allow taking over an NQN that another certificate
holds (re-enrolling a node whose disk was wiped): that is the operator's decision, never the
enrollee's.

The old fleet-wide `enroll-secret` file is still accepted when present (farms set up before
tokens), but `pifarm setup aggregator` no longer creates it and `doctor` warns about it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from pifarm.durable import atomic_write
from pifarm.errors import ConfigError, Forbidden, UsageError

TOKENS_FILE = "enroll-tokens.json"
PREFIX = "pfe1_"  # recognisable in a paste, and in a secret scanner
MAX_TTL = 7 * 86400
_LOCK = threading.Lock()
_TTL_RE = re.compile(r"^(\d+)\s*([smhd]?)\Z")


def parse_ttl(text: str | int) -> int:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds (1 s .. 7 d)."""
    m = _TTL_RE.match(str(text).strip())
    if not m:
        raise UsageError(f"--ttl {text!r}: expected a number with s, m, h or d (e.g. 1h)")
    secs = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 1 <= secs <= MAX_TTL:
        raise UsageError(f"--ttl {text!r}: must be between 1 s and 7 d")
    return secs


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.strip().encode()).hexdigest()


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class Token:
    id: str
    sha256: str
    created: str
    expires: str
    hostnqn: str = ""  # only this host may use it ("" = any)
    takeover: bool = False  # may replace an NQN enrolled under another certificate
    note: str = ""
    used_at: str = ""
    used_by: str = ""

    def state(self, now: dt.datetime | None = None) -> str:
        if self.used_at:
            return "used"
        return "expired" if _iso(now or _now()) >= self.expires else "valid"


class TokenStore:
    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir) / TOKENS_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[Token]]:
        """Read-modify-write under a thread lock and an flock (the CLI and the daemon both write)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _LOCK, open(self.path.with_name(f".{TOKENS_FILE}.lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            tokens = self.list()
            before = list(tokens)
            yield tokens
            if tokens != before:
                doc = {"tokens": [asdict(t) for t in tokens]}
                atomic_write(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o600)

    def list(self) -> list[Token]:
        try:
            doc = json.loads(self.path.read_text())
            return [Token(**t) for t in doc.get("tokens", [])]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.path} is malformed ({e}); delete it and create new tokens") from e

    def create(self, ttl: int, *, hostnqn: str = "", takeover: bool = False, note: str = "") -> tuple[str, Token]:
        """A new token: (the secret, shown once, never stored; its record)."""
        secret = PREFIX + secrets.token_urlsafe(32)
        now = _now()
        tok = Token(id=secrets.token_hex(4), sha256=_hash(secret), created=_iso(now),
                    expires=_iso(now + dt.timedelta(seconds=ttl)), hostnqn=hostnqn, takeover=takeover, note=note[:200])
        with self._locked() as tokens:
            # forget what can no longer be used after a day: the file stays small
            horizon = _iso(now - dt.timedelta(days=1))
            tokens[:] = [t for t in tokens if max(t.expires, t.used_at) >= horizon] + [tok]
        return secret, tok

    def revoke(self, token_id: str) -> bool:
        with self._locked() as tokens:
            n = len(tokens)
            tokens[:] = [t for t in tokens if t.id != token_id]
            return len(tokens) != n

    @contextlib.contextmanager
    def redeem(self, secret: str, hostnqn: str) -> Iterator[Token]:
        """Hold a valid token for `hostnqn` while the caller enrolls; it is spent only if the
        block succeeds (a refused CSR does not burn it), and no one else can use it meanwhile."""
        h = _hash(secret)
        with self._locked() as tokens:
            for i, t in enumerate(tokens):
                if hmac.compare_digest(t.sha256, h):
                    break
            else:
                raise Forbidden("enrollment token is unknown; create one with `pifarm enroll token create --ttl 1h`")
            state = t.state()
            if state != "valid":
                raise Forbidden(f"enrollment token {t.id} is {state}; create a new one with `pifarm enroll token create`")
            if t.hostnqn and t.hostnqn != hostnqn:
                raise Forbidden(f"enrollment token {t.id} is for host {t.hostnqn}, not {hostnqn}")
            yield t
            tokens[i] = Token(**{**asdict(t), "used_at": _iso(_now()), "used_by": hostnqn})
