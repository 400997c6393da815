"""Several REAL aggregators on one S3 bucket (issue 17): same signing key, same token, same [store].

    farm = SharedFarm(tmp_path, seaweed, bucket, n=3)     # started, each its own data dir and port
    farm.aggs[0].url; farm.publisher(i); farm.converged(); farm.revision_docs(); farm.stop()
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx

from pifarm.signed.signing import SigningKey, TrustedKeys
from pifarm.signed.snapshot import verify_snapshot
from tests.support.aggregator import AggregatorProc
from tests.support.procs import free_port

TOKEN = "multi-aggregator-test-token-000000000001"


def store_toml(endpoint: str, url: str, access_key: str, secret_key: str, shared: str = "yes") -> str:
    return (f'[store]\nurl = "{url}"\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n'
            f'access_key_id = "{access_key}"\nsecret_access_key = "{secret_key}"\nshared = "{shared}"\n'
            f'check_interval = 1.0\n')


class SharedFarm:
    def __init__(self, root: Path, endpoint: str, url: str, access_key: str, secret_key: str, n: int = 2,
                 target: str = "", start: bool = True, shared: str = "yes"):
        self.root, self.url = Path(root), url
        self.endpoint, self.access_key, self.secret_key = endpoint, access_key, secret_key
        key_dir = self.root / "farm-keys"
        if not (key_dir / "signing.key").exists():
            SigningKey.generate().write(key_dir)  # what "copy keys/ to the new aggregator" means
        self.pubkey = key_dir / "signing.pub"
        self.aggs: list[AggregatorProc] = []
        for i in range(n):
            d = self.root / f"agg{i + 1}"
            registry = ""
            if i == 0:  # the first gets a copy of keys/, the others point [registry] signing_key at it
                (d / "keys").mkdir(parents=True, exist_ok=True)
                for f in ("signing.key", "signing.pub"):
                    (d / "keys" / f).write_bytes((key_dir / f).read_bytes())
                os.chmod(d / "keys" / "signing.key", 0o600)
            else:
                registry = f'[registry]\nsigning_key = "{key_dir / "signing.key"}"\n\n'
            cfg = self.root / f"agg{i + 1}.toml"
            cfg.write_text(registry + f'[api]\ntoken = "{TOKEN}"\n\n' + store_toml(endpoint, url, access_key, secret_key, shared)
                           + "\n[target]\n" + (target.replace("{i}", str(i + 1)) or "enabled = false\n"))
            self.aggs.append(AggregatorProc(d, free_port(), config=cfg))
        if start:
            for a in self.aggs:
                a.start(timeout=60)

    def client(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=self.aggs[i].url, headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=httpx.Timeout(60.0))

    def snapshot(self, i: int) -> dict | None:
        try:
            r = httpx.get(self.aggs[i].url + "/v1/metadata", params={"since": -1, "wait": 0}, timeout=10)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def converged(self, indexes=None, timeout: float = 120.0) -> dict:
        """Wait until the given aggregators serve the same signed snapshot, at the bucket's head."""
        indexes = list(range(len(self.aggs))) if indexes is None else indexes
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            snaps = [self.snapshot(i) for i in indexes]
            head = self.head()
            if all(s is not None for s in snaps) and all(json.dumps(s, sort_keys=True) == json.dumps(snaps[0], sort_keys=True)
                                                         for s in snaps) and snaps[0]["signed"]["revision"] == head:
                return snaps[0]
            last = [(s or {}).get("signed", {}).get("revision") for s in snaps], head
            time.sleep(0.3)
        raise AssertionError(f"aggregators did not converge within {timeout} s: revisions, head = {last}")

    def s3(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))

    def _bucket_prefix(self) -> tuple[str, str]:
        bucket, _, prefix = self.url[len("s3://"):].partition("/")
        return bucket, (prefix.strip("/") + "/") if prefix.strip("/") else ""

    def revision_numbers(self) -> list[int]:
        bucket, prefix = self._bucket_prefix()
        out = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "revisions/"):
            out += [int(o["Key"].rsplit("/", 1)[1][:-5]) for o in page.get("Contents", [])]
        return sorted(out)

    def head(self) -> int | None:
        ns = self.revision_numbers()
        return max(ns) if ns else None

    def revision_doc(self, n: int) -> dict:
        bucket, prefix = self._bucket_prefix()
        return json.loads(self.s3().get_object(Bucket=bucket, Key=f"{prefix}revisions/{n}.json")["Body"].read())

    def check_linear_history(self) -> list[dict]:
        """Revisions 0..head without gaps; each signed, verifiable by a node, never going back, and
        each one's versions a superset of the previous one's (nothing committed ever vanishes)."""
        trusted = TrustedKeys.from_files([self.pubkey])
        ns = self.revision_numbers()
        assert ns == list(range(ns[0], ns[-1] + 1)), f"gaps in the revision history: {ns}"
        prev: set = set()
        docs = []
        seen = -1
        for n in ns:
            doc = self.revision_doc(n)
            snap = verify_snapshot(doc["snapshot"], trusted, highest_seen=seen)
            assert snap.revision == n == doc["revision"]
            seen = n
            now = {(v["name"], v["version"], v["manifest_digest"]) for v in doc["state"]["versions"]}
            assert prev <= now, f"revision {n} lost {prev - now}"
            assert len({(a, b) for a, b, _ in now}) == len(now)
            prev = now
            docs.append(doc)
        return docs

    def stop(self) -> None:
        for a in self.aggs:
            a.stop()
