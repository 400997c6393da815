"""S1: a model to every node of a simulated rack, peers on vs the aggregator alone (issue 16).

A rack of network namespaces (tests/peers/rack.py): the aggregator's uplink shaped to A, every
node's up- and downlink to U = D (token buckets), real `pifarm aggregator run` and N real
`pifarm node run --no-serve`. The same nodes take a fresh M-byte model twice in the same run:
with `[[sources]] peers` before `http`, then with `http` alone. S1.ratio = aggregator-only time /
peers time; the detail gives both, the lower bound max(M/A, N·M/(A+N·U), M/D) and peers / bound.
S1.n4 and S1.n8 are the same at N = 4 and 8.

Rates default to 100 Mbit/s per node and 250 Mbit/s for the aggregator (a 1 GbE Pi and a 2.5 GbE
aggregator scaled by 10); PIFARM_S1_SCALE multiplies them (e.g. 0.5 on a machine too busy to
move 16 x 100 Mbit/s in Python), PIFARM_S1_MIB sets M (256), PIFARM_S1_NODES the sizes ("4,8,16").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.peers.rack import Rack, have_tools

MiB = 1 << 20


def _model(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def _cpu_s(rack: Rack) -> float:
    """CPU seconds (user + system) the rack's node processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for b in rack.boxes:
        fields = Path(f"/proc/{b.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def one(workdir: Path, n: int, size: int, node_mbit: float, agg_mbit: float) -> dict:
    with Rack(workdir / f"rack{n}", nodes=n, node_mbit=node_mbit, agg_mbit=agg_mbit) as rack:
        rack.start_aggregator()
        rack.start_nodes(peers=True)
        model = _model(workdir / f"a{n}.bin", size)
        cpu0 = _cpu_s(rack)
        v = rack.publish(model)
        t_peers = rack.wait_version(v, timeout=1800)
        cpu_peers = _cpu_s(rack) - cpu0
        stats = [rack.stats(i) for i in range(n)]
        rack.stop_nodes()
        rack.start_nodes(peers=False)
        model = _model(workdir / f"b{n}.bin", size)
        cpu0 = _cpu_s(rack)
        v = rack.publish(model)
        t_agg = rack.wait_version(v, timeout=3600)
        cpu_agg = _cpu_s(rack) - cpu0
    bits = size * 8
    a, u = agg_mbit * 1e6, node_mbit * 1e6
    bound = max(bits / a, n * bits / (a + n * u), bits / u)
    from_agg = sum(s.get("bytes_from_aggregator", 0) for s in stats)
    return {"n": n, "peers_s": round(t_peers, 2), "aggregator_only_s": round(t_agg, 2), "bound_s": round(bound, 2),
            "peers_over_bound": round(t_peers / bound, 3), "model_mib": size // MiB, "node_mbit": node_mbit,
            "agg_mbit": agg_mbit, "aggregator_bytes_per_node_model": round(from_agg / size, 2),
            "bad_pieces": sum(s.get("bad_pieces", 0) for s in stats),
            # CPU (user + system) of the node processes per GiB a node took, from publish to the last install
            "node_cpu_s_per_gib_peers": round(cpu_peers / (n * size / 2**30), 2),
            "node_cpu_s_per_gib_aggregator_only": round(cpu_agg / (n * size / 2**30), 2),
            "ratio": t_agg / t_peers}


def run(workdir: Path) -> dict[str, dict]:
    why = have_tools()
    if why:
        raise RuntimeError(f"S1 needs a rack: {why}")
    scale = float(os.environ.get("PIFARM_S1_SCALE", "1"))
    size = int(os.environ.get("PIFARM_S1_MIB", "256")) * MiB
    sizes = [int(x) for x in os.environ.get("PIFARM_S1_NODES", "4,8,16").split(",")]
    out = {}
    for n in sizes:
        t0 = time.monotonic()
        d = one(workdir, n, size, 100 * scale, 250 * scale)
        ratio = d.pop("ratio")
        d["wall_s"] = round(time.monotonic() - t0, 1)
        d["rate_scale"] = scale
        key = "S1" if n == max(sizes) else f"S1.n{n}"
        out[key] = {"what": f"{d['model_mib']} MiB to {n} nodes: aggregator-only time / peers time",
                    "ratio": round(ratio, 3), "goal": ">=3 (and peers_over_bound <=1.5)", "detail": d}
        print(key, out[key], flush=True)
    return out
