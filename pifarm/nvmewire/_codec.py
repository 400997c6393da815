"""The sans-I/O NVMe/TCP queue codec: bytes in, PDUs out; PDUs in, bytes out.

    codec = Codec(Role.HOST)
    sock.sendall(codec.encode(ICReq(hdgst=True)))
    codec.feed(sock.recv(65536))
    pdu = codec.next_pdu()        # a PDU, or NEED_DATA

One codec is one NVMe/TCP queue (one TCP connection). It owns the digest negotiation, the
bounded receive buffer and the queue state; it never touches a socket. All state logic lives in
TRANSITIONS below, written once for both roles: each role lists, per state, which PDU types it
may send and receive and the state that follows. Anything not in the table is a protocol error.
After an error the codec is in ERROR and every later call raises.
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import Callable

import crc32c as _crc

from pifarm.nvmewire._errors import LocalProtocolError, RemoteProtocolError
from pifarm.nvmewire._pdu import (
    CH_LEN, COMMON, DIGESTED, HLEN, WITH_DATA, Fes, Flag, ICReq, ICResp, Pdu, PduType,
    data_length_field, pack_header, pdu_data, pdu_flags, unpack,
)


class Role(enum.Enum):
    HOST = "host"
    CONTROLLER = "controller"


class State(enum.Enum):
    IDLE = "idle"  # TCP connected, no ICReq yet
    IC_PENDING = "ic-pending"  # ICReq sent (host) or received (controller)
    READY = "ready"
    CLOSED = "closed"  # a termination request was sent or received
    ERROR = "error"


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _NeedData.NEED_DATA

T = PduType
_H2C_IO = (T.CAPSULE_CMD, T.H2C_DATA)
_C2H_IO = (T.CAPSULE_RESP, T.C2H_DATA, T.R2T)

# {role: {state: {("send"|"recv", pdu type): next state}}}
TRANSITIONS: dict[Role, dict[State, dict[tuple[str, PduType], State]]] = {
    Role.HOST: {
        State.IDLE: {("send", T.ICREQ): State.IC_PENDING},
        State.IC_PENDING: {("recv", T.ICRESP): State.READY, ("recv", T.C2H_TERM): State.CLOSED,
                           ("send", T.H2C_TERM): State.CLOSED},
        State.READY: {**{("send", t): State.READY for t in _H2C_IO},
                      **{("recv", t): State.READY for t in _C2H_IO},
                      ("send", T.H2C_TERM): State.CLOSED, ("recv", T.C2H_TERM): State.CLOSED},
    },
    Role.CONTROLLER: {
        State.IDLE: {("recv", T.ICREQ): State.IC_PENDING, ("recv", T.H2C_TERM): State.CLOSED},
        State.IC_PENDING: {("send", T.ICRESP): State.READY, ("send", T.C2H_TERM): State.CLOSED},
        State.READY: {**{("recv", t): State.READY for t in _H2C_IO},
                      **{("send", t): State.READY for t in _C2H_IO},
                      ("recv", T.H2C_TERM): State.CLOSED, ("send", T.C2H_TERM): State.CLOSED},
    },
}

_DIGEST = struct.Struct("<I")
_DATA_HDR = struct.Struct("<HHII")
INCAPSULE_MAX = 16384
TERM_MAX_DATA = 152  # a termination request echoes at most this much of the offending header


def crc32c(data: bytes | memoryview) -> int:
    return _crc.crc32c(data)


class Codec:
    """One queue's codec. `max_data` bounds any single PDU's data (and so the buffer)."""

    def __init__(self, role: Role, max_data: int = 4 << 20):
        self.role = role
        self.state = State.IDLE
        self.hdgst = False
        self.ddgst = False
        self.max_data = max_data
        self.peer_maxdata = 4096  # H2CData limit, raised by the controller's ICResp
        # Optional placement hint for received read data: (cccid, offset, length) -> a writable
        # buffer of exactly `length` bytes, or None. Saves a copy for PDUs spanning received chunks.
        self.placement: Callable[[int, int, int], memoryview | None] | None = None
        self._chunks: deque[bytes] = deque()
        self._off = 0  # consumed bytes of the first chunk
        self._avail = 0
        self._error: str | None = None

    # -- state -------------------------------------------------------------------------------

    def _step(self, direction: str, t: PduType) -> None:
        table = TRANSITIONS[self.role].get(self.state, {})
        nxt = table.get((direction, t))
        if nxt is None:
            verb = "send" if direction == "send" else "receive"
            msg = f"NVMe/TCP {self.role.value} cannot {verb} {t.name} in state {self.state.value}"
            if direction == "send":
                raise LocalProtocolError(msg)
            self._fail(RemoteProtocolError(msg, fes=Fes.PDU_SEQUENCE_ERROR))
        self.state = nxt

    def _fail(self, err: RemoteProtocolError) -> None:
        self.state = State.ERROR
        self._error = str(err)
        raise err

    def _check_usable(self) -> None:
        if self.state is State.ERROR:
            raise LocalProtocolError(f"NVMe/TCP queue is unusable after an earlier error: {self._error}")

    # -- sending -----------------------------------------------------------------------------

    def encode(self, pdu: Pdu) -> bytes:
        """Serialise a PDU for this queue (digests as negotiated); raises before changing state."""
        return b"".join(self.encode_parts(pdu))

    def encode_parts(self, pdu: Pdu) -> list[bytes | memoryview]:
        """Like `encode`, but the data stays a separate buffer: write the parts one by one to
        skip copying large payloads into a joined PDU."""
        t = pdu.type
        if self.state is State.ERROR and t == (T.H2C_TERM if self.role is Role.HOST else T.C2H_TERM):
            self.state = State.READY  # after a remote error the one PDU still allowed is our termination request
        self._check_usable()
        table = TRANSITIONS[self.role].get(self.state, {})
        if ("send", t) not in table:
            self._step("send", t)  # raises the precise error
        data = pdu_data(pdu)
        if t == T.H2C_DATA and len(data) > self.peer_maxdata:
            raise LocalProtocolError(f"H2CData carries {len(data)} bytes, the controller accepts {self.peer_maxdata}")
        hd = self.hdgst and t in DIGESTED
        dd = self.ddgst and t in WITH_DATA and len(data) > 0
        flags = pdu_flags(pdu) | (Flag.HDGST if hd else 0) | (Flag.DDGST if dd else 0)
        hlen = HLEN[t]
        hend = hlen + (4 if hd else 0)
        if t in (T.H2C_TERM, T.C2H_TERM):
            data = pdu.data[:TERM_MAX_DATA]  # type: ignore[union-attr]
        pdo = hend if (data and t in WITH_DATA) else 0
        plen = hend + len(data) + (4 if dd else 0)
        header = COMMON.pack(t, flags, hlen, pdo, plen) + pack_header(pdu)
        parts = [header]
        if hd:
            parts.append(_DIGEST.pack(crc32c(header)))
        if data:
            parts.append(data)
            if dd:
                parts.append(_DIGEST.pack(crc32c(data)))
        self._step("send", t)
        if isinstance(pdu, ICResp):
            self.hdgst, self.ddgst = pdu.hdgst, pdu.ddgst
        return parts

    # -- receiving ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Queue received bytes. Nothing is copied here: a PDU that lies within one received
        chunk is parsed in place, so its data reaches the caller as a view of that chunk."""
        self._check_usable()
        if data:
            self._chunks.append(data if isinstance(data, bytes) else bytes(data))
            self._avail += len(data)

    @property
    def buffered(self) -> int:
        return self._avail

    def _peek(self, n: int) -> bytes | memoryview:
        first = self._chunks[0]
        if len(first) - self._off >= n:
            return memoryview(first)[self._off: self._off + n]
        return self._gather(n, consume=False)

    def _take(self, n: int) -> memoryview:
        first = self._chunks[0]
        if len(first) - self._off >= n:
            view = memoryview(first)[self._off: self._off + n]
            self._off += n
            if self._off == len(first):
                self._chunks.popleft()
                self._off = 0
            self._avail -= n
            return view
        return memoryview(self._gather(n, consume=True))

    def _gather(self, n: int, consume: bool) -> bytes:
        """Join the first n bytes spread over several chunks (one copy)."""
        parts, need, i, off = [], n, 0, self._off
        while need:
            c = self._chunks[i]
            k = min(len(c) - off, need)
            parts.append(memoryview(c)[off: off + k])
            need -= k
            off += k
            if off == len(c):
                i, off = i + 1, 0
        if consume:
            for _ in range(i):
                self._chunks.popleft()
            self._off = off
            self._avail -= n
        return b"".join(parts)

    def next_pdu(self) -> Pdu | _NeedData:
        """The next complete PDU, or NEED_DATA. Malformed input raises RemoteProtocolError."""
        self._check_usable()
        avail = self._avail
        if avail < CH_LEN:
            return NEED_DATA
        raw_t, flags, hlen, pdo, plen = COMMON.unpack_from(self._peek(CH_LEN))
        try:
            t = PduType(raw_t)
        except ValueError:
            self._fail(RemoteProtocolError(f"unknown NVMe/TCP PDU type 0x{raw_t:02x}", Fes.INVALID_HEADER_FIELD, 0))
        if ("recv", t) not in TRANSITIONS[self.role].get(self.state, {}):
            self._step("recv", t)  # raises
        if hlen != HLEN[t]:
            self._fail(RemoteProtocolError(f"{t.name} with hlen {hlen}, expected {HLEN[t]}", Fes.INVALID_HEADER_FIELD, 2))
        hd = self.hdgst and t in DIGESTED
        if hd and not flags & Flag.HDGST:
            self._fail(RemoteProtocolError(f"{t.name} lacks the negotiated header digest", Fes.INVALID_HEADER_FIELD, 1))
        hend = hlen + (4 if hd else 0)
        limit = hend + self.max_data + 4 if t in WITH_DATA else hend + (TERM_MAX_DATA if t in (T.H2C_TERM, T.C2H_TERM) else 0)
        if t == T.CAPSULE_CMD:
            limit = hend + INCAPSULE_MAX + 4  # in-capsule data is small (Connect: 1024); refuse larger
        if plen < hend or plen > limit:
            self._fail(RemoteProtocolError(f"{t.name} with plen {plen} (header {hend}, limit {limit})",
                                           Fes.DATA_LIMIT_EXCEEDED if plen > limit else Fes.INVALID_HEADER_FIELD, 4))
        if avail < plen:
            return NEED_DATA
        pdu = None
        if t == T.C2H_DATA and self.placement is not None and len(self._chunks[0]) - self._off < plen:
            pdu = self._take_placed(flags, hlen, pdo, plen, hd)
        if pdu is None:
            pdu = self._parse(t, flags, hlen, pdo, plen, hd, self._take(plen))
        self._step("recv", t)
        if isinstance(pdu, ICReq) and self.role is Role.CONTROLLER:
            pass  # digests start only with our ICResp
        elif isinstance(pdu, ICResp):
            self.hdgst, self.ddgst = pdu.hdgst, pdu.ddgst
            self.peer_maxdata = pdu.maxdata
        return pdu

    def _take_placed(self, flags: int, hlen: int, pdo: int, plen: int, hd: bool) -> Pdu | None:
        """A C2HData spread over several received chunks: copy its data straight into the buffer
        `placement(cccid, offset, length)` names, instead of joining the chunks first. Returns
        None (nothing consumed) when the PDU is irregular, so the generic path reports it."""
        hend = hlen + (4 if hd else 0)
        head = bytes(self._peek(hend))
        if hd and _DIGEST.unpack_from(head, hlen)[0] != crc32c(head[:hlen]):
            return None
        cccid, _ttag, datao, datal = _DATA_HDR.unpack_from(head, CH_LEN)
        dd = self.ddgst and bool(flags & Flag.DDGST)
        if self.ddgst != dd or pdo < hend or pdo + datal + (4 if dd else 0) != plen or datal == 0:
            return None
        dest = self.placement(cccid, datao, datal)  # type: ignore[misc]
        if dest is None or len(dest) != datal:
            return None
        hdr = self._take(pdo)
        pos = 0
        while pos < datal:  # scatter the chunks into dest, consuming them
            c = self._chunks[0]
            k = min(len(c) - self._off, datal - pos)
            dest[pos: pos + k] = memoryview(c)[self._off: self._off + k]
            pos += k
            self._off += k
            self._avail -= k
            if self._off == len(c):
                self._chunks.popleft()
                self._off = 0
        if dd:
            (got,) = _DIGEST.unpack_from(self._take(4))
            want = crc32c(dest)
            if got != want:
                self._fail(RemoteProtocolError(
                    f"C2H_DATA data digest mismatch (got 0x{got:08x}, computed 0x{want:08x})", Fes.HEADER_DIGEST_ERROR))
        return unpack(T.C2H_DATA, flags, hdr[CH_LEN:hlen], dest)

    def _parse(self, t: PduType, flags: int, hlen: int, pdo: int, plen: int, hd: bool, pdu: memoryview) -> Pdu:
        if hd:
            (got,) = _DIGEST.unpack_from(pdu, hlen)
            want = crc32c(pdu[:hlen])
            if got != want:
                self._fail(RemoteProtocolError(
                    f"{t.name} header digest mismatch (got 0x{got:08x}, computed 0x{want:08x})", Fes.HEADER_DIGEST_ERROR))
        data = b""
        if t in WITH_DATA and plen > hlen + (4 if hd else 0):
            if pdo < hlen + (4 if hd else 0) or pdo > plen:
                self._fail(RemoteProtocolError(f"{t.name} with pdo {pdo} outside [header end, plen {plen}]",
                                               Fes.INVALID_HEADER_FIELD, 3))
            dd = self.ddgst and bool(flags & Flag.DDGST)
            if self.ddgst and not dd:
                self._fail(RemoteProtocolError(f"{t.name} lacks the negotiated data digest", Fes.INVALID_HEADER_FIELD, 1))
            end = plen - (4 if dd else 0)
            if end < pdo:
                self._fail(RemoteProtocolError(f"{t.name} plen {plen} too short for its data digest", Fes.INVALID_HEADER_FIELD, 4))
            body = pdu[pdo:end]
            if dd:
                (got,) = _DIGEST.unpack_from(pdu, end)
                want = crc32c(body)
                if got != want:
                    self._fail(RemoteProtocolError(
                        f"{t.name} data digest mismatch (got 0x{got:08x}, computed 0x{want:08x})", Fes.HEADER_DIGEST_ERROR))
            # data PDUs keep a read-only view of the received bytes (no copy); capsules copy
            data = bytes(body) if t == T.CAPSULE_CMD else body
        elif t in (T.H2C_TERM, T.C2H_TERM):
            data = bytes(pdu[hlen:plen])
        datal = data_length_field(t, pdu[CH_LEN:hlen])
        if datal is not None and datal != len(data):
            self._fail(RemoteProtocolError(f"{t.name} datal {datal} does not match the {len(data)} data bytes in the PDU",
                                           Fes.INVALID_HEADER_FIELD, 16))
        try:
            return unpack(t, flags, pdu[CH_LEN:hlen], data)
        except LocalProtocolError as e:
            self._fail(RemoteProtocolError(f"malformed {t.name}: {e}", Fes.INVALID_HEADER_FIELD))
            raise  # unreachable: _fail raises

    def close(self) -> None:
        """Mark the queue closed (after a termination request or EOF)."""
        if self.state is not State.ERROR:
            self.state = State.CLOSED

    def eof_error(self) -> RemoteProtocolError | None:
        """What to report when the peer closes: None at a PDU boundary, else the truncation."""
        if self.buffered:
            return RemoteProtocolError(
                f"connection closed in the middle of a PDU ({self.buffered} bytes of it received)",
                Fes.PDU_SEQUENCE_ERROR)
        return None
