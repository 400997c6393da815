"""The node state file `<state_dir>/node.json`: what this node serves, from where, and whether it
is degraded. Written atomically by the watcher; read by the inference server and `pifarm status`.

    {"updated": ISO, "channel": "stable", "revision": 12,
     "degraded": false, "degraded_reason": null, "degraded_since": null,
     "models": {"name": {"version": 3, "manifest_digest": "blake3:…", "source": "s3",
                         "previous": 2}},
     "paths": {"nvme": "live" | "unreachable" | "nothing-offered" | "disabled", "s3": …, "http": …},
     "live_path": "http", "last_error": null, "inference_url": "http://127.0.0.1:8080"}

One state, three readers: `condition()` is the watcher's verdict over this file (ok, degraded,
untrusted snapshot, model refused) and `node_status()` joins it with the inference server's
/health into the one (state, reason) that `pifarm status`, the inference server's /health and the
fleet report all show, so they cannot disagree.
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
    inference_url: str | None = None  # where `pifarm status` asks the node's /health (set by `node run`)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "NodeState":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


#: the watcher's verdicts, worst first
OK, DEGRADED, UNTRUSTED, REFUSED = "ok", "degraded", "untrusted snapshot", "model refused"


def condition(st: NodeState | None) -> tuple[str, str | None]:
    """(verdict, reason) of the watcher's side: what keeps this node from following its channel."""
    if st is None:
        return OK, None
    if st.degraded:
        return DEGRADED, st.degraded_reason or "registry and storage unreachable"
    if st.last_error:
        return UNTRUSTED, st.last_error
    refused = [f"{n}: {m['error']}" for n, m in sorted(st.models.items()) if m.get("error")]
    if refused:
        return REFUSED, "; ".join(refused)
    return OK, None


def node_status(st: NodeState | None, health: dict | None, down: str | None = None) -> tuple[str, str | None]:
    """The node's one (state, reason): "ready", "degraded" (serving, but not following its channel:
    unreachable registry, untrusted snapshot, refused model) or "not-ready" (the inference server
    is down or not every model is loaded). `health` is the inference server's /health body (None
    when it did not answer; `down` says why)."""
    verdict, why = condition(st)
    watcher = None if verdict == OK else why if verdict == DEGRADED else f"{verdict}: {why}"
    if health is None or not health.get("ready"):
        serving = (down or "inference server not answering") if health is None else (
            health.get("reason") or health.get("status") or "not ready")
        # the watcher's verdict is often the cause (nothing to serve because the snapshot is untrusted)
        return "not-ready", f"{watcher}; {serving}" if watcher else serving
    if watcher:
        return "degraded", watcher
    return "ready", None


def read_state(state_dir: str | os.PathLike) -> NodeState | None:
    """The last state written, or None when there is none (or it is unreadable)."""
    try:
        return NodeState.from_json(json.loads((Path(state_dir) / STATE_NAME).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_state(state_dir: str | os.PathLike, state: NodeState) -> None:
    atomic_write_json(Path(state_dir) / STATE_NAME, state.to_json())
