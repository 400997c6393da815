"""`pifarm doctor` on an aggregator with [haproxy] socket set: does HAProxy's Runtime API answer,
at admin level, with the backends `pifarm haproxy render` writes?"""

from __future__ import annotations

from typing import Any


def check_haproxy(env: Any) -> list:
    from pifarm.appliance.doctor import FAIL, PASS, WARN, Result
    from pifarm.appliance.haproxy.plan import ALL
    from pifarm.appliance.haproxy.runtime import Runtime, RuntimeCommandError
    from pifarm.errors import PifarmError

    sock = str(env.section("haproxy").get("socket") or "")
    if not sock:
        return []
    name = "haproxy runtime socket"
    rt = Runtime(sock, timeout=env.timeout)
    try:
        info = rt.info()
    except PifarmError as e:
        return [Result(name, FAIL, str(e), "start HAProxy with a config from `pifarm haproxy render --socket "
                                           f"{sock}` (its `stats socket` line), or correct [haproxy] socket")]
    if "Pid" not in info:
        return [Result(name, FAIL, f"{sock} answers, but not as HAProxy's Runtime API",
                       "point [haproxy] socket at HAProxy's `stats socket`")]
    out = [Result(name, PASS, f"{sock}: HAProxy {info.get('Version', '?')}, pid {info.get('Pid')}, "
                              f"up {info.get('Uptime', '?')}")]
    try:  # a harmless admin-level command: weight of a server that cannot exist
        rt.command("set server pifarm-doctor/none weight 1")
    except RuntimeCommandError as e:
        if "permission" in str(e).lower() or "access" in str(e).lower():
            out.append(Result("haproxy runtime level", FAIL, "the socket is not at admin level; the sync cannot "
                                                             "add, weigh or drain servers",
                              "`stats socket ... level admin` (as `pifarm haproxy render` writes it)"))
    except PifarmError:
        pass
    try:
        backends = rt.backends()
    except PifarmError as e:
        return out + [Result("haproxy backends", WARN, f"cannot list backends: {e}")]
    if ALL not in backends:
        out.append(Result("haproxy backends", WARN, f"no `{ALL}` backend: this HAProxy was not configured by "
                                                   "`pifarm haproxy render`", "pifarm haproxy render --out "
                                                   "/etc/haproxy/haproxy.cfg, then reload HAProxy"))
    else:
        models = sorted(b for b in backends if b.startswith("model_"))
        out.append(Result("haproxy backends", PASS, f"{ALL} and {len(models)} model backend(s)"))
    return out
