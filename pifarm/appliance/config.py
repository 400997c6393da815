"""The one config loader, for both roles: TOML file < `PIFARM_<SECTION>_<KEY>` < command line.

    AggregatorConfig   aggregator.toml: [store] [api] [registry] [target] [enroll] [haproxy]
    NodeConfig         node.toml: [node] [cache] [s3] [watcher] [inference] [peers] and [[sources]]

Which file: `--config`, else `$PIFARM_CONFIG`, else `/etc/pifarm/<role>.toml` when it exists,
else built-in defaults (`find_config`). Each component declares its settings as a frozen
dataclass; a role is a dataclass of those sections. Conversion is driven by field types all the
way down (sections, `[[sources]]` entries and each kind's `options`), so every key gets the same
checks, and every refused value, whether the type was wrong or a settings check refused it
afterwards, is one line naming the file (or variable), the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from pifarm.appliance.haproxy.settings import HaproxySettings
from pifarm.cache.settings import CacheSettings
from pifarm.errors import ConfigError
from pifarm.inference.settings import InferenceSettings
from pifarm.initiator.settings import (SOURCE_OPTIONS, NodeSettings, PeerSettings, S3Settings, SourceSpec,
                                       WatcherSettings)
from pifarm.pki.settings import EnrollSettings
from pifarm.registry.settings import ApiSettings, RegistrySettings, StoreSettings
from pifarm.target.settings import TargetSettings

ROLES = ("aggregator", "node")
DEFAULT_CONFIG = "/etc/pifarm/{role}.toml"
CONFIG_ENV = "PIFARM_CONFIG"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20,
          "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}


class ByteSize(int):
    """An int that also accepts "8GiB", "512MB", "1.5G" in config files and env vars."""


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (examples: 1048576, \"512MiB\", \"8GiB\")")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


# -- which file ---------------------------------------------------------------------------------
def find_config(role: str, config: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None) -> str | os.PathLike | None:
    """--config, else $PIFARM_CONFIG, else /etc/pifarm/<role>.toml when it exists, else None."""
    if config:
        return config
    environ = os.environ if environ is None else environ
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV]
    default = DEFAULT_CONFIG.format(role=role)
    return default if Path(default).is_file() else None


def read_toml(path: str | os.PathLike | None) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; (table, origin). A missing explicit file is an error."""
    if path is None:
        return {}, "defaults"
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f), str(p)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {p} does not exist") from e
    except IsADirectoryError as e:
        raise ConfigError(f"config file {p} is a directory") from e
    except PermissionError as e:
        raise ConfigError(f"config file {p} is not readable: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from e


# -- values -------------------------------------------------------------------------------------
def type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # "int | None": unset is the default
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, from_env: bool) -> Any:
    """Coerce a TOML value (or an env string) to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_env and value == ""):
            return None
        return convert(value, args[0], from_env)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError(f"got {value!r}")
    if tp is ByteSize:
        return ByteSize(parse_size(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int) or from_env:
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) or from_env:
            return float(value)
        raise ValueError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    if origin in (list, tuple):
        (inner, *_rest) = typing.get_args(tp) or (str,)
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        items = [convert(v, inner, from_env) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {value!r}")
        return tp(**value)
    return value


def _named_key(message: str, names: typing.Iterable[str]) -> str:
    """The field a settings check complained about: the one its message names first."""
    found = [(m.start(), n) for n in names if (m := re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message))]
    return min(found)[1] if found else ""


def refused(e: Exception, label: str, hints: Mapping[str, Any], where: Mapping[str, str], origin: str) -> ConfigError:
    """A value a settings check refused after conversion, as one line: where, key, what was expected."""
    msg = str(e)
    key = getattr(e, "key", "") or _named_key(msg, hints)
    at = where.get(key, origin)
    if msg.startswith("["):  # the check names its section and key already
        return ConfigError(f"{at}: {msg}", key=key)
    if key and msg.startswith(f"{key} "):  # ... or its key ("channel must be one of ...")
        return ConfigError(f"{at}: {label} {msg}", key=key)
    if key:
        expected = getattr(e, "expected", "") or type_name(hints[key])
        return ConfigError(f"{at}: {label} {key} must be {expected}: {msg}", key=key)
    return ConfigError(f"{at}: {label} {msg}")


def build_section(
    cls: type,
    section: str,
    table: Mapping[str, Any],
    *,
    origin: str,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> Any:
    """Instantiate dataclass `cls` from a TOML table, env vars and overrides (in rising priority).

    `environ=None` reads no variables (the entries of `[[sources]]` have none)."""
    label = label or f"[{section}]"
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ConfigError(f"{origin}: unknown key {label} {sorted(unknown)[0]}; known keys: {', '.join(sorted(names))}",
                          key=sorted(unknown)[0])
    kwargs: dict[str, Any] = {}
    where: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        env_name = f"PIFARM_{section.upper()}_{f.name.upper()}"
        if overrides and overrides.get(f.name) is not None:
            raw = overrides[f.name]
            from_env, at = isinstance(raw, str), "command line"
        elif environ is not None and env_name in environ:
            raw, from_env, at = environ[env_name], True, f"environment {env_name}"
        elif f.name in table:
            raw, from_env, at = table[f.name], False, origin
        else:
            continue
        where[f.name] = at
        try:
            kwargs[f.name] = convert(raw, hints[f.name], from_env)
        except (ValueError, TypeError, ConfigError) as e:
            raise ConfigError(f"{at}: {label} {f.name} must be {type_name(hints[f.name])}: {e}", key=f.name) from e
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ConfigError) as e:
        raise refused(e, label, hints, where, origin) from e


def build_sources(raw: Any, origin: str) -> tuple[SourceSpec, ...]:
    """`[[sources]]`: an array of tables, each with its kind's typed `options`."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{origin}: sources must be an array of tables: [[sources]] kind = \"http\" ...",
                          key="sources")
    specs = []
    for i, t in enumerate(raw, 1):
        kind = t.get("kind")
        if kind not in SOURCE_OPTIONS:
            raise ConfigError(f"{origin}: [[sources]] #{i} needs kind = one of {', '.join(sorted(SOURCE_OPTIONS))}"
                              f" (got {kind!r})", key="kind")
        label = f"[[sources]] #{i} ({kind})"
        known = {f.name for f in dataclasses.fields(SourceSpec)}
        bad = sorted(set(t) - known)
        if bad:
            raise ConfigError(f"{origin}: {label}: unknown key {bad[0]}; known: {', '.join(sorted(known))}", key=bad[0])
        table = dict(t)
        options = table.pop("options", {})
        spec = build_section(SourceSpec, "sources", table, origin=origin, environ=None, label=label)
        if not isinstance(options, dict):
            raise ConfigError(f"{origin}: {label} options must be a table, got {options!r}", key="options")
        opts = build_section(SOURCE_OPTIONS[kind], "sources", options, origin=origin, environ=None,
                             label=f"{label} options")
        specs.append(dataclasses.replace(spec, options=opts))
    return tuple(specs)


# -- roles --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheConfig(CacheSettings):
    """[cache], with sizes that also accept "8GiB" / "8MiB" in TOML and env."""

    max_bytes: ByteSize | None = None
    scrub_rate: ByteSize | None = ByteSize(32 * 2**20)


@dataclass(frozen=True)
class S3Config(S3Settings):
    """[s3], with part_size also as "16MiB"."""

    part_size: ByteSize = ByteSize(16 * 2**20)


@dataclass(frozen=True)
class PeerConfig(PeerSettings):
    """[peers], with min_size also as "16MiB"."""

    min_size: ByteSize = ByteSize(16 * 2**20)


@dataclass(frozen=True)
class AggregatorConfig:
    """aggregator.toml."""

    store: StoreSettings = field(default_factory=StoreSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    target: TargetSettings = field(default_factory=TargetSettings)
    enroll: EnrollSettings = field(default_factory=EnrollSettings)
    haproxy: HaproxySettings = field(default_factory=HaproxySettings)
    origin: str = "defaults"


@dataclass(frozen=True)
class NodeConfig:
    """node.toml."""

    node: NodeSettings = field(default_factory=NodeSettings)
    cache: CacheSettings = field(default_factory=CacheConfig)
    s3: S3Settings = field(default_factory=S3Config)
    watcher: WatcherSettings = field(default_factory=WatcherSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    peers: PeerSettings = field(default_factory=PeerConfig)  # the default chain's peer source
    sources: tuple[SourceSpec, ...] = ()
    origin: str = "defaults"


#: the dataclass each role's sections are read into ([cache] and [s3] take sizes as "8GiB" too)
SECTION_TYPES: dict[type, dict[str, type]] = {
    AggregatorConfig: {"store": StoreSettings, "api": ApiSettings, "registry": RegistrySettings,
                       "target": TargetSettings, "enroll": EnrollSettings, "haproxy": HaproxySettings},
    NodeConfig: {"node": NodeSettings, "cache": CacheConfig, "s3": S3Config, "watcher": WatcherSettings,
                 "inference": InferenceSettings, "peers": PeerConfig},
}


def load_role(
    role: type,
    path: str | os.PathLike | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    only: typing.Collection[str] | None = None,
) -> Any:
    """Read `path` into the role dataclass `role` (its fields are the sections; `sources` is the
    `[[sources]]` array). `only` reads just those sections and ignores the rest of the file (the
    inference server reads [inference] of a node config)."""
    environ = os.environ if environ is None else environ
    doc, origin = read_toml(path)
    fields = {f.name for f in dataclasses.fields(role)}
    sections = SECTION_TYPES.get(role) or {k: v for k, v in typing.get_type_hints(role).items()
                                           if k in fields - {"origin", "sources"}}
    has_sources = "sources" in fields
    if only is None:
        known = set(sections) | ({"sources"} if has_sources else set())
        unknown = set(doc) - known
        if unknown:
            listed = ", ".join(sorted(sections)) + (", [[sources]]" if has_sources else "")
            raise ConfigError(f"{origin}: unknown section [{sorted(unknown)[0]}]; known: {listed}")
    built: dict[str, Any] = {}
    for name, cls in sections.items():
        if only is not None and name not in only:
            continue
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table, got {table!r}", key=name)
        built[name] = build_section(cls, name, table, origin=origin, environ=environ,
                                    overrides=(overrides or {}).get(name))
    if has_sources and (only is None or "sources" in only):
        built["sources"] = build_sources(doc.get("sources", []), origin)
    if "origin" in fields:
        built["origin"] = origin
    return role(**built)


def load_aggregator_config(config: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None,
                           listen: str | None = None, environ: Mapping[str, str] | None = None) -> AggregatorConfig:
    """aggregator.toml (found by `find_config`); --data-dir and --listen win over file and env."""
    return load_role(AggregatorConfig, find_config("aggregator", config, environ), environ=environ,
                     overrides={"registry": {"data_dir": str(data_dir) if data_dir else None},
                                "api": {"listen": listen}})


def load_node_config(config: str | os.PathLike | None = None, *, environ: Mapping[str, str] | None = None,
                     overrides: Mapping[str, Mapping[str, Any]] | None = None,
                     only: typing.Collection[str] | None = None) -> NodeConfig:
    """node.toml (found by `find_config`) < PIFARM_SECTION_KEY < command-line overrides."""
    return load_role(NodeConfig, find_config("node", config, environ), environ=environ, overrides=overrides,
                     only=only)
