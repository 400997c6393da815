"""`pifarm doctor`: is this machine ready for its role, and if not, what to do about it.

Each check is a plain function `check(env) -> [Result]` over an `Env` that names where to look
(/sys, /proc, /etc, the role config), so tests point it at real files they write or at this very
machine. A missing kernel feature is a warning when pifarm has a userspace path for it (no nvmet:
the userspace target; no nvme-tcp: the userspace initiator) and a failure only when the role cannot
work without it. Exit status is non-zero when any check fails.
"""

from __future__ import annotations

import ctypes.util
import datetime as dt
import os
import platform
import shutil
import tomllib
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from pifarm.appliance.haproxy.doctor import check_haproxy  # noqa: E402 ([haproxy] socket, aggregators)

PASS, WARN, FAIL = "pass", "warn", "fail"
BUF_MIN = 16 * 2**20  # what systemd/sysctl.d/90-pifarm.conf sets
SKEW_WARN, SKEW_FAIL = 5.0, 60.0


@dataclass(frozen=True)
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Env:
    """Where doctor looks. `system()` is this machine; tests build one over their own files."""

    role: str
    config: dict[str, Any] = field(default_factory=dict)
    config_path: str = ""
    sys_root: Path = Path("/sys")
    proc_root: Path = Path("/proc")
    etc_root: Path = Path("/etc")
    modules_dir: Path = Path("/lib/modules") / platform.release()
    timeout: float = 3.0

    @classmethod
    def system(cls, role: str = "auto", config: str | None = None) -> "Env":
        from pifarm.appliance.config import DEFAULT_CONFIG, find_config
        from pifarm.errors import ConfigError

        named = config or os.environ.get("PIFARM_CONFIG")
        if role == "auto":
            if named:
                role = "aggregator" if "aggregator" in Path(named).name else "node"
            else:
                role = "aggregator" if Path(DEFAULT_CONFIG.format(role="aggregator")).is_file() else "node"
        # the daemons' own lookup (--config, $PIFARM_CONFIG, /etc/pifarm/<role>.toml); read raw here,
        # so a config the loader would refuse can still be checked section by section
        path = find_config(role, config)
        doc: dict[str, Any] = {}
        if path is not None and Path(path).is_file():
            try:
                with open(path, "rb") as f:
                    doc = tomllib.load(f)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"config file {path} is not readable TOML: {e}") from e
        elif named:
            raise ConfigError(f"config file {path} does not exist")
        return cls(role=role, config=doc, config_path=str(path) if path is not None and Path(path).is_file() else "")

    def section(self, name: str) -> dict[str, Any]:
        v = self.config.get(name)
        return v if isinstance(v, dict) else {}

    def read(self, path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None


# -- kernel ----------------------------------------------------------------------------------------

def _module_state(env: Env, name: str) -> str:
    """"loaded", "builtin", "available" or "missing" for a kernel module."""
    if (env.sys_root / "module" / name.replace("-", "_")).is_dir():
        return "loaded"
    mods = env.modules_dir
    variants = {name, name.replace("-", "_")}
    builtin = env.read(mods / "modules.builtin") or ""
    if any(f"/{v}.ko" in builtin for v in variants):
        return "builtin"
    dep = env.read(mods / "modules.dep") or ""
    if any(f"/{v}.ko" in dep for v in variants):
        return "available"
    return "missing"


def check_modules(env: Env) -> list[Result]:
    if env.role == "aggregator":
        wanted = [("nvmet", "the kernel NVMe target"), ("nvmet-tcp", "its TCP transport")]
        fallback = "the userspace NVMe/TCP target will be used (pifarm target serve-userspace)"
        conf = "/etc/modules-load.d/pifarm-aggregator.conf"
    else:
        wanted = [("nvme-fabrics", "the kernel NVMe-oF host"), ("nvme-tcp", "its TCP transport")]
        fallback = "the userspace NVMe/TCP initiator will be used (stock Pi 5 kernels lack it)"
        conf = "/etc/modules-load.d/pifarm-node.conf"
    out = []
    for mod, what in wanted:
        st = _module_state(env, mod)
        check = f"module {mod}"
        if st in ("loaded", "builtin"):
            out.append(Result(check, PASS, f"{what} is {st}"))
        elif st == "available":
            out.append(Result(check, WARN, f"{what} is available but not loaded",
                              f"modprobe {mod}; pifarm setup installs {conf} to load it at boot"))
        else:
            out.append(Result(check, WARN, f"this kernel has no {mod} ({what}): {fallback}",
                              f"nothing to do, or use a kernel built with {mod}"))
    return out


def check_configfs(env: Env) -> list[Result]:
    mounts = env.read(env.proc_root / "mounts") or ""
    if any(line.split()[2:3] == ["configfs"] for line in mounts.splitlines()):
        return [Result("configfs", PASS, "configfs is mounted")]
    return [Result("configfs", WARN, "configfs is not mounted: the kernel target cannot be configured; "
                   "the userspace target will be used",
                   "modprobe configfs && systemctl start sys-kernel-config.mount")]


def check_identity(env: Env) -> list[Result]:
    from pifarm.errors import UsageError
    from pifarm.pki.certs import check_hostnqn

    nqn = env.read(env.etc_root / "nvme" / "hostnqn")
    hid = env.read(env.etc_root / "nvme" / "hostid")
    # the identity is this machine's alone: `node identity` writes it, enrollment then uses it
    fix = (f"pifarm node identity --root {env.etc_root / 'nvme'} (writes hostnqn and hostid once; then "
           f"`pifarm target allow-host NQN` on the aggregator, or enroll with `pifarm setup node`)")
    if not nqn or not hid:
        return [Result("host identity", FAIL, f"{env.etc_root}/nvme/hostnqn or hostid is missing: the aggregator's "
                       "host allowlist cannot recognise this node", fix)]
    try:
        check_hostnqn(nqn)
    except UsageError as e:
        return [Result("host identity", FAIL, str(e), fix)]
    return [Result("host identity", PASS, nqn)]


# -- network ---------------------------------------------------------------------------------------

def check_links(env: Env) -> list[Result]:
    net = env.sys_root / "class" / "net"
    out = []
    for iface in sorted(net.iterdir()) if net.is_dir() else []:
        if iface.name == "lo" or not (iface / "device").exists():
            continue  # virtual: bridges, veths, the bond itself (its slaves are checked)
        if env.read(iface / "operstate") != "up":
            continue
        speed, duplex = env.read(iface / "speed"), env.read(iface / "duplex")
        check = f"link {iface.name}"
        if speed is None or not speed.lstrip("-").isdigit() or int(speed) <= 0:
            out.append(Result(check, WARN, "link speed unknown", f"ethtool {iface.name}"))
        elif int(speed) < 1000:
            out.append(Result(check, WARN, f"{speed} Mb/s: model pulls will be slow",
                              "use a gigabit port and cable (Cat5e or better); check `ethtool " + iface.name + "`"))
        elif duplex != "full":
            out.append(Result(check, FAIL, f"{speed} Mb/s but {duplex} duplex", "fix autonegotiation on the switch port"))
        else:
            out.append(Result(check, PASS, f"{speed} Mb/s {duplex} duplex"))
    if not out:
        out.append(Result("link", WARN, "no physical network interface is up (a container or VM?)",
                          "run doctor on the Pi or aggregator itself"))
    return out


def check_bond(env: Env) -> list[Result]:
    net = env.sys_root / "class" / "net"
    bonds = sorted(p for p in net.glob("*/bonding/mode")) if net.is_dir() else []
    if not bonds:
        return [Result("bond", PASS, "no bond (optional; example in systemd/networkd/)")]
    out = []
    for p in bonds:
        mode = (env.read(p) or "").split()
        name = p.parent.parent.name
        if mode and mode[0] == "802.3ad":
            out.append(Result(f"bond {name}", PASS, "802.3ad (LACP)"))
        else:
            out.append(Result(f"bond {name}", WARN, f"mode {' '.join(mode) or '?'}: one stream cannot use both links "
                              "and a switch failure is not negotiated", "set Mode=802.3ad (systemd/networkd/10-bond0.netdev)"))
    return out


def check_sysctls(env: Env) -> list[Result]:
    sysctl = env.proc_root / "sys" / "net"
    fix = "pifarm setup installs /etc/sysctl.d/90-pifarm.conf; then sysctl --system"
    out = []
    for key in ("core/rmem_max", "core/wmem_max"):
        v = env.read(sysctl / key)
        name = "net." + key.replace("/", ".")
        if v is None or not v.isdigit():
            out.append(Result(f"sysctl {name}", WARN, "unreadable", fix))
        elif int(v) < BUF_MIN:
            out.append(Result(f"sysctl {name}", WARN, f"{v} < {BUF_MIN}: one TCP stream cannot fill the link", fix))
        else:
            out.append(Result(f"sysctl {name}", PASS, v))
    cc = env.read(sysctl / "ipv4" / "tcp_congestion_control")
    out.append(Result("sysctl net.ipv4.tcp_congestion_control", PASS, cc) if cc == "bbr" else
               Result("sysctl net.ipv4.tcp_congestion_control", WARN, f"{cc or 'unreadable'} (bbr recommended)", fix))
    return out


def check_bbr(env: Env) -> list[Result]:
    avail = (env.read(env.proc_root / "sys" / "net" / "ipv4" / "tcp_available_congestion_control") or "").split()
    if "bbr" in avail:
        return [Result("bbr", PASS, "BBR congestion control is available")]
    st = _module_state(env, "tcp_bbr")
    if st in ("available", "builtin", "loaded"):
        return [Result("bbr", WARN, "tcp_bbr is not loaded", "modprobe tcp_bbr (modules-load.d from pifarm setup loads it)")]
    return [Result("bbr", WARN, "this kernel has no BBR; cubic will be used", "use a kernel with CONFIG_TCP_CONG_BBR")]


# -- storage ---------------------------------------------------------------------------------------

def dir_size(root: Path) -> int:
    """Bytes under root (lstat: links are not followed); files vanishing meanwhile count 0."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def check_disk(env: Env) -> list[Result]:
    from pifarm.appliance.config import parse_size

    cache = env.section("cache")
    root = Path(cache.get("root") or "/var/lib/pifarm/cache")
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    budget = cache.get("max_bytes")
    if budget is None:
        return [Result("disk", WARN, f"{free / 2**30:.1f} GiB free at {probe}; no cache budget set, so the cache can "
                       "fill the disk", "set [cache] max_bytes in node.toml, e.g. \"8GiB\"")]
    try:
        want = parse_size(budget)
    except ValueError as e:
        return [Result("disk", FAIL, f"[cache] max_bytes: {e}", "fix node.toml")]
    used = dir_size(root) if root.is_dir() else 0
    room = free + used
    if room >= want:
        return [Result("disk", PASS, f"budget {want / 2**30:.1f} GiB fits: {free / 2**30:.1f} GiB free + "
                       f"{used / 2**30:.1f} GiB cached at {root}")]
    return [Result("disk", FAIL, f"budget {want / 2**30:.1f} GiB but only {room / 2**30:.1f} GiB available at {probe}",
                   "lower [cache] max_bytes or free space")]


def check_smart(env: Env) -> list[Result]:
    if shutil.which("smartctl") is None:
        return [Result("smart", WARN, "smartctl not installed: drive health unknown", "apt-get install smartmontools")]
    try:
        from pySMART import DeviceList

        devices = list(DeviceList().devices)
    except Exception as e:  # pySMART raises assorted errors on odd setups; doctor must not crash
        return [Result("smart", WARN, f"SMART query failed: {e}", "run `smartctl --scan` as root")]
    if not devices:
        return [Result("smart", WARN, "no SMART-capable drive found (SD card, VM or container)",
                       "an NVMe or SATA SSD is recommended for the cache/volumes")]
    out = []
    for d in devices:
        verdict = str(getattr(d, "assessment", None) or "unknown")
        st = PASS if verdict == "PASS" else FAIL if verdict == "FAIL" else WARN
        out.append(Result(f"smart {d.name}", st, f"{getattr(d, 'model', '?')}: {verdict}",
                          "" if st == PASS else f"smartctl -a /dev/{d.name}; replace the drive if it fails"))
    return out


# -- the farm ------------------------------------------------------------------------------------

def _node_tls(env: Env) -> tuple[str, str, str] | None:
    """(cert, key, CA bundle) of the node: [node] tls_* keys, else enrollment's /etc/pifarm/tls."""
    node = env.section("node")
    d = env.etc_root / "pifarm" / "tls"
    files = (node.get("tls_cert") or str(d / "node.crt"), node.get("tls_key") or str(d / "node.key"),
             node.get("tls_ca") or str(d / "ca-bundle.pem"))
    return files if all(Path(p).is_file() for p in files) else None


def _tls_verify(env: Env):
    files = _node_tls(env)
    if files is None:
        return True
    from pifarm.client.tls import tls_context

    cert, key, ca = files
    return tls_context(ca, cert, key)


def _aggregator_url(env: Env) -> str:
    if env.role == "node":
        return str(env.section("node").get("aggregator") or "")
    listen = str(env.section("api").get("listen") or "127.0.0.1:8470")
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host in ("::", "[::]") else host
    return f"{'https' if env.section('api').get('tls_cert') else 'http'}://{host}:{port}"


def _aggregator_tls(env: Env):
    """The aggregator checking its own API: trust the farm CA and present the operators' admin
    certificate that setup creates (`<data>/pki/admin/`), which mTLS requires."""
    api = env.section("api")
    ca = api.get("tls_client_ca")
    if not api.get("tls_cert"):
        return True
    data = Path(str(env.section("registry").get("data_dir") or "/var/lib/pifarm/aggregator"))
    admin = data / "pki" / "admin"
    files = (admin / "node.crt", admin / "node.key", admin / "ca-bundle.pem")
    from pifarm.client.tls import tls_context

    if ca and all(p.is_file() for p in files):
        cert, key, bundle = files
        return tls_context(bundle, cert, key)
    return tls_context(ca) if ca and Path(ca).is_file() else True


def check_aggregator(env: Env, now: Callable[[], dt.datetime] | None = None) -> list[Result]:
    """Reachability of the aggregator API and the clock skew against it (snapshots expire by the
    aggregator's clock, so a node whose clock runs ahead refuses valid snapshots as expired)."""
    import httpx

    url = _aggregator_url(env)
    if not url:
        return [Result("aggregator", FAIL, "no [node] aggregator URL configured", "pifarm setup node --aggregator URL ...")]
    verify = _tls_verify(env) if env.role == "node" else _aggregator_tls(env)
    try:
        r = httpx.get(url.rstrip("/") + "/health", verify=verify, timeout=env.timeout)
    except (httpx.HTTPError, OSError) as e:
        hint = "is pifarm-aggregator running? (systemctl status pifarm-aggregator)"
        if "CERTIFICATE" in str(e).upper() or "SSL" in type(e).__name__.upper() or "certificate" in str(e):
            hint = "TLS refused: re-enroll (pifarm setup node --force ...) or renew (pifarm pki renew)"
        return [Result("aggregator", FAIL, f"{url} unreachable: {e}", hint),
                Result("clock skew", WARN, "unknown (aggregator unreachable)", "")]
    out = [Result("aggregator", PASS if r.status_code < 500 else WARN, f"{url} answered {r.status_code}")]
    date = r.headers.get("date")
    if not date:
        out.append(Result("clock skew", WARN, "the aggregator sent no Date header", ""))
        return out
    ours = (now or (lambda: dt.datetime.now(dt.timezone.utc)))()
    skew = (ours - parsedate_to_datetime(date)).total_seconds()
    fix = "enable NTP: timedatectl set-ntp true (a Pi has no RTC battery by default)"
    if abs(skew) < SKEW_WARN:
        out.append(Result("clock skew", PASS, f"{skew:+.1f} s against the aggregator"))
    elif abs(skew) < SKEW_FAIL:
        out.append(Result("clock skew", WARN, f"{skew:+.1f} s against the aggregator", fix))
    else:
        out.append(Result("clock skew", FAIL, f"{skew:+.0f} s against the aggregator: snapshot expiry and TLS "
                          "validity are judged wrongly", fix))
    return out


def check_s3(env: Env) -> list[Result]:
    sec = env.section("s3") if env.role == "node" else env.section("store")
    url = str(sec.get("url") or "")
    if not url.startswith("s3://"):
        return [Result("s3", PASS, "no S3 configured (optional)")]
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = url[5:].split("/", 1)[0]
    # a fresh session: boto3's default one caches credentials from the first client it made
    client = boto3.session.Session().client(
        "s3", endpoint_url=sec.get("endpoint_url") or None, region_name=sec.get("region") or "us-east-1",
        aws_access_key_id=sec.get("access_key_id") or None, aws_secret_access_key=sec.get("secret_access_key") or None,
                          config=Config(connect_timeout=env.timeout, read_timeout=env.timeout,
                                        retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
    try:
        client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as e:
        return [Result("s3", FAIL, f"bucket {bucket} at {sec.get('endpoint_url') or 'AWS'}: {e}",
                       "check the endpoint, the bucket name and the AWS credentials")]
    return [Result("s3", PASS, f"bucket {bucket} reachable")]


def check_tflite(env: Env) -> list[Result]:
    import importlib

    errors = []
    for mod in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            importlib.import_module(mod)
            return [Result("tflite runtime", PASS, f"{mod.split('.')[0]} importable")]
        except Exception as e:  # an ImportError, or a broken native library
            errors.append(f"{mod.split('.')[0]}: {e}")
    return [Result("tflite runtime", FAIL, "; ".join(errors), "pip install ai-edge-litert (or tflite-runtime with numpy<2)")]


def check_delegates(env: Env) -> list[Result]:
    inf = env.section("inference")
    wanted: dict[str, str] = {}
    if isinstance(inf.get("defaults"), dict) and inf["defaults"].get("delegate"):
        wanted["defaults"] = str(inf["defaults"]["delegate"])
    for name, table in (inf.get("models") or {}).items():
        if isinstance(table, dict) and table.get("delegate"):
            wanted[name] = str(table["delegate"])
    if not wanted:
        return [Result("delegate", PASS, "no hardware delegate configured (CPU)")]
    out = []
    for model, lib in sorted(wanted.items()):
        p = Path(lib)
        found = p.is_file() if p.is_absolute() or "/" in lib else bool(ctypes.util.find_library(lib.removeprefix("lib").split(".so")[0]))
        out.append(Result(f"delegate {model}", PASS if found else WARN,
                          f"{lib} {'present' if found else 'not found: inference falls back to the CPU'}",
                          "" if found else "install the accelerator's runtime package (e.g. the AI HAT's)"))
    return out


def check_certificates(env: Env) -> list[Result]:
    from pifarm.pki.certs import read_cert, utcnow

    if env.role == "node":
        tls = _node_tls(env)
        files = {"client certificate": tls[0] if tls else None}
    else:
        files = {"server certificate": env.section("api").get("tls_cert")}
    out = []
    for what, path in files.items():
        if not path:
            out.append(Result(what, WARN, "no TLS configured: the API is plain HTTP",
                              "pifarm setup configures mTLS" if env.role == "aggregator" else "enroll: pifarm setup node"))
            continue
        try:
            cert = read_cert(Path(path))
        except Exception as e:
            out.append(Result(what, FAIL, str(e), "re-run pifarm setup"))
            continue
        left = cert.not_valid_after_utc - utcnow()
        if left.total_seconds() <= 0:
            out.append(Result(what, FAIL, f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                              "pifarm pki renew" if env.role == "node" else "pifarm pki rotate --server"))
        elif left < dt.timedelta(days=30):
            out.append(Result(what, WARN, f"{path} expires in {left.days} days",
                              "pifarm pki renew" if env.role == "node" else "pifarm pki rotate --server"))
        else:
            out.append(Result(what, PASS, f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"))
    return out


def _kernel_target_auth(env: Env) -> bool | None:
    """CONFIG_NVME_TARGET_AUTH, from an existing configfs host or the kernel's config file."""
    hosts = env.sys_root / "kernel" / "config" / "nvmet" / "hosts"
    try:
        for h in hosts.iterdir():
            return (h / "dhchap_key").exists()
    except OSError:
        pass
    text = env.read(Path("/boot") / f"config-{env.modules_dir.name}") or ""
    for line in text.splitlines():
        if line.startswith("CONFIG_NVME_TARGET_AUTH="):
            return line.split("=", 1)[1] in ("y", "m")
    return None if not text else False


def check_enrollment(env: Env) -> list[Result]:
    """Issue 11: hosts known by NQN alone, and the old fleet-wide enrollment secret."""
    out = []
    dhchap = env.section("enroll").get("dhchap")
    if dhchap is False:
        out.append(Result("host authentication", WARN, "[enroll] dhchap = false: any host on the LAN that claims an "
                          "enrolled NQN can read every exported volume",
                          "a kernel with CONFIG_NVME_TARGET_AUTH (Debian 13's 6.12), then remove dhchap = false"))
    elif dhchap is None:
        auth = _kernel_target_auth(env)
        if auth is False:
            out.append(Result("host authentication", FAIL, "this kernel's NVMe target has no DH-HMAC-CHAP: enrollment "
                              "is refused", "a kernel with CONFIG_NVME_TARGET_AUTH, or [enroll] dhchap = false"))
        else:
            out.append(Result("host authentication", PASS, "DH-HMAC-CHAP for every enrolled host" if auth else
                              "DH-HMAC-CHAP wherever the kernel target has it (could not tell here)"))
    else:
        out.append(Result("host authentication", PASS, "DH-HMAC-CHAP for every enrolled host"))
    data = Path(env.section("registry").get("data_dir") or "/var/lib/pifarm/aggregator")
    if (data / "enroll-secret").exists():
        out.append(Result("enrollment secret", WARN, f"{data / 'enroll-secret'} is a fleet-wide secret that never expires",
                          f"pifarm enroll token create --ttl 1h (one per node), then rm {data / 'enroll-secret'}"))
    return out


AGGREGATOR_CHECKS: tuple[Callable[[Env], list[Result]], ...] = (
    check_modules, check_configfs, check_links, check_bond, check_sysctls, check_bbr, check_smart,
    check_certificates, check_enrollment, check_s3, check_aggregator, check_haproxy)
NODE_CHECKS: tuple[Callable[[Env], list[Result]], ...] = (
    check_modules, check_identity, check_links, check_bond, check_sysctls, check_bbr, check_disk, check_smart,
    check_certificates, check_aggregator, check_s3, check_tflite, check_delegates)


def run(env: Env, checks: Iterable[Callable[[Env], list[Result]]] | None = None) -> list[Result]:
    out = []
    for check in checks if checks is not None else (AGGREGATOR_CHECKS if env.role == "aggregator" else NODE_CHECKS):
        try:
            out += check(env)
        except Exception as e:  # one broken probe must not hide every other answer
            out.append(Result(check.__name__.removeprefix("check_"), FAIL, f"check crashed: {type(e).__name__}: {e}",
                              "report this as a pifarm bug"))
    return out


def render(results: list[Result], echo: Callable[[str], None]) -> None:
    import click

    colours = {PASS: "green", WARN: "yellow", FAIL: "red"}
    for r in results:
        echo(f"{click.style(r.status.upper().ljust(4), fg=colours[r.status], bold=True)}  {r.check:<40} {r.detail}")
        if r.fix and r.status != PASS:
            echo(f"      fix: {r.fix}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL)}
    echo(f"\n{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed")
