"""Errors of the NVMe/TCP codec and of NVMe completions.

    ProtocolError (pifarm.errors)
    ├── LocalProtocolError    we were about to send something the protocol forbids (our bug or
    │                         the caller's); nothing was sent
    └── RemoteProtocolError   the peer sent something malformed; the queue is unusable. `fes`
                              is the fatal error status to put in a termination request.
    SourceError (pifarm.errors)
    └── NvmeStatusError       a command completed with a non-zero NVMe status (refused host,
                              write-protected namespace, ...): the transport worked, the peer said no
"""

from __future__ import annotations

from pifarm.errors import ProtocolError, SourceError


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    def __init__(self, message: str, fes: int = 0x01, fei: int = 0):
        super().__init__(message)
        self.fes = fes
        self.fei = fei


class NvmeStatusError(SourceError):
    """`status` uses the kernel's convention: SCT << 8 | SC, plus 0x4000 when DNR is set."""

    def __init__(self, message: str, status: int, source: str = "nvme-tcp-userspace"):
        super().__init__(message, source)
        self.status = status

    @property
    def code(self) -> int:
        return self.status & 0x7FF

    @property
    def dnr(self) -> bool:
        return bool(self.status & 0x4000)
