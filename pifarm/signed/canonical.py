"""Canonical JSON: the exact bytes that are signed and hashed.

Sorted keys, no insignificant white space, UTF-8, no floats (a float's text form is not stable
across implementations, so signed documents carry integers and strings only).
"""

from __future__ import annotations

import json
from typing import Any

from pifarm.errors import UsageError


def _check(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise UsageError(f"signed documents may not contain floats ({where})")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UsageError(f"signed documents need string keys ({where})")
            _check(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check(v, f"{where}[{i}]")


def canonical_bytes(value: Any) -> bytes:
    _check(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
