"""Issue 11 in the VM: an allowed host writes garbage into a kernel-exported namespace (nvmet opens
volumes read-write). A node that then reads the volume never installs a bad byte (it falls back
to HTTP), reports the volume, and the aggregator rebuilds it in place; the next node is served
from the NVMe path again. Prints one JSON document of facts on the last line.

`[target] scrub_interval = 0`: only the node's report can trigger the rebuild here, so the test
shows that path (the periodic pass is tested on the host, tests/target/test_volume_repair.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())

from pifarm.appliance.demo import samplemodel as sm  # noqa: E402
from pifarm.target.volume_scrub import check_volume  # noqa: E402
from pifarm.volume.format import VolumeReader  # noqa: E402
from tests.support.aggregator import AggregatorProc  # noqa: E402
from tests.support.procs import free_port  # noqa: E402
from tests.vm.scenarios.node_run import SCRATCH, WAIT, state, until  # noqa: E402


def run_node(work: Path, agg, name: str, hold=None) -> tuple[dict, dict, Path]:
    """One `pifarm node run` with a fresh cache until sample v1 is active; (node.json, nvme.json)."""
    cfg = work / f"{name}.toml"
    cfg.write_text(
        f'[node]\ntrusted_keys = ["{agg.pubkey}"]\n[cache]\nscrub_interval = 0.0\ntamper_watch = false\n'
        '[[sources]]\nkind = "nvme-kernel"\naddress = "127.0.0.1:4420"\ndeadline = 60\n'
        'options = { reconnect_delay = 1, rediscover_interval = 2, read_timeout = 20 }\n'
        '[[sources]]\nkind = "http"\ndeadline = 60\n')
    st, logp, cache = work / f"{name}-state", work / f"{name}.log", work / f"{name}-cache"
    with open(logp, "wb") as log:
        node = subprocess.Popen([sys.executable, "-m", "pifarm", "-v", "node", "run", "--aggregator", agg.url,
                                 "--config", str(cfg), "--cache", str(cache), "--state-dir", str(st), "--no-serve"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        s = until(lambda: (state(st / "node.json").get("models", {}).get("sample", {}).get("version") == 1)
                  and state(st / "node.json"), f"{name}: sample v1 active", logs=(logp, agg.log_path))
        if hold is not None:  # keep the node up until its report has been acted on
            until(hold, f"{name}: what the node triggered", logs=(logp, agg.log_path))
        return s, state(st / "nvme.json"), cache
    finally:
        node.terminate()
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        print(logp.read_text(errors="replace")[-1500:], flush=True)


def cache_blobs_ok(cache: Path) -> bool:
    """Every installed blob hashes to its name (BLAKE3 via pifarm's verifier)."""
    from pifarm.signed.integrity import digest_file

    blobs = list((cache / "blobs" / "blake3").glob("*"))
    return bool(blobs) and all(digest_file(p)[0] == f"blake3:{p.name}" for p in blobs)


def main() -> None:
    facts: dict = {}
    work = SCRATCH / "volume-repair"
    work.mkdir()
    ident = subprocess.run([sys.executable, "-m", "pifarm", "node", "identity", "--json"], capture_output=True,
                           text=True, timeout=120, check=True)
    hostnqn = json.loads(ident.stdout)["hostnqn"]
    cfg = work / "aggregator.toml"
    cfg.write_text(f'[target]\naddresses = ["127.0.0.1"]\nallowed_hosts = ["{hostnqn}"]\n'
                   'subsystem_nqn = "nqn.2014-08.org.pifarm:aggregator:vm-repair"\nscrub_interval = 0\n')
    agg = AggregatorProc(work / "agg", free_port(), config=cfg).start(timeout=WAIT)  # TCG, imports over 9p
    try:
        model = work / "sample.tflite"
        sm.write_sample(model, "linear", seed=3)
        with agg.client() as c:
            c.publish(model, "sample", "stable")
        vol = work / "agg" / "volumes" / "sample-v1.vol"
        until(lambda: list(Path("/sys/kernel/config/nvmet/subsystems").glob("*/namespaces/1/enable")),
              "the aggregator exporting v1", logs=(agg.log_path,))
        s1, n1, _ = run_node(work, agg, "first")
        facts["first_source"] = s1["models"]["sample"].get("source")
        device = n1["volumes"][0]["device"]

        # the allowed host (this node's kernel connection) writes garbage over the middle of a blob
        with VolumeReader.from_file(vol) as r:
            _p, _d, off, size = max(r.entries, key=lambda e: e[3])
        seek = (off + size // 2) // 4096
        fd = os.open(device, os.O_WRONLY)
        try:
            os.pwrite(fd, os.urandom(8192), seek * 4096)
            os.fsync(fd)  # through the host's page cache to the target
        finally:
            os.close(fd)
        facts["damaged_after_write"] = bool(until(lambda: check_volume(vol), "the garbage in the volume file",
                                                  timeout=60))
        before = hashlib.sha256(vol.read_bytes()).hexdigest()

        import httpx

        def scrub() -> dict:
            return httpx.get(agg.url + "/health", timeout=30).json().get("volume_scrub") or {}

        # reads the corrupt blob, falls back to HTTP, reports the volume (kept up until acted on)
        s2, n2, cache2 = run_node(work, agg, "second", hold=lambda: scrub().get("damaged", 0) >= 1)
        facts["second_source"] = s2["models"]["sample"].get("source")
        facts["second_corrupt_seen"] = bool(n2.get("corrupt"))
        facts["second_cache_ok"] = cache_blobs_ok(cache2)
        facts["rebuilt"] = until(lambda: check_volume(vol) == [], "the aggregator rebuilding the volume",
                                 logs=(agg.log_path,)) is True
        facts["changed_by_rebuild"] = hashlib.sha256(vol.read_bytes()).hexdigest() != before
        # the NVMe path serves the volume whole again: read it as a node does (O_DIRECT, the block
        # device of the same connection) and verify every blob
        from pifarm.initiator.blockdev_source import DirectFile

        f = DirectFile(device, direct=True, read_timeout=60)
        try:
            r = VolumeReader(f.read_at, where=device)
            for _p, digest, _o, _s in r.entries:
                r.verify_blob(digest)
            facts["nvme_volume_verifies"] = True
        finally:
            f.close()
        facts["health"] = scrub()
    finally:
        agg.stop()
    print(json.dumps(facts, sort_keys=True))


if __name__ == "__main__":
    main()
