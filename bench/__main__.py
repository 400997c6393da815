"""`make bench`: run every bench/b_*.py, print a table of ratios, write bench/results.json.

Each module exposes `run(workdir: pathlib.Path) -> dict[str, dict]` returning
`{"P3": {"what": "...", "ratio": 0.93, "goal": ">=0.9", "detail": {...}}}`. Ratios compare
against a baseline measured in the same run; nothing here asserts a time.
Select modules with `python -m bench NAME...` (e.g. `python -m bench b_registry`).
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("b_*.py"))
    results: dict[str, dict] = {}
    failed = []
    for name in names:
        try:
            mod = importlib.import_module(f"bench.{name}")
            with tempfile.TemporaryDirectory(prefix=f"pifarm-{name}-") as d:
                results.update(mod.run(Path(d)))
        except Exception:
            failed.append(name)
            traceback.print_exc()
    out = HERE / "results.json"
    old = json.loads(out.read_text()) if out.exists() and argv else {}
    old.update(results)
    out.write_text(json.dumps(old, indent=2, sort_keys=True))
    table = Table(title="pifarm benchmarks (ratios against baselines measured in the same run)")
    for col in ("id", "what", "ratio", "goal", "detail"):
        table.add_column(col, overflow="fold")
    for k in sorted(results, key=lambda s: (len(s), s)):
        r = results[k]
        detail = ", ".join(f"{a}={b}" for a, b in (r.get("detail") or {}).items())
        table.add_row(k, r["what"], f"{r['ratio']:.3f}", r.get("goal", ""), detail)
    Console(width=160).print(table)
    if failed:
        print(f"benchmark modules that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
