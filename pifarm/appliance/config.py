"""Role configuration: TOML file < `PIFARM_SECTION_KEY` environment < CLI flags.

Each component declares its own settings as a frozen dataclass (e.g. `registry.settings`); a
role config maps TOML sections onto those dataclasses. Conversion is driven by field types, so
every key gets the same checks and the same error: file, key, expected type, value seen.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from pifarm.errors import ConfigError

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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, from_env: bool) -> Any:
    """Coerce a TOML value (or an env string) to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_env and value == ""):
            return None
        return convert(value, args[0], from_env)
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


def build_section(
    cls: type,
    section: str,
    table: Mapping[str, Any],
    *,
    origin: str,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Instantiate dataclass `cls` from a TOML table, env vars and overrides (in rising priority)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ConfigError(f"{origin}: unknown key [{section}] {sorted(unknown)[0]}; known keys: {', '.join(sorted(names))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name = f"PIFARM_{section.upper()}_{f.name.upper()}"
        if overrides and overrides.get(f.name) is not None:
            raw, from_env, where = overrides[f.name], not isinstance(overrides[f.name], (list, dict)) and isinstance(overrides[f.name], str), "command line"
        elif env_name in environ:
            raw, from_env, where = environ[env_name], True, f"environment {env_name}"
        elif f.name in table:
            raw, from_env, where = table[f.name], False, origin
        else:
            continue
        try:
            kwargs[f.name] = convert(raw, hints[f.name], from_env)
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"{where}: [{section}] {f.name} must be {_type_name(hints[f.name])}: {e}"
            ) from e
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{origin}: [{section}] {e}") from e


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
    except PermissionError as e:
        raise ConfigError(f"config file {p} is not readable: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from e


def load_role(
    sections: Mapping[str, type],
    path: str | os.PathLike | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Load every section of a role config: {section name: settings dataclass instance}."""
    environ = os.environ if environ is None else environ
    doc, origin = read_toml(path)
    unknown = set(doc) - set(sections)
    if unknown:
        raise ConfigError(f"{origin}: unknown section [{sorted(unknown)[0]}]; known: {', '.join(sorted(sections))}")
    out = {}
    for name, cls in sections.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table")
        out[name] = build_section(cls, name, table, origin=origin, environ=environ,
                                  overrides=(overrides or {}).get(name))
    return out


# -- aggregator role ([store], [api], [registry]; other aggregator components add their sections) --
def _aggregator_sections() -> dict[str, type]:
    from pifarm.registry.settings import ApiSettings, RegistrySettings, StoreSettings
    from pifarm.target.settings import TargetSettings

    return {"store": StoreSettings, "api": ApiSettings, "registry": RegistrySettings, "target": TargetSettings}


#: section name -> settings dataclass of /etc/pifarm/aggregator.toml
AGGREGATOR_SECTIONS: dict[str, type] = _aggregator_sections()
from pifarm.pki.settings import EnrollSettings as _EnrollSettings  # noqa: E402  (issue 8: [enroll])
AGGREGATOR_SECTIONS["enroll"] = _EnrollSettings
DEFAULT_AGGREGATOR_CONFIG = "/etc/pifarm/aggregator.toml"


# -- inference server ([inference] with [inference.defaults] / [inference.models.<name>]) --
def _serve_sections() -> dict[str, type]:
    from pifarm.inference.settings import InferenceSettings

    return {"inference": InferenceSettings}


#: section name -> settings dataclass of `pifarm serve` (the node role embeds the same [inference])
SERVE_SECTIONS: dict[str, type] = _serve_sections()


# -- node role ([node], [cache], [s3], [watcher], [inference]; [[sources]] is read by appliance.node) --
def _node_sections() -> dict[str, type]:
    from dataclasses import dataclass

    from pifarm.cache.settings import CacheSettings
    from pifarm.inference.settings import InferenceSettings
    from pifarm.initiator.settings import NodeSettings, S3Settings, WatcherSettings

    # the same settings, with sizes that also accept "8GiB" / "8MiB" in TOML and env
    @dataclass(frozen=True)
    class CacheConfig(CacheSettings):
        max_bytes: ByteSize | None = None
        scrub_rate: ByteSize | None = ByteSize(32 * 2**20)

    @dataclass(frozen=True)
    class S3Config(S3Settings):
        part_size: ByteSize = ByteSize(16 * 2**20)

    return {"node": NodeSettings, "cache": CacheConfig, "s3": S3Config, "watcher": WatcherSettings,
            "inference": InferenceSettings}


#: section name -> settings dataclass of /etc/pifarm/node.toml (plus the [[sources]] array)
NODE_SECTIONS: dict[str, type] = _node_sections()
DEFAULT_NODE_CONFIG = "/etc/pifarm/node.toml"
