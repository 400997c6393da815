"""The one error tree every pifarm component raises from.

                                HTTP  what it means
    PifarmError                 500   anything pifarm reports to a user (CLI exit 1, one line)
    ├── UsageError              400   the caller asked for something malformed (CLI exit 2)
    │   ├── TooLarge            413   ... a request body over the server's limit (exit 1)
    │   └── BadContent          400   ... content refused for what it is, e.g. not a TFLite model (exit 1)
    ├── Unauthorized            401   a server needs credentials and got none
    ├── Forbidden               403   credentials given, but wrong
    ├── ConfigError             500   a config file or variable is missing or has the wrong type
    ├── NotFound                404   a model, version, blob, ref or device does not exist
    ├── Conflict                409   the request contradicts the current state
    ├── ReadOnlyError           503   the registry or cache refuses writes right now (and says why)
    ├── SourceError             503   a transport failed; try the next source
    │   ├── SourceTimeout       503   ... because its deadline passed
    │   └── SourcePass          503   ... not this source's to serve (the next takes it; no failure)
    ├── IntegrityError          400   bytes, a signature or a document failed verification
    │   └── SignatureError      400   ... specifically an Ed25519 signature / unknown key
    ├── ProtocolError           500   a peer spoke a wire protocol wrongly (NVMe/TCP, HTTP)
    ├── ConfigfsError           500   the kernel's configfs refused an operation
    └── InferenceError          500   a model could not be loaded or run

Messages say what failed, on what, and what to do next. Always raise ... from the cause.

Each class carries the HTTP status a server answers it with (`http_status`, inherited by
subclasses): the one table the registry API and the inference server answer with, and the client
reads back (`for_response`).
"""

from __future__ import annotations


class PifarmError(Exception):
    """Base of every error pifarm reports; str(e) is a complete one-line message."""

    exit_code = 1
    http_status = 500


class UsageError(PifarmError):
    exit_code = 2
    http_status = 400


class TooLarge(UsageError):
    exit_code = 1  # the command line was right; the thing it sent was too big
    http_status = 413


class BadContent(UsageError):
    """A well-formed request whose content is refused (not a TFLite model): exit 1, not 2, since
    nothing is wrong with how the command was used."""

    exit_code = 1


class Unauthorized(PifarmError):
    http_status = 401


class Forbidden(PifarmError):
    http_status = 403


class ConfigError(PifarmError):
    """`key` and `expected`, when a settings check knows them, let the config loader report file,
    key and expected type for a value refused after conversion (e.g. in `__post_init__`)."""

    exit_code = 2

    def __init__(self, message: str = "", *, key: str = "", expected: str = ""):
        super().__init__(message)
        self.key = key
        self.expected = expected


class NotFound(PifarmError):
    http_status = 404


class Conflict(PifarmError):
    http_status = 409


class ReadOnlyError(PifarmError):
    http_status = 503


class SourceError(PifarmError):
    """A transport could not deliver; `source` names it so the fallback chain can report it."""

    http_status = 503

    def __init__(self, message: str, source: str = ""):
        super().__init__(message)
        self.source = source


class SourceTimeout(SourceError):
    pass


class SourcePass(SourceError):
    """Not this source's blob (e.g. the peer source and a small blob): the next source takes it,
    and nothing failed (no warning, no failure counted)."""


class IntegrityError(PifarmError):
    http_status = 400


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


#: What an error response that names no known class (a proxy's 503, a framework's 422) becomes:
#: the class answered with that status (where two share one, the more general), read off the tree.
_BY_STATUS: dict[int, type[PifarmError]] = {
    c.http_status: c for c in (UsageError, TooLarge, Unauthorized, Forbidden, NotFound, Conflict, ReadOnlyError)
} | {422: UsageError}


def for_response(status: int, kind: str = "") -> type[PifarmError]:
    """The class a server raised, from the `kind` its JSON error body names, else from `status`."""
    cls = globals().get(kind)
    if isinstance(cls, type) and issubclass(cls, PifarmError) and cls is not PifarmError:
        return cls
    return _BY_STATUS.get(status, PifarmError)
