"""How fast the `pifarm` command starts (issue 18): C1 `pifarm --help`, C2 `pifarm status`.

Baseline, measured in the same run: the CLI as it was before the house refactor (commit BASE,
`git archive`d into the work dir), where importing the CLI loaded every command module and the
config loader pulled in cryptography and pydantic. Both run as fresh interpreters from the same
venv, alternately, many times; `ratio` = median start-to-exit time now / before (lower is better).
`status` reads a real node.json, so both versions do the whole command. `floor_ms` is a bare
interpreter importing click, timed in the same loop: what no CLI can go below. Without the git history
(a shallow or exported checkout) there is no baseline and the module says so.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "b0e2f08"  # the last commit before the house refactor (issue 18)
RUNS = int(os.environ.get("PIFARM_BENCH_CLI_RUNS", "15"))
RUNNER = "import sys; sys.path.insert(0, sys.argv[1]); from pifarm.appliance.cli import main; sys.exit(main(sys.argv[2:]))"
FLOOR = "import click.core"


def _checkout(rev: str, dest: Path) -> Path:
    """The `pifarm` package of commit `rev` under dest (nothing else of the tree)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "pifarm"], stdout=f, check=True,
                       stderr=subprocess.PIPE, timeout=120)
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    return dest


def _time(root: Path | None, argv: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-c", RUNNER, str(root), *argv] if root else [sys.executable, "-c", FLOOR]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"pifarm {' '.join(argv)} from {root} exited {r.returncode}: {r.stderr.decode()[-400:]}")
    return dt


def _node_state(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "node.json").write_text(json.dumps({
        "updated": "2026-12-04T00:00:00Z", "channel": "stable", "revision": 7, "degraded": False,
        "models": {"m": {"version": 3, "source": "http"}}, "paths": {"http": "live"}, "live_path": "http",
    }))


def run(workdir: Path) -> dict:
    try:
        before = _checkout(BASE, workdir / "before")
    except (subprocess.CalledProcessError, FileNotFoundError, OSError) as e:
        reason = e.stderr.decode().strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        print(f"b_cli: no baseline (commit {BASE} not in this checkout: {reason}); C1/C2 not measured",
              file=sys.stderr)
        return {}
    now = REPO
    state = workdir / "state"
    _node_state(state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIFARM_")}
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    cases = {"C1": ("pifarm --help: start to exit", ["--help"]),
             "C2": ("pifarm status: start to exit", ["status", "--state-dir", str(state)])}
    # --help imported no command's dependencies before either: it can only approach the floor
    goals = {"C1": "<=1.0", "C2": "<=0.5"}
    out = {}
    for cid, (what, argv) in cases.items():
        for root in (before, now):  # warm the page cache and write .pyc files first
            _time(root, argv, env)
        t_before, t_now, t_floor = [], [], []
        for _ in range(RUNS):
            t_before.append(_time(before, argv, env))
            t_now.append(_time(now, argv, env))
            t_floor.append(_time(None, [], env))
        b, n, f = (statistics.median(t) for t in (t_before, t_now, t_floor))
        out[cid] = {"what": f"{what}, now / before the house refactor (median of {RUNS})", "ratio": round(n / b, 3),
                    "goal": goals[cid], "detail": {"before_ms": round(b * 1000, 1), "now_ms": round(n * 1000, 1),
                                                   "floor_ms": round(f * 1000, 1), "base": BASE}}
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pifarm-b_cli-") as d:
        print(json.dumps(run(Path(d)), indent=2))
