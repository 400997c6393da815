"""A small classic-pcap reader: Ethernet/IPv4/TCP, payload reassembled per connection and
direction (the captures have no retransmissions or reordering, so sequence order = file order;
we still key by sequence number to drop any duplicate)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TcpConn:
    host_port: int
    to_ctrl: bytearray = field(default_factory=bytearray)
    to_host: bytearray = field(default_factory=bytearray)


def read_streams(path: Path, port: int = 4420) -> list[TcpConn]:
    raw = Path(path).read_bytes()
    magic = struct.unpack_from("<I", raw, 0)[0]
    if magic != 0xA1B2C3D4:
        raise ValueError(f"{path}: not a little-endian microsecond pcap")
    linktype = struct.unpack_from("<I", raw, 20)[0]
    assert linktype == 1, "expected EN10MB"
    conns: dict[int, TcpConn] = {}
    seen: set[tuple[int, int, int]] = set()
    pos = 24
    while pos + 16 <= len(raw):
        _ts, _us, incl, _orig = struct.unpack_from("<IIII", raw, pos)
        frame = raw[pos + 16: pos + 16 + incl]
        pos += 16 + incl
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[9] != 6:
            continue
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        doff = (tcp[12] >> 4) * 4
        payload = tcp[doff:]
        if not payload:
            continue
        host_port = sport if dport == port else dport
        key = (sport, dport, seq)
        if key in seen:
            continue
        seen.add(key)
        c = conns.setdefault(host_port, TcpConn(host_port))
        (c.to_ctrl if dport == port else c.to_host).extend(payload)
    return list(conns.values())
