"""The source interface every transport implements (S3, HTTP, NVMe block device, userspace
NVMe/TCP). A source only delivers bytes; the cache verifies them with
`signed.integrity.StreamVerifier` before anything is installed, so no source is trusted.
"""

from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

from pifarm.signed.integrity import BlobRef


@runtime_checkable
class Source(Protocol):
    #: short stable label used in metrics, the node state file and progress output:
    #: "s3", "http", "nvme-kernel", "nvme-tcp-userspace", "local"
    name: str

    def chunks(self, ref: BlobRef, start: int = 0) -> Iterator[bytes]:
        """Yield the blob's bytes in order from offset `start` to `ref.size`.

        Raise `errors.SourceError` (or `SourceTimeout`) when the transport fails; the fallback
        chain then tries the next source. Never verify here: the cache does.
        """
        ...

    def close(self) -> None: ...

    # Optional, not part of the protocol: `blob_file(ref) -> Path | None` names a file in which the
    # source lays the blob's bytes as it fetches them and from which `chunks()` reads them (the peer
    # source's piece store). On the cache's filesystem the cache then verifies what `chunks()`
    # yields as usual, writes nothing, and links that file in once the whole blob verified.
