"""Config loading: TOML < env < CLI, and errors that name file, key and type."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pifarm.appliance.config import ByteSize, load_role, parse_size
from pifarm.errors import ConfigError


@dataclass(frozen=True)
class Store:
    url: str = "file:///var/lib/pifarm"
    endpoint_url: str | None = None
    part_size: ByteSize = ByteSize(8 << 20)
    retries: int = 3
    verify: bool = True
    hosts: tuple[str, ...] = ()


SECTIONS = {"store": Store}


def test_precedence_file_env_cli(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('[store]\nurl = "s3://b/p"\nretries = 5\npart_size = "16MiB"\nhosts = ["a", "b"]\n')
    cfg = load_role(SECTIONS, f, environ={})
    assert cfg["store"] == Store(url="s3://b/p", retries=5, part_size=16 << 20, hosts=("a", "b"))
    cfg = load_role(SECTIONS, f, environ={"PIFARM_STORE_URL": "s3://env", "PIFARM_STORE_VERIFY": "false",
                                          "PIFARM_STORE_HOSTS": "x,y"})
    assert (cfg["store"].url, cfg["store"].verify, cfg["store"].hosts) == ("s3://env", False, ("x", "y"))
    cfg = load_role(SECTIONS, f, environ={"PIFARM_STORE_URL": "s3://env"}, overrides={"store": {"url": "s3://cli"}})
    assert cfg["store"].url == "s3://cli"


@pytest.mark.parametrize(
    "text, match",
    [
        ('[store]\nretries = "many"\n', r"a.toml: \[store\] retries must be int"),
        ("[store]\nbogus = 1\n", r"unknown key \[store\] bogus"),
        ("[nope]\n", r"unknown section \[nope\]"),
        ("[store\n", "not valid TOML"),
        ('[store]\npart_size = "lots"\n', r"\[store\] part_size must be ByteSize"),
    ],
)
def test_malformed_files_name_file_key_and_type(tmp_path, text, match):
    f = tmp_path / "a.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_role(SECTIONS, f, environ={})


def test_missing_file_and_bad_env_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_role(SECTIONS, tmp_path / "none.toml", environ={})
    with pytest.raises(ConfigError, match="environment PIFARM_STORE_RETRIES"):
        load_role(SECTIONS, None, environ={"PIFARM_STORE_RETRIES": "x"})


@pytest.mark.parametrize("text, n", [("8GiB", 8 << 30), ("512MB", 512 * 10**6), ("1.5KiB", 1536), (4096, 4096), ("7", 7)])
def test_sizes(text, n):
    assert parse_size(text) == n
