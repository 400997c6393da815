"""NVMe completion status → one clear sentence (NVMe base spec 2.0, figures 100-107, and
the Fabrics spec's command-specific Connect/Authentication codes)."""

from __future__ import annotations

from pifarm.nvmewire._errors import NvmeStatusError

SUCCESS = 0x000
INVALID_OPCODE = 0x001
INVALID_FIELD = 0x002
CID_CONFLICT = 0x003
DATA_XFER_ERROR = 0x004
INTERNAL = 0x006
ABORT_REQ = 0x007
INVALID_NS = 0x00B
CMD_SEQ_ERROR = 0x00C
SGL_INVALID_DATA = 0x00F  # data SGL length invalid (nvmet: transfer length mismatch)
SGL_INVALID_TYPE = 0x011
NS_WRITE_PROTECTED = 0x020
LBA_RANGE = 0x080
CAP_EXCEEDED = 0x081
NS_NOT_READY = 0x082
INVALID_QID = 0x101
INVALID_LOG_PAGE = 0x109
CONNECT_INCOMPATIBLE_FORMAT = 0x180
CONNECT_CTRL_BUSY = 0x181
CONNECT_INVALID_PARAM = 0x182
CONNECT_RESTART_DISC = 0x183
CONNECT_INVALID_HOST = 0x184
AUTH_REQUIRED = 0x191
UNRECOVERED_READ = 0x281
ACCESS_DENIED = 0x286

MESSAGES = {
    SUCCESS: "success",
    INVALID_OPCODE: "invalid command opcode (the controller does not support this command)",
    INVALID_FIELD: "invalid field in command",
    CID_CONFLICT: "command id conflict (a command with this id is still in flight)",
    DATA_XFER_ERROR: "data transfer error",
    0x005: "commands aborted due to power loss notification",
    INTERNAL: "internal error in the controller",
    ABORT_REQ: "command abort requested",
    0x008: "command aborted due to SQ deletion",
    0x00A: "invalid command opcode in fused operation",
    INVALID_NS: "invalid namespace or format (no such namespace on this controller)",
    CMD_SEQ_ERROR: "command sequence error",
    0x00D: "invalid SGL segment descriptor",
    SGL_INVALID_DATA: "data SGL length invalid (transfer larger than the controller allows)",
    SGL_INVALID_TYPE: "SGL descriptor type invalid",
    0x01D: "command not supported by the controller in its current state",
    NS_WRITE_PROTECTED: "namespace is write protected",
    0x021: "command interrupted",
    0x022: "transient transport error",
    LBA_RANGE: "LBA out of range (read past the end of the namespace)",
    CAP_EXCEEDED: "capacity exceeded",
    NS_NOT_READY: "namespace not ready",
    0x083: "reservation conflict",
    0x101: "invalid completion queue",
    INVALID_QID: "invalid queue identifier",
    0x102: "invalid queue size",
    0x105: "asynchronous event request limit exceeded",
    INVALID_LOG_PAGE: "invalid log page",
    0x10F: "feature identifier not saveable",
    CONNECT_INCOMPATIBLE_FORMAT: "connect: incompatible format",
    CONNECT_CTRL_BUSY: "connect: controller busy",
    CONNECT_INVALID_PARAM: "connect: invalid parameters (unknown subsystem NQN, bad controller id or queue size)",
    CONNECT_RESTART_DISC: "connect: restart discovery",
    CONNECT_INVALID_HOST: "connect: host NQN is not allowed on this subsystem (add it to the subsystem's allowed hosts)",
    0x190: "authentication failed",
    AUTH_REQUIRED: "authentication required (the host must complete DH-HMAC-CHAP first)",
    0x280: "write fault",
    UNRECOVERED_READ: "unrecovered read error",
    0x282: "end-to-end guard check error",
    0x285: "compare failure",
    ACCESS_DENIED: "access denied",
    0x287: "deallocated or unwritten logical block",
    0x300: "internal path error",
    0x301: "asymmetric access persistent loss",
    0x302: "asymmetric access inaccessible",
    0x303: "asymmetric access transition",
    0x360: "controller pathing error",
    0x370: "host pathing error",
    0x371: "command aborted by host",
}

_SCT = {0: "generic", 1: "command specific", 2: "media and data integrity", 3: "path related", 7: "vendor specific"}


def status_message(status: int) -> str:
    """A readable sentence for a status word in the Linux convention (0x4184 etc.)."""
    code = status & 0x7FF
    text = MESSAGES.get(code)
    if text is None:
        text = f"{_SCT.get(code >> 8, 'reserved')} status 0x{code & 0xFF:02x}"
    suffix = " (do not retry)" if status & 0x4000 else ""
    return f"{text} [status 0x{status:04x}]{suffix}"


def check_status(status: int, what: str) -> None:
    """Raise NvmeStatusError naming the command unless the status is success."""
    if status & 0x7FF:
        raise NvmeStatusError(f"{what}: {status_message(status)}", status)
