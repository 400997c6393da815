"""The node state file `<state_dir>/node.json`: what this node serves, from where, and whether it
is degraded. Written atomically by the watcher; read by the inference server and `pifarm status`.

    {"updated": ISO, "channel": "stable", "revision": 12,
     "degraded": false, "degraded_reason": null, "degraded_since": null,
     "models": {"name": {"version": 3, "manifest_digest": "blake3:…", "source": "s3",
                         "previous": 2}},
     "paths": {"nvme": "live" | "unreachable" | "nothing-offered" | "disabled", "s3": …, "http": …},
     "live_path": "http", "last_error": null}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pifarm.durable import atomic_write_json

STATE_NAME = "node.json"


@dataclass
class NodeState:
    updated: str = ""
    channel: str = "stable"
    revision: int = -1
    degraded: bool = False
    degraded_reason: str | None = None
    degraded_since: str | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    live_path: str | None = None
    last_error: str | None = None  # the last snapshot refused (bad signature, rollback, expired)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "NodeState":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def read_state(state_dir: str | os.PathLike) -> NodeState | None:
    """The last state written, or None when there is none (or it is unreadable)."""
    try:
        return NodeState.from_json(json.loads((Path(state_dir) / STATE_NAME).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_state(state_dir: str | os.PathLike, state: NodeState) -> None:
    atomic_write_json(Path(state_dir) / STATE_NAME, state.to_json())
