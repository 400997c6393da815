"""`pifarm --help` and `pifarm status` import nothing they do not use (issue 18): no crypto, no
web framework, no HTTP client, no numpy, no daemon. Checked on the set of loaded modules of a
fresh interpreter, never on a time (bench/b_cli.py measures the start time as a ratio)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pifarm.appliance.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("cryptography", "pydantic", "fastapi", "starlette", "uvicorn", "httpx", "boto3", "botocore", "numpy",
         "prometheus_client", "rich", "blake3", "watchdog", "pyudev", "grpc",
         "pifarm.appliance.node", "pifarm.appliance.aggregator", "pifarm.registry.service", "pifarm.signed.signing")

PROBE = """
import json, sys
from pifarm.appliance.cli import main
try:
    main(sys.argv[1:])
finally:
    sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def loaded(argv: list[str]) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    line = [x for x in r.stderr.splitlines() if x.startswith("MODULES ")]
    assert line, r.stderr
    return set(json.loads(line[-1][len("MODULES "):]))


def heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_help_imports_only_click_and_the_command_modules():
    assert heavy(loaded(["--help"])) == []


def test_status_imports_the_config_loader_and_node_state_only(tmp_path):
    (tmp_path / "node.json").write_text('{"channel": "stable", "revision": 3, "models": {}}')
    mods = loaded(["status", "--state-dir", str(tmp_path)])
    assert heavy(mods) == []
    assert "pifarm.appliance.config" in mods and "pifarm.cache.nodestate" in mods


@pytest.mark.parametrize("name", sorted(c.name for c in COMMANDS))
def test_each_commands_help_is_light(name):
    assert heavy(loaded([name, "--help"])) == [], name
