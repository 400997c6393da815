"""The registry CLI surface: exit codes 0/1/2, one-line errors, direct (--data-dir) and HTTP modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from pifarm.appliance.cli import main
from pifarm.signed.integrity import digest_bytes
from tests.support.procs import free_port


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_keys_generate_writes_private_key_0600_and_never_overwrites(capsys, tmp_path):
    code, out, _ = run(capsys, "keys", "generate", "--out", str(tmp_path / "k"))
    assert code == 0 and "key id" in out
    assert oct(os.stat(tmp_path / "k" / "signing.key").st_mode & 0o777) == "0o600"
    before = (tmp_path / "k" / "signing.key").read_bytes()
    code, _, err = run(capsys, "keys", "generate", "--out", str(tmp_path / "k"))
    assert code == 1 and "already exists" in one_line_error(err)
    assert (tmp_path / "k" / "signing.key").read_bytes() == before


def test_direct_mode_publish_models_promote_rollback_retire(capsys, tmp_path, face_model):
    d = str(tmp_path / "agg")
    code, out, _ = run(capsys, "publish", str(face_model), "--name", "face", "--channel", "stable", "--data-dir", d)
    assert code == 0 and "published face version 1, stable" in out
    v2 = tmp_path / "v2.tflite"
    v2.write_bytes(face_model.read_bytes() + b"2")
    code, out, _ = run(capsys, "publish", str(v2), "--name", "face", "--data-dir", d, "--json", "--label", "k=v")
    assert code == 0 and json.loads(out)["version"] == 2 and json.loads(out)["document"]["signed"]["labels"] == {"k": "v"}
    assert run(capsys, "promote", "face", "2", "--channel", "stable", "--data-dir", d)[0] == 0
    code, out, _ = run(capsys, "models", "--data-dir", d, "--json")
    assert json.loads(out)["face"]["channels"] == {"stable": 2}
    code, out, _ = run(capsys, "rollback", "face", "--channel", "stable", "--data-dir", d)
    assert code == 0 and "rolled back to version 1" in out
    assert run(capsys, "retire", "face", "2", "--data-dir", d)[0] == 0
    code, out, _ = run(capsys, "models", "--data-dir", d)
    assert code == 0 and "face" in out
    code, out, _ = run(capsys, "show", "face", "1", "--data-dir", d)
    assert json.loads(out)["signed"]["version"] == 1


@pytest.mark.parametrize("argv,needle", [
    (["publish", "X", "--name", "Bad Name", "--data-dir", "D"], "invalid model name"),
    (["publish", "X", "--name", "m", "--registry", "http://127.0.0.1:1", "--data-dir", "D"], "not both"),
    (["publish", "X", "--name", "m"], "no registry given"),
    (["publish", "X"], "Missing option '--name'"),
    (["promote", "m", "1", "--channel", "beta", "--data-dir", "D"], "Invalid value"),
    (["publish", "X", "--name", "m", "--label", "novalue", "--data-dir", "D"], "KEY=VALUE"),
    (["publish", "X", "--name", "m", "--registry", "ftp://x"], "must start with http"),
])
def test_usage_errors_exit_2(capsys, tmp_path, face_model, argv, needle):
    argv = [str(face_model) if a == "X" else str(tmp_path / "d") if a == "D" else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err


def test_failures_exit_1_with_one_line(capsys, tmp_path, face_model):
    d = str(tmp_path / "agg")
    code, _, err = run(capsys, "promote", "ghost", "1", "--channel", "stable", "--data-dir", d)
    assert code == 1 and "ghost" in one_line_error(err)
    code, _, err = run(capsys, "publish", str(tmp_path / "missing.tflite"), "--name", "m", "--data-dir", d)
    assert code == 1 and "does not exist" in one_line_error(err)
    code, _, err = run(capsys, "models", "--registry", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "unreachable" in one_line_error(err)


def test_http_mode_against_the_real_daemon(capsys, aggregator, face_model, tmp_path):
    url = aggregator.url
    (tmp_path / "wrong").write_text("wrong\n")
    code, _, err = run(capsys, "publish", str(face_model), "--name", "face", "--registry", url,
                       "--token-file", str(tmp_path / "wrong"))
    assert code == 1 and "HTTP 403" in one_line_error(err)
    code, _, err = run(capsys, "publish", str(face_model), "--name", "face", "--registry", url, "--token", "wrong")
    # the old form still works, and says the token was visible to every local user (issue 11 #6)
    assert code == 1 and "HTTP 403" in err and "warning: --token on the command line is visible" in err
    (tmp_path / "token").write_text(aggregator.token + "\n")
    code, _, err = run(capsys, "publish", str(face_model), "--name", "face", "--registry", url)
    assert code == 1 and "HTTP 401" in one_line_error(err)
    code, out, _ = run(capsys, "publish", str(face_model), "--name", "face", "--channel", "canary",
                       "--registry", url, "--token-file", str(tmp_path / "token"))
    assert code == 0 and "published face version 1, canary" in out
    code, out, _ = run(capsys, "models", "--registry", url, "--json")
    assert json.loads(out)["face"]["channels"] == {"canary": 1}
    code, _, err = run(capsys, "promote", "face", "9", "--channel", "stable", "--registry", url,
                       "--token-file", str(tmp_path / "token"))
    assert code == 1 and "no version 9" in one_line_error(err)
    # the daemon holds the data dir: direct mode says so instead of corrupting it
    code, _, err = run(capsys, "publish", str(face_model), "--name", "x", "--data-dir", str(aggregator.data_dir))
    assert code == 1 and "in use by another pifarm process" in one_line_error(err)
    # ...while reading beside the running daemon is fine
    code, out, _ = run(capsys, "models", "--data-dir", str(aggregator.data_dir), "--json")
    assert code == 0 and json.loads(out)["face"]["channels"] == {"canary": 1}
    code, out, _ = run(capsys, "show", "face", "1", "--registry", url)
    assert code == 0 and json.loads(out)["signed"]["name"] == "face"


def test_token_from_environment_and_config_errors(aggregator_factory, tmp_path, face_model):
    agg = aggregator_factory(env={"PIFARM_API_TOKEN": "env-token"})
    empty = digest_bytes(b"")
    r = httpx.put(f"{agg.url}/v1/blobs/{empty}", params={"size": 0}, content=b"",
                  headers={"Authorization": "Bearer env-token"})
    assert r.status_code == 201
    assert not (agg.data_dir / "api-token").exists()
    bad = tmp_path / "agg.toml"
    bad.write_text('[api]\nmax_upload = "lots"\n')
    cmd = [sys.executable, "-m", "pifarm", "aggregator", "run", "--config", str(bad), "--data-dir", str(tmp_path / "x")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "[api] max_upload must be int" in p.stderr and str(bad) in p.stderr
    p = subprocess.run(cmd[:5] + ["--config", str(tmp_path / "none.toml")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "does not exist" in p.stderr
    bad.write_text('[store]\nurl = "ftp://nope"\n')
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "[store] url" in p.stderr


def test_reading_a_data_dir_without_a_registry_says_so(capsys, tmp_path):
    code, _, err = run(capsys, "models", "--data-dir", str(tmp_path / "nothing"))
    assert code == 1 and "no registry in" in one_line_error(err)
    assert not (tmp_path / "nothing").exists()
