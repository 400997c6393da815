"""Issue 11, finding 6: pifarm's own secrets come from a file, stdin or the environment; the old
`--flag VALUE` forms still work but warn (argv is readable by every local user)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from pifarm.appliance.cli._secrets import secret_options


@click.command()
@secret_options("token", "PIFARM_TEST_TOKEN", "A secret.")
def show(token):
    click.echo(f"got {token}")


def run(args, **kw):
    return CliRunner(mix_stderr=False).invoke(show, args, **kw) if "mix_stderr" in \
        CliRunner.__init__.__code__.co_varnames else CliRunner().invoke(show, args, **kw)


def test_from_a_file_stdin_or_the_environment_without_a_warning(tmp_path):
    (tmp_path / "t").write_text("s3cret\n")
    for args, kw in ((["--token-file", str(tmp_path / "t")], {}), (["--token-file", "-"], {"input": "s3cret\n"}),
                     ([], {"env": {"PIFARM_TEST_TOKEN": "s3cret"}})):
        r = run(args, **kw)
        assert r.exit_code == 0 and "got s3cret" in r.stdout and "warning" not in r.output, (args, r.output)


def test_on_the_command_line_it_works_and_warns():
    r = run(["--token", "s3cret"])
    assert r.exit_code == 0 and "got s3cret" in r.output and "visible to every local user" in r.output


def test_a_bad_file_is_one_clear_error(tmp_path):
    (tmp_path / "two").write_text("a\nb\n")
    for path in (str(tmp_path / "none"), str(tmp_path / "two")):
        r = run(["--token-file", path])
        assert r.exit_code != 0 and "--token-file" in str(r.exception)


def test_every_secret_flag_has_a_file_form():
    from pifarm.appliance.cli import cli

    def walk(cmd, path=()):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, path + (name,))
        else:
            yield path, {o for p in cmd.params for o in p.opts}

    secret_flags = ("--token", "--dhchap-secret", "--enroll", "--key")
    for path, opts in walk(cli):
        for flag in secret_flags:
            if flag in opts:
                assert f"{flag}-file" in opts, f"pifarm {' '.join(path)} takes {flag} but no {flag}-file"
