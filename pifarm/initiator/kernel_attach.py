"""Attach to the aggregator's NVMe/TCP target with the kernel host, through nvme-cli.

nvme-cli's boot-time autoconnect tries once; nvme-stas treats "discovery unreachable" like
"nothing discovered" and tears connections down (its PR #510). Here the two are different
outcomes of one attach round:

    live             discovery answered, at least one offered subsystem is connected
    nothing-offered  discovery answered with no subsystem for us (not allowed yet, none exported)
    unreachable      discovery did not answer; existing connections are left alone: the kernel
                     is reconnecting them by itself (ctrl-loss-tmo / reconnect-delay)

Every nvme-cli call runs with a bound (a connect can block in the kernel); `attach` retries
rounds with exponential backoff and full jitter.
Controllers are read from sysfs, not from nvme-cli's output, so state survives our restarts.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pifarm.errors import ConfigError, SourceError, SourceTimeout
from pifarm.initiator.backoff import Backoff
from pifarm.initiator.identity import HostIdentity

log = logging.getLogger(__name__)

LIVE, UNREACHABLE, NOTHING_OFFERED, DISABLED = "live", "unreachable", "nothing-offered", "disabled"
SOURCE = "nvme-kernel"
DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
_DHCHAP_RE = re.compile(r"^DHHC-1:0[0-3]:[A-Za-z0-9+/]+={0,2}:\Z")


class DiscoveryUnreachable(SourceError):
    """The discovery controller did not answer (target down, port gone, network down)."""


@dataclass(frozen=True)
class AttachSettings:
    address: str  # target IP address (the aggregator)
    port: int = 4420  # its NVMe/TCP port; nvmet answers discovery on every port
    subsystems: tuple[str, ...] = ()  # connect only these NQNs; empty = everything offered
    ctrl_loss_tmo: int = 600  # seconds the kernel keeps reconnecting a lost controller
    reconnect_delay: int = 2  # seconds between the kernel's reconnect attempts
    # reads fail after this many seconds of reconnecting (kernel option; nvme-cli >= 2.4 passes
    # it, 2.3 does not know it: -1 leaves it out). The source bounds each read on its own anyway.
    fast_io_fail_tmo: int = -1
    dhchap_secret: str = ""  # DHHC-1:..: host key when the target requires DH-HMAC-CHAP
    dhchap_ctrl_secret: str = ""  # for bidirectional authentication
    command_timeout: float = 20.0  # bound on one nvme-cli call
    nvme: str = "nvme"  # nvme-cli binary

    def __post_init__(self) -> None:
        if not self.address:
            raise ConfigError("[[sources]] nvme-kernel: address = \"HOST:PORT\" of the aggregator's NVMe/TCP port is required")
        if not 0 < self.port < 65536:
            raise ConfigError(f"[[sources]] nvme-kernel: port {self.port} is out of range")
        for name in ("dhchap_secret", "dhchap_ctrl_secret"):
            v = getattr(self, name)
            if v and not _DHCHAP_RE.match(v):
                raise ConfigError(f"[[sources]] nvme-kernel: {name} is not a DHHC-1 secret "
                                  "(expected DHHC-1:<hh>:<base64>:, as `nvme gen-dhchap-key` prints)")
        if self.ctrl_loss_tmo < -1 or self.reconnect_delay < 1 or self.command_timeout <= 0:
            raise ConfigError("[[sources]] nvme-kernel: ctrl_loss_tmo >= -1, reconnect_delay >= 1, command_timeout > 0")


@dataclass(frozen=True)
class AttachResult:
    state: str
    offered: tuple[str, ...] = ()
    controllers: dict[str, str] = field(default_factory=dict)  # subsystem NQN -> nvmeN
    error: str = ""


def parse_address(address: str, default_port: int = 4420) -> tuple[str, int]:
    """"10.0.0.1:4420", "10.0.0.1", "[fe80::1]:4420" -> (host, port)."""
    a = address.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest.lstrip(":")
    elif a.count(":") == 1:
        host, port = a.split(":")
    else:
        host, port = a, ""
    if not host:
        raise ConfigError(f"NVMe target address {address!r} has no host")
    try:
        return host, int(port) if port else default_port
    except ValueError as e:
        raise ConfigError(f"NVMe target address {address!r}: port must be a number") from e


def run_bounded(argv: Sequence[str], timeout: float, input: str | None = None) -> tuple[int, str]:
    """Run a command with a hard bound; (rc, stdout+stderr). A process stuck in the kernel
    (uninterruptible write to /dev/nvme-fabrics) is killed and then abandoned, never waited for.
    `input` goes to its stdin (how secrets travel: never in argv)."""
    try:
        p = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as e:
        raise SourceError(f"{argv[0]} not found: install nvme-cli", SOURCE) from e
    try:
        out, _ = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        try:
            p.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        raise SourceTimeout(f"`{' '.join(_redact(argv))}` did not finish within {timeout:g}s", SOURCE) from None
    return p.returncode, out


def _redact(argv: Sequence[str]) -> list[str]:
    return [re.sub(r"(--dhchap(-ctrl)?-secret=).*", r"\1***", a) for a in argv]


class KernelAttacher:
    """Discovery + connect for one target address, with the node's persistent identity."""

    def __init__(self, settings: AttachSettings, identity: HostIdentity, *, sys_root: str | os.PathLike = "/sys",
                 rng: random.Random | None = None, runner: Callable[[Sequence[str], float], tuple[int, str]] = run_bounded):
        self.s = settings
        self.identity = identity
        self.sys_root = Path(sys_root)
        self._rng = rng or random.Random()
        self._run = runner
        self.last: AttachResult = AttachResult(DISABLED)

    def _common(self) -> list[str]:
        return ["-t", "tcp", "-a", self.s.address, "-s", str(self.s.port),
                f"--hostnqn={self.identity.hostnqn}", f"--hostid={self.identity.hostid}"]

    # ------------------------------------------------------------------ one step each
    def discover(self) -> tuple[str, ...]:
        """NQNs of the NVM subsystems the target offers this host (referrals and the discovery
        subsystem itself are skipped). Raises DiscoveryUnreachable when nobody answers."""
        argv = [self.s.nvme, "discover", *self._common(), "-o", "json"]
        try:
            rc, out = self._run(argv, self.s.command_timeout)
        except SourceError as e:  # stuck in the kernel, or no nvme-cli: either way nobody answered
            raise DiscoveryUnreachable(f"discovery at {self.s.address}:{self.s.port}: {e}", SOURCE) from e
        if rc != 0:
            raise DiscoveryUnreachable(
                f"discovery at {self.s.address}:{self.s.port} failed: {' '.join(out.split())[:300]}", SOURCE)
        return tuple(n for n in parse_discovery(out) if not self.s.subsystems or n in self.s.subsystems)

    def controllers(self) -> dict[str, str]:
        """Our I/O controllers to this address and port: {subsystem NQN: "nvmeN"}, any state
        (the short-lived controllers `nvme discover` creates are not ours to count)."""
        found: dict[str, str] = {}
        base = self.sys_root / "class" / "nvme"
        if not base.is_dir():
            return found
        want = {f"traddr={self.s.address}", f"trsvcid={self.s.port}"}
        for c in sorted(base.iterdir()):
            try:
                if (c / "transport").read_text().strip() != "tcp":
                    continue
                addr = set((c / "address").read_text().strip().split(","))
                nqn = (c / "subsysnqn").read_text().strip()
            except OSError:
                continue  # a controller being deleted right now
            if not want <= addr or not nqn.startswith("nqn.") or nqn == DISCOVERY_NQN:
                continue  # another target; a controller still being set up; a discovery one
            if _attr(c / "cntrltype") == "discovery":  # 5.18+: also unique discovery NQNs
                continue
            host = _attr(c / "hostnqn")
            if host and host != self.identity.hostnqn:
                continue  # another identity's controller (nvme-cli calls it "already connected")
            found[nqn] = c.name
        return found

    def controller_state(self, ctrl: str) -> str:
        try:
            return (self.sys_root / "class" / "nvme" / ctrl / "state").read_text().strip()
        except OSError:
            return "gone"

    def connect(self, subnqn: str) -> None:
        if self.s.dhchap_secret or self.s.dhchap_ctrl_secret:
            rc, out = self._connect_fabrics(subnqn)
        else:
            argv = [self.s.nvme, "connect", *self._common(), "-n", subnqn,
                    f"--ctrl-loss-tmo={self.s.ctrl_loss_tmo}", f"--reconnect-delay={self.s.reconnect_delay}"]
            if self.s.fast_io_fail_tmo >= 0:
                argv.append(f"--fast_io_fail_tmo={self.s.fast_io_fail_tmo}")
            rc, out = self._run(argv, self.s.command_timeout)
        if rc != 0 and "already connected" not in out:
            hint = ""
            if "Key was rejected" in out or "Required key not available" in out or "TLS key" in out:
                hint = " (DH-HMAC-CHAP: check dhchap_secret against the target's key for this host NQN)"
            elif "Input/output error" in out:
                hint = f" (is host {self.identity.hostnqn} allowed on the target? `pifarm target allow-host`)"
            raise SourceError(f"nvme connect {subnqn} at {self.s.address}:{self.s.port} failed: "
                              f"{' '.join(out.split())[:300]}{hint}", SOURCE)

    def _connect_fabrics(self, subnqn: str) -> tuple[int, str]:
        """Connect with DH-HMAC-CHAP secrets: nvme-cli would need them in argv (world-readable
        /proc/<pid>/cmdline), so the options go to /dev/nvme-fabrics through a child's stdin."""
        from pifarm.initiator.fabrics_write import options

        fields: dict[str, str | int] = {
            "nqn": subnqn, "transport": "tcp", "traddr": self.s.address, "trsvcid": self.s.port,
            "hostnqn": self.identity.hostnqn, "hostid": self.identity.hostid,
            "ctrl_loss_tmo": self.s.ctrl_loss_tmo, "reconnect_delay": self.s.reconnect_delay}
        if self.s.fast_io_fail_tmo >= 0:
            fields["fast_io_fail_tmo"] = self.s.fast_io_fail_tmo
        if self.s.dhchap_secret:
            fields["dhchap_secret"] = self.s.dhchap_secret
        if self.s.dhchap_ctrl_secret:
            fields["dhchap_ctrl_secret"] = self.s.dhchap_ctrl_secret
        argv = [sys.executable, "-m", "pifarm.initiator.fabrics_write"]
        return self._run(argv, self.s.command_timeout, input=options(fields))  # type: ignore[call-arg]

    # ------------------------------------------------------------------ a round, and retries
    def attach_once(self) -> AttachResult:
        """Discover, then connect whatever offered subsystem is not connected yet."""
        try:
            offered = self.discover()
        except DiscoveryUnreachable as e:
            # keep what we have: the kernel reconnects those controllers on its own
            res = AttachResult(UNREACHABLE, (), self.controllers(), str(e))
            self.last = res
            return res
        errors = []
        have = self.controllers()
        for nqn in offered:
            if nqn in have:
                continue
            try:
                self.connect(nqn)
            except SourceError as e:
                errors.append(str(e))
        have = self.controllers()
        if not offered:
            state = NOTHING_OFFERED
        elif any(n in have for n in offered):
            state = LIVE
        else:
            state = UNREACHABLE if errors else NOTHING_OFFERED
        res = AttachResult(state, offered, have, "; ".join(errors))
        self.last = res
        return res

    def attach(self, *, attempts: int = 8, base: float = 0.5, maximum: float = 30.0,
               stop: threading.Event | None = None) -> AttachResult:
        """Rounds until live, `attempts` rounds, or `stop`; full-jitter backoff in between."""
        backoff = Backoff(base, maximum, self._rng)
        res = self.last
        for i in range(max(1, attempts)):
            res = self.attach_once()
            if res.state == LIVE or (stop is not None and stop.is_set()):
                return res
            if i + 1 < attempts:
                delay = backoff.next_delay()
                log.info("nvme attach to %s:%d: %s (%s); next try in %.1fs", self.s.address, self.s.port,
                         res.state, res.error or "no subsystem offered", delay)
                if stop is not None:
                    if stop.wait(delay):
                        return res
                else:
                    time.sleep(delay)
        return res

    def disconnect(self, subnqn: str) -> None:
        rc, out = self._run([self.s.nvme, "disconnect", "-n", subnqn], self.s.command_timeout)
        if rc != 0:
            raise SourceError(f"nvme disconnect {subnqn}: {' '.join(out.split())[:200]}", SOURCE)


def _attr(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def parse_discovery(text: str) -> list[str]:
    """Subsystem NQNs from `nvme discover -o json` (nvme-cli 2.x)."""
    try:
        doc = json.loads(text[text.index("{"):]) if "{" in text else {}
    except ValueError as e:
        raise SourceError(f"nvme discover printed something that is not JSON: {text[:200]!r}", SOURCE) from e
    out = []
    for rec in doc.get("records") or []:
        sub = str(rec.get("subtype", ""))
        nqn = rec.get("subnqn")
        if nqn and "discovery" not in sub and nqn not in out:
            out.append(str(nqn))
    return out
