"""Issue 6 with the real daemons in the VM: the node's boot sequence as a Pi runs it.

`pifarm node identity` (writes /etc/nvme/hostnqn + hostid) -> the aggregator (`pifarm aggregator
run`, which exports every served version through the kernel target by itself) allows that NQN ->
a model is published -> `pifarm node run --no-serve` with `[[sources]] nvme-kernel` then `http`
attaches, finds the namespace by UUID, reads and verifies the blobs into its cache, and
records the source; a second version arrives the same way without reconnecting. Prints one JSON
document of facts on the last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())

from pifarm.appliance.demo import samplemodel as sm  # noqa: E402
from tests.support.aggregator import start_aggregator  # noqa: E402
from tests.vm.scenarios import common  # noqa: E402

SCRATCH = Path(os.environ.get("PIFARM_VM_SCRATCH", "/scratch"))
WAIT = 180.0  # imports over 9p under TCG are slow; every wait is bounded by this


def until(cond, what: str, timeout: float = WAIT, logs: tuple[Path, ...] = ()):
    def tails() -> str:
        return "\n" + "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    return common.until(cond, what, timeout, interval=0.2, context=tails)


def state(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def main() -> None:
    facts: dict = {}
    work = SCRATCH / "node-run"
    work.mkdir()
    ident = subprocess.run([sys.executable, "-m", "pifarm", "node", "identity", "--json"], capture_output=True,
                           text=True, timeout=120, check=True)
    hostnqn = json.loads(ident.stdout)["hostnqn"]
    facts["identity_created"] = json.loads(ident.stdout)["created"]

    cfg = work / "aggregator.toml"
    cfg.write_text(f'[target]\naddresses = ["127.0.0.1"]\nallowed_hosts = ["{hostnqn}"]\n'
                   'subsystem_nqn = "nqn.2014-08.org.pifarm:aggregator:vm"\n')
    agg = start_aggregator(work / "agg", config=cfg)
    try:
        model = work / "sample.tflite"
        sm.write_sample(model, "linear", seed=1)
        with agg.client() as c:
            c.publish(model, "sample", "stable")
        until(lambda: list(Path("/sys/kernel/config/nvmet/subsystems").glob("*/namespaces/1/enable")),
              "the aggregator exporting v1", logs=(agg.log_path,))

        node_cfg = work / "node.toml"
        node_cfg.write_text(
            f'[node]\ntrusted_keys = ["{agg.pubkey}"]\n[cache]\nscrub_interval = 0.0\ntamper_watch = false\n'
            '[[sources]]\nkind = "nvme-kernel"\naddress = "127.0.0.1:4420"\ndeadline = 60\n'
            'options = { reconnect_delay = 1, rediscover_interval = 2, read_timeout = 20 }\n'
            '[[sources]]\nkind = "http"\ndeadline = 60\n')
        st, logp = work / "state", work / "node.log"
        with open(logp, "wb") as log:
            node = subprocess.Popen([sys.executable, "-m", "pifarm", "-v", "node", "run", "--aggregator", agg.url,
                                     "--config", str(node_cfg), "--cache", str(work / "cache"), "--state-dir",
                                     str(st), "--no-serve"], stdout=log, stderr=subprocess.STDOUT)
        try:
            s1 = until(lambda: (state(st / "node.json").get("models", {}).get("sample", {}).get("version") == 1)
                       and state(st / "node.json"), "node: sample v1 active", logs=(logp, agg.log_path))
            n1 = state(st / "nvme.json")
            facts.update(v1_source=s1["models"]["sample"].get("source"), nvme_path_v1=n1.get("path"),
                         nvme_volumes_v1=[v["version"] for v in n1.get("volumes", [])],
                         controllers_v1=n1.get("controllers"))
            sm.write_sample(model, "linear", seed=2)
            with agg.client() as c:
                c.publish(model, "sample", "stable")
            s2 = until(lambda: (state(st / "node.json").get("models", {}).get("sample", {}).get("version") == 2)
                       and state(st / "node.json"), "node: sample v2 active", logs=(logp, agg.log_path))
            n2 = state(st / "nvme.json")
            facts.update(v2_source=s2["models"]["sample"].get("source"), nvme_path_v2=n2.get("path"),
                         controllers_v2=n2.get("controllers"), node_alive=node.poll() is None,
                         hostnqn_file=Path("/etc/nvme/hostnqn").read_text().strip(), hostnqn=hostnqn)
        finally:
            node.terminate()
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
            print(logp.read_text(errors="replace")[-2500:], flush=True)
    finally:
        agg.stop()
    print(json.dumps(facts, sort_keys=True))


if __name__ == "__main__":
    main()
