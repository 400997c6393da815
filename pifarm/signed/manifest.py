"""Model manifests: the signed description of one model version, shared by both sides.

    {"type": "manifest", "name": "mobilenet", "version": 3, "format": "tflite",
     "files": [{"path": "model.tflite", "size": 123, "digest": "blake3:<hex>",
                "pieces": {"size": 4194304, "digests": ["<hex>", ...]}}],   # pieces: optional
     "tensors": {"inputs": [{"name", "shape", "dtype"}], "outputs": [...]},
     "created": "2026-11-27T10:00:00Z", "labels": {"k": "v"}}

The manifest digest (BLAKE3 of the canonical signed body) names the version everywhere: S3
keys, snapshot entries, and the NVMe namespace UUID/NGUID a node looks for.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import blake3

from pifarm.errors import IntegrityError, UsageError
from pifarm.signed.canonical import canonical_bytes
from pifarm.signed.integrity import BlobRef, digest_hex, make_digest
from pifarm.signed.pieces import PieceTable

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
FORMATS = ("tflite", "raw")
MAX_PATH = 255


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(
            f"invalid model name {name!r}: use 1-64 characters a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def check_relpath(path: str) -> str:
    """Refuse any manifest path that could escape the directory it is joined to."""
    bad = (
        not isinstance(path, str)
        or not path
        or len(path) > MAX_PATH
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or re.match(r"^[A-Za-z]:", path) is not None
        or any(part in ("", ".", "..") for part in path.split("/"))
    )
    if bad:
        raise UsageError(f"invalid file path {path!r} in manifest: relative paths only, no '..', no empty parts")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    digest: str
    pieces: PieceTable | None = None  # per-piece digests (optional: peers need them, other sources do not)

    def __post_init__(self) -> None:
        check_relpath(self.path)
        BlobRef(self.digest, self.size)
        if self.pieces is not None:
            self.pieces.check_blob(self.size)

    @property
    def ref(self) -> BlobRef:
        return BlobRef(self.digest, self.size)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "size": self.size, "digest": self.digest}
        if self.pieces is not None:  # absent, not null: a manifest without pieces signs as before
            d["pieces"] = self.pieces.to_json()
        return d

    @classmethod
    def from_json(cls, f: dict[str, Any]) -> "FileEntry":
        entry = cls(f["path"], f["size"], f["digest"])  # a bad path stays a UsageError, said as such
        if f.get("pieces") is None:
            return entry
        try:
            return cls(entry.path, entry.size, entry.digest, PieceTable.from_json(f["pieces"]))
        except UsageError as e:  # pieces that cannot cover the blob: the document is malformed
            raise IntegrityError(f"malformed pieces: {e}") from e


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    format: str
    files: tuple[FileEntry, ...]
    created: str
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        if not isinstance(self.version, int) or self.version < 1:
            raise UsageError(f"manifest version must be a positive integer, got {self.version!r}")
        if self.format not in FORMATS:
            raise UsageError(f"unknown model format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if not self.files:
            raise UsageError(f"manifest for {self.name} lists no files")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise UsageError(f"manifest for {self.name} lists a path twice")

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def primary(self) -> FileEntry:
        """The file a runtime loads: the first `.tflite` file for tflite models, else the first."""
        if self.format == "tflite":
            for f in self.files:
                if f.path.endswith(".tflite"):
                    return f
        return self.files[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "manifest",
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "files": [f.to_json() for f in self.files],
            "tensors": {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]},
            "created": self.created,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict) or d.get("type") != "manifest":
            raise IntegrityError("document is not a manifest")
        try:
            tensors = d.get("tensors") or {}
            return cls(
                name=d["name"],
                version=d["version"],
                format=d["format"],
                files=tuple(FileEntry.from_json(f) for f in d["files"]),
                created=str(d["created"]),
                inputs=tuple(TensorSpec.from_json(t) for t in tensors.get("inputs", [])),
                outputs=tuple(TensorSpec.from_json(t) for t in tensors.get("outputs", [])),
                labels={str(k): str(v) for k, v in (d.get("labels") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"malformed manifest: {e!r}") from e

    @property
    def digest(self) -> str:
        return manifest_digest(self.to_json())


def manifest_digest(signed_body: dict[str, Any]) -> str:
    return make_digest(blake3.blake3(canonical_bytes(signed_body)).hexdigest())


def namespace_uuid(manifest_digest_: str) -> uuid.UUID:
    """The NVMe namespace UUID a model version is exported under (RFC 9562 version 8)."""
    raw = bytearray(bytes.fromhex(digest_hex(manifest_digest_))[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def namespace_nguid(manifest_digest_: str) -> bytes:
    """The 16-byte NGUID of the same namespace (the next 16 digest bytes)."""
    return bytes.fromhex(digest_hex(manifest_digest_))[16:32]
