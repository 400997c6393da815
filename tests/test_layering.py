"""The whole import table of pifarm, in one place: who may import whom.

Every `import` in the package (module level or inside a function) is read with `ast` and
checked against ALLOWED, keyed by the top-level subpackage. A new edge that the table does not
allow fails here with the file and the import, so the house keeps its shape as it grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pifarm

PKG = Path(pifarm.__file__).parent

#: Small packages both roles read. They import only each other and `pifarm.errors`.
LEAVES = {"errors", "durable", "signed", "volume", "nvmewire", "pki", "listen", "fleetwire", "s3", "client",
          "asgiserver"}

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "listen": {"errors"},  # the one HOST:PORT parser
    "asgiserver": set(),  # uvicorn's Server without its 10 Hz tick (both roles' HTTP servers)
    "fleetwire": {"errors"},  # node reports and their histograms (fleet, rollout gates)
    "durable": set(),
    "nvmewire": {"errors"},
    "signed": {"errors", "durable"},
    "volume": {"errors", "durable", "signed"},
    "pki": {"errors", "durable", "signed", "listen", "client"},
    "s3": {"errors", "signed"},  # the S3 layer: key layout, client, URL, error mapping
    "client": {"errors", "signed"},  # the aggregator's HTTP client and the one TLS context builder
    # the aggregator's side
    "registry": LEAVES,
    "target": LEAVES,
    # the node's side: never the target, never the registry service
    "cache": LEAVES,
    "initiator": LEAVES | {"cache"},
    "inference": LEAVES | {"cache"},  # reads the cache, never the network (see NO_NETWORK)
    # the test doubles may stand in for anything but the appliance
    "testing": LEAVES | {"registry", "target", "cache", "initiator", "inference"},
    # the CLI and daemons wire everything; nothing imports it. `testing` only for the one
    # user-facing double: `[target] configfs_root = "fake:FILE"` (appliance/target_root.py)
    "appliance": LEAVES | {"registry", "target", "cache", "initiator", "inference", "testing"},
    "__main__": {"appliance"},
}

#: Network client libraries the inference server must never use: it serves from the cache.
NO_NETWORK = {"inference": ("httpx", "boto3", "botocore", "urllib.request", "http.client", "requests")}

#: `from pifarm import __version__` and the like name the package root, not a component.
ROOT_NAMES = {"__version__"}


def _component(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else ""


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pifarm":
                out += [(node.lineno, f"pifarm.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; pifarm uses absolute imports")
    return out


def violations(extra: dict[Path, str] | None = None) -> list[str]:
    """Every import the table refuses; `extra` adds modules (path -> source) not on disk."""
    bad = []
    sources = {p: None for p in sorted(PKG.rglob("*.py"))} | dict(extra or {})
    for path, source in sources.items():
        me = _component(path)
        if not me:
            continue
        assert me in ALLOWED, f"{path}: package {me!r} is not in the layering table; add it to ALLOWED"
        for line, name in _imports(path, source):
            parts = name.split(".")
            if parts[0] == "pifarm" and len(parts) > 1:
                other = parts[1]
                if other != me and other not in ROOT_NAMES and other not in ALLOWED[me]:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line}: {me} may not import pifarm.{other}")
            for banned in NO_NETWORK.get(me, ()):
                if name == banned or name.startswith(banned + "."):
                    bad.append(f"{path.relative_to(PKG.parent)}:{line}: {me} may not use {name} (no network)")
    return bad


def test_every_import_follows_the_table():
    assert violations() == []


def test_nothing_imports_the_appliance():
    assert all("appliance" not in allowed for pkg, allowed in ALLOWED.items() if pkg not in ("__main__",))


def test_leaves_import_only_leaves():
    for leaf in LEAVES:
        assert ALLOWED[leaf] <= LEAVES, leaf


def test_every_package_has_a_docstring_saying_what_it_holds():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init}: say what the package holds and who may import it"


def test_only_the_appliance_and_tests_reach_the_test_doubles():
    # components never load a test double; the appliance does for `fake:FILE` and nowhere else
    users = {pkg for pkg, allowed in ALLOWED.items() if "testing" in allowed}
    assert users == {"appliance"}, users
    appliance = PKG / "appliance"
    importers = {p.name for p in appliance.rglob("*.py") if any(n.startswith("pifarm.testing") for _, n in _imports(p))}
    assert importers == {"target_root.py"}, importers


def test_the_table_catches_a_violation():
    # the check itself can fail: a node-side module importing the target, or the network from
    # inference, is reported (checked from source text, so nothing is written into the package)
    probe = {PKG / "initiator" / "_layering_probe.py": "from pifarm.target import configfs\n",
             PKG / "inference" / "_layering_probe.py": "import httpx\n"}
    found = violations(probe)
    assert any("initiator may not import pifarm.target" in v for v in found), found
    assert any("inference may not use httpx" in v for v in found), found
