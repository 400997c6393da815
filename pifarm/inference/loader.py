"""Load a model version's bytes from the node cache, verified, before any runtime sees them.

The chain is ref -> manifest -> blob: the active ref names a manifest digest, the manifest
(whose canonical body must hash to that digest, and carry a trusted signature when keys are
configured) names the model file's BLAKE3 digest and size, and the blob is read into memory
and hashed by the one StreamVerifier. The runtime gets exactly the bytes that were hashed, so a
file swapped or truncated after a check can never reach it (tflite-runtime segfaults on a
truncated model). A flatbuffer sanity check then refuses files that verify but are not TFLite.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import tflite

from pifarm.cache.layout import CacheLayout, RefValue
from pifarm.errors import IntegrityError, InferenceError, NotFound, SignatureError
from pifarm.signed.integrity import BlobRef, StreamVerifier
from pifarm.signed.manifest import Manifest, manifest_digest
from pifarm.signed.signing import TrustedKeys

TFLITE_IDENTIFIER = b"TFL3"


class NotServable(InferenceError):
    """The version is not a model this server runs (e.g. format "raw"): not an error to fix."""


@dataclass(frozen=True)
class VerifiedModel:
    """A model version whose bytes were hashed against its manifest on the way into memory."""

    name: str
    version: int
    manifest_digest: str
    manifest: Manifest
    content: bytes
    path: Path


def read_manifest(layout: CacheLayout, name: str, ref: RefValue, trusted: TrustedKeys | None) -> Manifest:
    path = layout.manifest(name, ref.version)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise NotFound(f"manifest {path} for {name} v{ref.version} is missing from the cache; pull it again") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise IntegrityError(f"manifest {path} is not JSON: {e}") from e
    what = f"manifest {name} v{ref.version}"
    if trusted is not None and len(trusted):
        body = trusted.verify(doc, what=what)
    elif isinstance(doc, dict) and isinstance(doc.get("signed"), dict):
        body = doc["signed"]
    else:
        raise SignatureError(f"{what} at {path} is not a signed document")
    got = manifest_digest(body)
    if got != ref.manifest_digest:
        raise IntegrityError(f"{what} at {path} hashes to {got}, but the active ref names {ref.manifest_digest}")
    m = Manifest.from_json(body)
    if m.name != name or m.version != ref.version:
        raise IntegrityError(f"{what} at {path} describes {m.name} v{m.version}")
    if m.format != "tflite":
        raise NotServable(f"{what} is format {m.format!r}; the inference server runs tflite models only")
    return m


def read_verified(path: Path, ref: BlobRef) -> bytes:
    """The file's bytes, only if they are exactly the size and BLAKE3 digest `ref` promises."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != ref.size:
                raise IntegrityError(f"blob {ref.digest} at {path}: {size} bytes on disk, manifest says {ref.size}")
            data = f.read(ref.size + 1)
    except FileNotFoundError as e:
        raise NotFound(f"blob {ref.digest} is missing from the cache ({path}); pull the model again") from e
    v = StreamVerifier(ref, source=str(path))
    v.update(data)  # refuses more than ref.size bytes (the file grew after fstat)
    v.finish()
    return data


def check_flatbuffer(content: bytes, what: str) -> None:
    """Refuse bytes that are not a plausible TFLite flatbuffer before a runtime parses them."""
    if len(content) < 8 or content[4:8] != TFLITE_IDENTIFIER:
        raise InferenceError(f"{what} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    try:
        model = tflite.Model.GetRootAs(content, 0)
        n_sub = model.SubgraphsLength()
        if n_sub < 1:
            raise InferenceError(f"{what} has no subgraphs")
        n_buf = model.BuffersLength()
        for s in range(n_sub):
            sg = model.Subgraphs(s)
            n_t = sg.TensorsLength()
            ios = [sg.Inputs(i) for i in range(sg.InputsLength())] + [sg.Outputs(i) for i in range(sg.OutputsLength())]
            if any(not 0 <= t < n_t for t in ios):
                raise InferenceError(f"{what}: subgraph {s} names a tensor that does not exist")
            for t in range(n_t):
                if not 0 <= sg.Tensors(t).Buffer() < max(n_buf, 1):
                    raise InferenceError(f"{what}: tensor {t} names a buffer that does not exist")
    except InferenceError:
        raise
    except Exception as e:  # the generated reader raises struct/Index errors on bad offsets
        raise InferenceError(f"{what} is a damaged TFLite flatbuffer: {type(e).__name__}: {e}") from e


def load_verified(layout: CacheLayout, name: str, ref: RefValue, trusted: TrustedKeys | None = None) -> VerifiedModel:
    manifest = read_manifest(layout, name, ref, trusted)
    entry = manifest.primary
    path = layout.blob(entry.digest)
    content = read_verified(path, entry.ref)
    check_flatbuffer(content, f"model {name} v{ref.version} ({entry.path})")
    return VerifiedModel(name, ref.version, ref.manifest_digest, manifest, content, path)
