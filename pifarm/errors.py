"""The one error tree every pifarm component raises from.

    PifarmError                 anything pifarm reports to a user (CLI exit 1, one line)
    ├── UsageError              the caller asked for something malformed (CLI exit 2)
    ├── ConfigError             a config file or variable is missing or has the wrong type
    ├── NotFound                a model, version, blob, ref or device does not exist
    ├── Conflict                the request contradicts the current state
    ├── ReadOnlyError           the registry or cache refuses writes right now (and says why)
    ├── SourceError             a transport failed; try the next source
    │   └── SourceTimeout       ... because its deadline passed
    ├── IntegrityError          bytes, a signature or a document failed verification
    │   └── SignatureError      ... specifically an Ed25519 signature / unknown key
    ├── ProtocolError           a peer spoke a wire protocol wrongly (NVMe/TCP, HTTP)
    ├── ConfigfsError           the kernel's configfs refused an operation
    └── InferenceError          a model could not be loaded or run

Messages say what failed, on what, and what to do next. Always raise ... from the cause.
"""

from __future__ import annotations


class PifarmError(Exception):
    """Base of every error pifarm reports; str(e) is a complete one-line message."""

    exit_code = 1


class UsageError(PifarmError):
    exit_code = 2


class ConfigError(PifarmError):
    """`key` and `expected`, when a settings check knows them, let the config loader report file,
    key and expected type for a value refused after conversion (e.g. in `__post_init__`)."""

    exit_code = 2

    def __init__(self, message: str = "", *, key: str = "", expected: str = ""):
        super().__init__(message)
        self.key = key
        self.expected = expected


class NotFound(PifarmError):
    pass


class Conflict(PifarmError):
    pass


class ReadOnlyError(PifarmError):
    pass


class SourceError(PifarmError):
    """A transport could not deliver; `source` names it so the fallback chain can report it."""

    def __init__(self, message: str, source: str = ""):
        super().__init__(message)
        self.source = source


class SourceTimeout(SourceError):
    pass


class IntegrityError(PifarmError):
    pass


class SignatureError(IntegrityError):
    pass


class ProtocolError(PifarmError):
    pass


class ConfigfsError(PifarmError):
    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class InferenceError(PifarmError):
    pass
