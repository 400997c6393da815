"""`pifarm setup aggregator|node`: turn a fresh Debian/Raspberry Pi OS host into a farm member.

Setup is a plan of steps computed first and applied second, so `--dry-run` prints exactly what a
real run would write or run, and a second run finds every step already done. Every path goes
through `Root`, so `--root DIR` installs into a staging tree (how the tests run it); commands that
would act on the live machine (systemctl --now, sysctl, modprobe) are then replaced by their
offline forms or skipped, and the plan says so.

Files are never silently replaced: an existing config that differs from what setup would write
is kept (the operator edited it) unless --force, which keeps a `.bak` beside it. Secrets and keys
are created once and never regenerated.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pifarm.durable import atomic_write
from pifarm.errors import ConfigError, Conflict, PifarmError, UsageError

AGGREGATOR_UNITS = ("pifarm-aggregator.service", "pifarm-target.service")
NODE_UNITS = ("pifarm-node.service", "pifarm-inference.service")
UNIT_DIR = "/etc/systemd/system"
PLACEHOLDER_BIN = "/usr/local/bin/pifarm"


def systemd_dir() -> Path:
    """The `systemd/` folder shipped with pifarm (source checkout / editable install)."""
    here = Path(__file__).resolve().parents[2] / "systemd"
    if not (here / "pifarm-aggregator.service").is_file():
        raise ConfigError(f"unit files not found in {here}; run setup from a pifarm source checkout (make venv)")
    return here


def pifarm_bin() -> str:
    """The `pifarm` entry point of the interpreter running setup: what the units must start."""
    cand = Path(sys.executable).parent / "pifarm"
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    found = shutil.which("pifarm")
    if found:
        return found
    raise ConfigError("no `pifarm` executable next to this Python or on PATH; install pifarm (pip install -e .)")


@dataclass(frozen=True)
class Root:
    """Maps absolute system paths into an optional staging root."""

    path: Path = Path("/")

    @property
    def staged(self) -> bool:
        return self.path != Path("/")

    def p(self, system_path: str | os.PathLike) -> Path:
        sp = Path(system_path)
        if not sp.is_absolute():
            raise UsageError(f"internal: {sp} is not an absolute system path")
        return self.path / sp.relative_to("/") if self.staged else sp


@dataclass
class Step:
    """One thing setup does. `apply()` returns what happened, in a few words."""

    what: str          # "dir", "file", "config", "secret", "pki", "registry", "unit", "run", "skip"
    target: str        # a path, or the command line
    apply: Callable[[], str]
    note: str = ""
    content: str | None = None  # the text a file step writes: --dry-run shows it (issue 20)


@dataclass
class Outcome:
    step: Step
    result: str
    ok: bool = True


# -- step builders ---------------------------------------------------------------------------------

def mkdir_step(path: Path, mode: int) -> Step:
    def apply() -> str:
        if path.is_dir():
            return "exists"
        path.mkdir(parents=True, mode=mode)
        os.chmod(path, mode)
        return "created"
    return Step("dir", str(path), apply, f"mode {mode:o}")


def file_step(path: Path, content: str, mode: int = 0o644, *, what: str = "file", force: bool = False,
              replace: bool = False) -> Step:
    """Write `content` unless the file already holds it. An edited file is kept unless `force`
    (then saved as .bak); `replace` is for files pifarm owns outright (unit files)."""
    data = content.encode()

    def apply() -> str:
        if path.is_file():
            if path.read_bytes() == data:
                return "unchanged"
            if replace:
                atomic_write(path, data, mode)
                return "updated"
            if not force:
                return "kept (edited; --force overwrites, keeping a .bak)"
            shutil.copy2(path, path.with_name(path.name + ".bak"))
            atomic_write(path, data, mode)
            return "overwritten (old copy in .bak)"
        atomic_write(path, data, mode)
        return "created"
    return Step(what, str(path), apply, f"mode {mode:o}", content=content)


def secret_step(path: Path, make: Callable[[], str], note: str) -> Step:
    def apply() -> str:
        if path.is_file() and path.read_text().strip():
            return "exists (kept)"
        atomic_write(path, (make() + "\n").encode(), 0o600)
        return "created"
    return Step("secret", str(path), apply, note + ", mode 600")


def run_step(argv: list[str], note: str = "", *, check_exists: bool = True) -> Step:
    def apply() -> str:
        if check_exists and shutil.which(argv[0]) is None:
            raise ConfigError(f"`{argv[0]}` is not installed; install it and re-run setup")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise PifarmError(f"`{' '.join(argv)}` did not finish within 120 s") from e
        if r.returncode != 0:
            raise PifarmError(f"`{' '.join(argv)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[:300]}")
        return "ran"
    return Step("run", " ".join(argv), apply, note)


def skip_step(what: str, why: str) -> Step:
    return Step("skip", what, lambda: "skipped", why)


def unit_steps(root: Root, units: tuple[str, ...], bin_path: str) -> list[Step]:
    src = systemd_dir()
    steps = []
    for u in units:
        text = (src / u).read_text().replace(PLACEHOLDER_BIN, bin_path)
        steps.append(file_step(root.p(f"{UNIT_DIR}/{u}"), text, 0o644, what="unit", replace=True))
    return steps


def enable_steps(root: Root, units: tuple[str, ...], *, start: bool) -> list[Step]:
    if root.staged:
        # systemctl --root creates the WantedBy symlinks offline, exactly as on the real system.
        return [run_step(["systemctl", f"--root={root.path}", "enable", *units], "offline enable (staging root)")]
    steps = [run_step(["systemctl", "daemon-reload"])]
    steps.append(run_step(["systemctl", "enable", *(["--now"] if start else []), *units]))
    return steps


def system_tuning_steps(root: Root, role: str) -> list[Step]:
    src = systemd_dir()
    steps = [
        file_step(root.p("/etc/sysctl.d/90-pifarm.conf"), (src / "sysctl.d" / "90-pifarm.conf").read_text(),
                  0o644, replace=True),
        file_step(root.p(f"/etc/modules-load.d/pifarm-{role}.conf"),
                  (src / "modules-load.d" / f"pifarm-{role}.conf").read_text(), 0o644, replace=True),
    ]
    if root.staged:
        steps.append(skip_step("sysctl --system; modprobe", "staging root: applied at the target's next boot"))
    else:
        steps.append(run_step(["sysctl", "--quiet", "--system"], "apply the network settings now"))
    return steps


# -- plans -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AggregatorOptions:
    data_dir: str = "/var/lib/pifarm/aggregator"
    config: str = "/etc/pifarm/aggregator.toml"
    listen: str = "0.0.0.0:8470"
    enroll_listen: str = "0.0.0.0:8471"
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    s3_url: str = ""
    s3_endpoint: str = ""
    tls: bool = True
    start: bool = True
    force: bool = False


def aggregator_config_text(o: AggregatorOptions) -> str:
    pki = f"{o.data_dir}/pki"
    lines = [
        "# pifarm aggregator, written by `pifarm setup aggregator`. Edit freely: setup never",
        "# overwrites an edited file without --force. Every key can also be set with PIFARM_SECTION_KEY.",
        "",
        "[registry]",
        f'data_dir = "{o.data_dir}"',
        "",
        "[store]",
    ]
    if o.s3_url:
        lines.append(f'url = "{o.s3_url}"')
        if o.s3_endpoint:
            lines.append(f'endpoint_url = "{o.s3_endpoint}"')
        lines.append("# credentials: the standard AWS variables or /root/.aws/credentials")
    else:
        lines.append('url = ""   # the filesystem store under data_dir; "s3://bucket/prefix" for S3')
    lines += ["", "[api]", f'listen = "{o.listen}"']
    if o.tls:
        lines += [f'tls_cert = "{pki}/server.crt"', f'tls_key = "{pki}/server.key"',
                  "# clients must present a certificate from the farm CA (mTLS); nodes get one by enrolling",
                  f'tls_client_ca = "{pki}/ca-bundle.pem"']
    return "\n".join(lines) + "\n"


def validate_config(text: str, role: str, origin: str) -> None:
    """Load the rendered config through the daemon's own loader, so setup never writes a file the
    daemon would refuse."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / Path(origin).name
        p.write_text(text)
        try:
            if role == "node":
                from pifarm.appliance.config import load_node_config

                load_node_config(p, environ={})
            else:
                from pifarm.appliance.config import load_aggregator_config

                load_aggregator_config(p, environ={})
        except PifarmError as e:
            raise ConfigError(f"internal: the {role} config setup would write is refused: {e}") from e


def plan_aggregator(o: AggregatorOptions, root: Root) -> list[Step]:
    from pifarm.pki.farm import AggregatorPki

    data = root.p(o.data_dir)
    text = aggregator_config_text(o)
    validate_config(text, "aggregator", o.config)
    steps = [
        mkdir_step(root.p("/etc/pifarm"), 0o755),
        mkdir_step(data, 0o700),
        file_step(root.p(o.config), text, 0o640, what="config", force=o.force),
    ]

    def init_registry() -> str:
        from pifarm.registry.service import Registry
        from pifarm.registry.settings import RegistrySettings, StoreSettings

        store = StoreSettings(url=o.s3_url, endpoint_url=o.s3_endpoint or None)
        try:
            reg = Registry.open(data, {"registry": RegistrySettings(data_dir=str(data)), "store": store})
        except Conflict:
            return "in use by a running aggregator (left as is)"
        try:
            from pifarm.registry.service import ensure_api_token
            from pifarm.registry.settings import ApiSettings

            ensure_api_token(data, ApiSettings())
            if reg.read_only_reason:
                raise PifarmError(f"the store is unreachable, so the bucket could not be prepared: {reg.read_only_reason}")
        finally:
            reg.close()
        return "ready (signing key, API token, store" + (" bucket with versioning)" if o.s3_url else ")")

    steps.append(Step("registry", str(data), init_registry,
                      "signing key keys/signing.key (0600), API token api-token (0600), "
                      + ("S3 bucket with versioning" if o.s3_url else "filesystem store")))
    # no fleet-wide enrollment secret any more: each node gets a one-time token (`pifarm enroll token create`)

    def init_pki() -> str:
        made = AggregatorPki(data).init(dns_names=list(o.dns_names) or None, ips=list(o.ips) or None)
        return "created CA + server certificate" if made else "exists (kept)"
    steps.append(Step("pki", str(data / "pki"), init_pki, "private CA, server certificate for the API (mTLS)"))
    steps += system_tuning_steps(root, "aggregator")
    steps += unit_steps(root, AGGREGATOR_UNITS, pifarm_bin())
    steps += enable_steps(root, AGGREGATOR_UNITS, start=o.start)
    return steps


@dataclass(frozen=True)
class NodeOptions:
    aggregator: str
    enroll_secret: str
    enroll_url: str = ""
    ca_hash: str | None = None
    trust_on_first_use: bool = False
    config: str = "/etc/pifarm/node.toml"
    tls_dir: str = "/etc/pifarm/tls"
    cache_dir: str = "/var/lib/pifarm/cache"
    state_dir: str = "/var/lib/pifarm/node"
    cache_max: str = ""
    channel: str = "stable"
    hostname: str = ""
    nvme_address: str = ""
    start: bool = True
    force: bool = False


def default_enroll_url(aggregator: str) -> str:
    """The enrollment listener: same host as the API, next port (8470 → 8471)."""
    import urllib.parse

    u = urllib.parse.urlsplit(aggregator)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UsageError(f"--aggregator {aggregator!r} must be a URL like https://aggregator:8470")
    port = (u.port or (443 if u.scheme == "https" else 80)) + 1
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"https://{host}:{port}"


def nvme_address(o: NodeOptions) -> str:
    import urllib.parse

    if o.nvme_address:
        return o.nvme_address
    host = urllib.parse.urlsplit(o.aggregator).hostname or "localhost"
    return f"[{host}]:4420" if ":" in host else f"{host}:4420"


def node_config_text(o: NodeOptions) -> str:
    lines = [
        "# pifarm node, written by `pifarm setup node`. Edit freely: setup never overwrites an",
        "# edited file without --force. Every key can also be set with PIFARM_SECTION_KEY.",
        "",
        "[node]",
        f'aggregator = "{o.aggregator}"',
        f'channel = "{o.channel}"',
        f'state_dir = "{o.state_dir}"',
        f'trusted_keys = ["{Path(o.config).parent}/signing.pub"]',
    ]
    tls = [f'tls_cert = "{o.tls_dir}/node.crt"', f'tls_key = "{o.tls_dir}/node.key"',
           f'tls_ca = "{o.tls_dir}/ca-bundle.pem"']
    if _node_supports_tls():
        lines += tls
    else:
        lines += ["# mTLS client credentials from enrollment (read by `pifarm pki renew` and `pifarm doctor`;",
                  "# the node daemon of this build does not take them yet):"] + [f"# {t}" for t in tls]
    lines += [
        "",
        "[cache]",
        f'root = "{o.cache_dir}"',
    ]
    if o.cache_max:
        lines.append(f'max_bytes = "{o.cache_max}"')
    lines += ["", "# tried in order, each with a deadline per blob: the aggregator's NVMe/TCP volumes",
              "# (kind = \"nvme-kernel\" where the kernel has nvme-tcp), then HTTP from the aggregator",
              "[[sources]]", 'kind = "nvme-tcp-userspace"', f'address = "{nvme_address(o)}"', "deadline = 30", "",
              "[[sources]]", 'kind = "http"', "deadline = 60", ""]
    return "\n".join(lines)


def _node_supports_tls() -> bool:
    import dataclasses

    try:
        from pifarm.initiator.settings import NodeSettings
    except ImportError:
        return False
    return {"tls_cert", "tls_key", "tls_ca"} <= {f.name for f in dataclasses.fields(NodeSettings)}


def host_identity(root: Root) -> tuple[str, str, str]:
    """(hostnqn, hostid, what happened): the persistent NVMe host identity in /etc/nvme, written
    once and never changed (a Pi has no DMI UUID, so nvme-cli would invent a new one each boot)."""
    from pifarm.initiator.identity import ensure_identity

    ident = ensure_identity(root.p("/etc/nvme"))
    return ident.hostnqn, ident.hostid, f"created {', '.join(ident.created)}" if ident.created else "exists (kept)"


def plan_node(o: NodeOptions, root: Root, *, enroll: Callable[..., dict[str, Any]] | None = None) -> list[Step]:
    from pifarm.pki.farm import NodeTls, enroll_node
    from pifarm.pki.certs import check_hostnqn, default_hostname

    if not o.enroll_secret:
        raise UsageError("an enrollment token is required: --enroll-file FILE (pifarm enroll token create)")
    if o.ca_hash is None and not o.trust_on_first_use:
        raise UsageError("--ca-hash is required (or --trust-on-first-use)")
    enroll_url = o.enroll_url or default_enroll_url(o.aggregator)
    text = node_config_text(o)
    validate_config(text, "node", o.config)
    hostname = o.hostname or default_hostname()
    tls_dir = root.p(o.tls_dir)
    steps = [
        mkdir_step(root.p("/etc/pifarm"), 0o755),
        mkdir_step(tls_dir, 0o700),
        mkdir_step(root.p(o.cache_dir), 0o755),   # read by the unprivileged inference user
        mkdir_step(root.p(o.state_dir), 0o755),
        file_step(root.p(o.config), text, 0o644, what="config", force=o.force),
    ]
    ident: dict[str, str] = {}
    enrolled: dict[str, Any] = {}

    def identity() -> str:
        nqn, hid, how = host_identity(root)
        check_hostnqn(nqn)
        ident.update(hostnqn=nqn, hostid=hid)
        return f"{how}: {nqn}"
    steps.append(Step("identity", str(root.p("/etc/nvme/hostnqn")), identity, "persistent NVMe host NQN + host id"))

    def do_enroll() -> str:
        tls = NodeTls(tls_dir)
        if tls.exists() and not o.force:
            return "client certificate exists (kept; `pifarm pki renew` replaces it)"
        resp = (enroll or enroll_node)(enroll_url, o.enroll_secret, hostnqn=ident["hostnqn"], hostid=ident["hostid"],
                                       hostname=hostname, tls_dir=tls_dir, ca_hash=o.ca_hash,
                                       trust_on_first_use=o.trust_on_first_use)
        enrolled.update(resp)
        key = resp.get("dhchap_key")
        if key:
            atomic_write(root.p("/etc/nvme/dhchap-key"), (key + "\n").encode(), 0o600)
        return f"enrolled as {hostname}; certificate until {resp.get('not_after', '?')}" + (
            "; DH-HMAC-CHAP secret in /etc/nvme/dhchap-key" if key else "")
    steps.append(Step("enroll", enroll_url, do_enroll,
                      f"client certificate into {o.tls_dir} and host registration"
                      + ("" if o.ca_hash else " (CA trusted on first use, as asked: --ca-hash pins it)")))

    pub = root.p(str(Path(o.config).parent / "signing.pub"))

    def trusted_key() -> str:
        keys = enrolled.get("signing_keys") or []
        if not keys:
            return "exists (kept)" if pub.is_file() else "not sent by the aggregator; copy its keys/signing.pub here"
        if pub.is_file() and pub.read_text() == keys[0]:
            return "unchanged"
        atomic_write(pub, keys[0].encode(), 0o644)
        return "written"
    steps.append(Step("file", str(pub), trusted_key, "the registry's public signing key (from enrollment)"))
    steps += system_tuning_steps(root, "node")
    steps += unit_steps(root, NODE_UNITS, pifarm_bin())
    steps += enable_steps(root, NODE_UNITS, start=o.start)
    return steps


# -- running ---------------------------------------------------------------------------------------

def run_plan(steps: list[Step], *, dry_run: bool, echo: Callable[[str], None]) -> list[Outcome]:
    """Apply steps in order (or only print them); stop at the first failure, which is reported
    with everything done before it, so a re-run continues where this one stopped."""
    out = []
    for s in steps:
        head = f"{s.what:<8} {s.target}"
        if dry_run:
            echo(f"would  {head}" + (f"  ({s.note})" if s.note else ""))
            if s.content is not None:  # what would be written, indented under its step
                echo("".join(f"       | {line}\n" for line in s.content.splitlines()).rstrip("\n"))
            out.append(Outcome(s, "planned"))
            continue
        try:
            result = s.apply()
        except PifarmError as e:
            echo(f"FAILED {head}: {e}")
            out.append(Outcome(s, str(e), ok=False))
            raise PifarmError(f"setup stopped at {s.what} {s.target}: {e} (fix it and re-run; finished steps are kept)") from e
        except OSError as e:
            echo(f"FAILED {head}: {e}")
            raise PifarmError(f"setup stopped at {s.what} {s.target}: {e.strerror or e} (are you root? or use --root DIR)") from e
        echo(f"{'ok':<6} {head}: {result}")
        out.append(Outcome(s, result))
    return out


def enroll_command_hint(o: AggregatorOptions, root: Root) -> str:
    """The line an operator pastes on each node."""
    from pifarm.pki.farm import AggregatorPki
    from pifarm.pki.certs import fingerprint, read_cert

    data = root.p(o.data_dir)
    pki = AggregatorPki(data)
    if not pki.exists():
        return ""
    fqdn = socket.getfqdn()
    host = (o.dns_names or (fqdn if "." in fqdn else socket.gethostname(),))[0]
    port = o.listen.rpartition(":")[2]
    ca = fingerprint(read_cert(pki.path("ca.crt")))
    return (f"pifarm enroll token create --ttl 1h --data-dir {o.data_dir} --out token   # here, one per node\n"
            f"  pifarm setup node --aggregator https://{host}:{port} --enroll-file token --ca-hash {ca}   # on the node")
