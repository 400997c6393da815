"""Every example in README.md is run, so the README cannot drift from the code.

- each ```toml block is loaded through the config loader of the role whose sections it uses;
- each `pifarm ...` line of a ```sh block, and each `pifarm ...` quoted in the prose, runs as
  `pifarm <command> --help`, and every flag it shows must be one of that command's options;
  `make X` names a Makefile target;
- the ```text command overview names only commands that exist, and every top-level command;
- each ```python block's imports run, and every `pifarm.x.y[.Name]` and repository path quoted
  in backticks exists.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pifarm.appliance.cli import cli, main
from pifarm.appliance.config import SECTION_TYPES, AggregatorConfig, NodeConfig, load_role
from pifarm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(lang: str) -> list[tuple[int, str]]:
    """(line number, text) of every fenced block in `lang`."""
    return [(README.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(README) if m.group(1) == lang]


def _id(blocks_: list[tuple[int, str]]) -> list[str]:
    return [f"README.md:{line}" for line, _ in blocks_]


# -- config snippets ------------------------------------------------------------------------------
def _role(doc_sections: set[str]) -> type:
    for role, sections in SECTION_TYPES.items():
        names = set(sections) | ({"sources"} if role is NodeConfig else set())
        if doc_sections <= names:
            return role
    raise AssertionError(f"sections {sorted(doc_sections)} belong to no role")


@pytest.mark.parametrize("line, text", blocks("toml"), ids=_id(blocks("toml")))
def test_config_snippet_loads(tmp_path, line, text):
    import tomllib

    f = tmp_path / "snippet.toml"
    f.write_text(text)
    role = _role(set(tomllib.loads(text)))
    try:
        cfg = load_role(role, f, environ={})
    except ConfigError as e:
        raise AssertionError(f"README.md:{line}: the {role.__name__} snippet is refused: {e}") from None
    assert cfg.origin == str(f)


def test_the_readme_shows_both_roles_configs():
    roles = {_role(set(__import__("tomllib").loads(text))) for _, text in blocks("toml")}
    assert roles == {AggregatorConfig, NodeConfig}


def test_the_error_example_is_what_the_loader_says(tmp_path):
    m = re.search(r"`(/etc/pifarm/node\.toml): (\[node\] channel must be [^`]*)`", README)
    assert m, "the README's example of a config error is gone"
    f = tmp_path / "node.toml"
    f.write_text('[node]\nchannel = "beta"\n')
    with pytest.raises(ConfigError) as e:
        load_role(NodeConfig, f, environ={})
    assert str(e.value) == f"{f}: {m.group(2)}"


# -- commands -------------------------------------------------------------------------------------
def _commands(text: str) -> list[str]:
    """The `pifarm ...` invocations of a sh block: continuation lines joined, comments dropped,
    `a | pifarm b` alternatives split."""
    out = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split(" # ")[0].strip()
        if line.startswith("#"):
            continue
        for part in re.split(r"\s\|\s(?=pifarm )", line):
            if part.startswith("pifarm "):
                out.append(part)
    return out


def resolve(words: list[str]) -> tuple[list[str], click.Command]:
    """The longest command path of `words` in the pifarm tree."""
    path: list[str] = []
    cmd: click.Command = cli
    for w in words:
        if isinstance(cmd, click.Group) and w in cmd.commands:
            cmd = cmd.commands[w]
            path.append(w)
        else:
            break
    return path, cmd


def _flags(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))
            if o.startswith("-")} | {"--help", "-h"}


SH = [(line, c) for line, text in blocks("sh") for c in _commands(text)]
#: commands quoted in the prose, e.g. `pifarm volume inspect FILE [--trusted-key signing.pub]`
INLINE = [(README.count("\n", 0, m.start()) + 1, m.group(1)) for m in re.finditer(r"`(pifarm [^`]+)`", README)]


@pytest.mark.parametrize("line, command", SH + INLINE, ids=[f"README.md:{n}:{c[:40]}" for n, c in SH + INLINE])
def test_command_example_runs_with_help_and_its_flags_exist(capsys, line, command):
    words = command.replace("[", " ").replace("]", " ").replace("|", " ").split()[1:]
    path, cmd = resolve(words)
    assert path or all(w.startswith("-") for w in words), f"README.md:{line}: `{command}` names no pifarm command"
    assert main([*path, "--help"]) == 0
    assert "Usage: pifarm " + " ".join(path) in capsys.readouterr().out
    shown = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", command.split(" > ")[0]))
    unknown = shown - _flags(cmd)
    assert not unknown, f"README.md:{line}: `pifarm {' '.join(path)}` has no option {sorted(unknown)}"


def test_make_targets_named_in_examples_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = {m for m in re.findall(r"^([\w-]+):", makefile, re.M)}
    named = {w for _, text in blocks("sh") for w in re.findall(r"^make ([\w-]+)", text, re.M)}
    assert named and named <= targets, named - targets


def test_the_command_overview_lists_real_commands_and_all_of_them():
    # `pifarm A x|y | B c | C`: each word is a subcommand of the group named last, or a command
    [(_, text)] = blocks("text")
    seen_top = set()
    for seg in re.split(r"\s{3,}|\n", text):
        words = [w for w in re.split(r"[\s|]+", seg.strip()) if w and w != "..." and not w.startswith(("[", "-"))]
        if not words or words[0] != "pifarm":
            continue
        group: click.Command | None = None
        for w in words[1:]:
            if isinstance(group, click.Group) and w in group.commands:
                continue
            assert w in cli.commands, f"overview: {w!r} in {seg.strip()!r} is neither a command nor a subcommand"
            group = cli.commands[w]
            seen_top.add(w)
    assert set(cli.commands) <= seen_top, f"commands missing from the overview: {sorted(set(cli.commands) - seen_top)}"


def test_the_installed_entry_point_answers_help():
    r = subprocess.run([sys.executable, "-m", "pifarm", "--help"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0 and "Usage: pifarm" in r.stdout, r.stderr


# -- python, dotted names, paths ------------------------------------------------------------------
@pytest.mark.parametrize("line, text", blocks("python"), ids=_id(blocks("python")))
def test_python_example_imports_run(line, text):
    imports = [s for s in text.splitlines() if s.startswith(("from pifarm", "import pifarm"))]
    assert imports, f"README.md:{line}: no import to check"
    for stmt in imports:
        exec(stmt, {})


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


#: `pifarm.<package>...` names; `pifarm.decode` and the like are metric or phase names, not modules
PACKAGES = {p.stem for p in (ROOT / "pifarm").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
DOTTED = sorted(n for n in set(re.findall(r"`(pifarm(?:\.\w+)+)", README)) if n.split(".")[1] in PACKAGES)
#: files the README names that a run creates (not in a fresh checkout)
GENERATED = {"bench/results.json", "bench/soak.json"}
PATHS = sorted({p for p in re.findall(r"`((?:pifarm|tests|bench|systemd)/[^`\s]*)`", README)
                if not any(c in p for c in "<*") and p not in GENERATED})


@pytest.mark.parametrize("name", DOTTED)
def test_quoted_python_names_exist(name):
    assert _resolves(name), f"README names `{name}`, which does not exist"


@pytest.mark.parametrize("path", PATHS)
def test_quoted_paths_exist(path):
    for p in _expand(path):
        assert (ROOT / p).exists(), f"README names `{path}`: {p} does not exist"


def _expand(path: str) -> list[str]:
    """`a/{b,c}.d` -> a/b.d, a/c.d."""
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _expand(path[:m.start()] + alt + path[m.end():])]


def test_shlex_can_read_every_command():
    for line, command in SH:
        shlex.split(command.replace("`", "").replace("$(", "").replace(")", ""))
