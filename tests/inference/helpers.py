"""Build real node caches for inference tests: signed manifests, verified blobs, active refs.

Models enter through the cache engineer's `pifarm.cache.store.Cache` (the same verified install
a node performs), fed by `BytesSource`, a complete in-memory implementation of the Source
protocol. Real TFLite models come from tests/support/models.py (`make models`).
"""

from __future__ import annotations

import datetime
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pifarm.cache.layout import RefValue
from pifarm.cache.store import Cache
from pifarm.signed.integrity import BlobRef, digest_bytes
from pifarm.signed.manifest import FileEntry, Manifest, manifest_digest
from pifarm.signed.signing import SigningKey

REPO = Path(__file__).resolve().parents[2]


class BytesSource:
    """A Source that serves blobs held in memory (name "local")."""

    name = "local"

    def __init__(self, blobs: dict[str, bytes]):
        self._blobs = blobs

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        data = self._blobs[ref.digest]
        for i in range(start, len(data), 1 << 16):
            yield data[i : i + (1 << 16)]

    def close(self) -> None:
        pass


@dataclass
class CacheBuilder:
    root: Path
    key: SigningKey

    @property
    def cache(self) -> Cache:
        return Cache(self.root)

    def publish(self, name: str, version: int, model: bytes, activate: bool = True, fmt: str = "tflite") -> RefValue:
        """Install `model` as name vN (signed manifest + blob) and, by default, make it active."""
        digest = digest_bytes(model)
        m = Manifest(name=name, version=version, format=fmt,
                     files=(FileEntry("model.tflite" if fmt == "tflite" else "data.bin", len(model), digest),),
                     created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        doc = self.key.sign(m.to_json())
        cache = self.cache
        cache.install_manifest(name, version, doc)
        cache.install_files(m, [BytesSource({digest: model})])
        ref = RefValue(version, manifest_digest(doc["signed"]))
        if activate:
            cache.activate(name, ref)
        return ref

    def blob_path(self, model: bytes) -> Path:
        return self.root / "blobs" / "blake3" / digest_bytes(model).split(":", 1)[1]

    def tamper(self, model: bytes, new: bytes) -> Path:
        """Overwrite a stored blob in place (what bit rot or an attacker would do)."""
        p = self.blob_path(model)
        p.chmod(0o644)
        p.write_bytes(new)
        return p


def make_cache(root: Path) -> CacheBuilder:
    root.mkdir(parents=True, exist_ok=True)
    return CacheBuilder(root, SigningKey.generate())


class LiveServer:
    """A real uvicorn on 127.0.0.1:0 in a thread; `url` once started; stop() shuts it down."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        self.server.run()  # uvicorn's own loop factory: uvloop when installed, as in production

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.01)
        sock: socket.socket = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def infer_body(name: str, array, datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.reshape(-1).tolist()}]}
