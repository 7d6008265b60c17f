"""The DNS wire format glassbreak's resolver (sandbox.run.resolver) reads and writes: record
and response codes, names (with compression pointers, bounded), messages (header, question,
answer, authority, additional), reply flags and the client's EDNS UDP size. Standard library
only; no policy here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

QT_A, QT_NS, QT_CNAME, QT_SOA, QT_NULL, QT_MX, QT_TXT, QT_AAAA = 1, 2, 5, 6, 10, 15, 16, 28
QT_OPT, QT_SVCB, QT_HTTPS, QT_ANY = 41, 64, 65, 255
RC_NOERROR, RC_FORMERR, RC_SERVFAIL, RC_NXDOMAIN, RC_NOTIMP, RC_REFUSED = 0, 1, 2, 3, 4, 5
QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 15: "MX",
               16: "TXT", 28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
QTYPE_NUMBERS = {v: k for k, v in QTYPE_NAMES.items()}


class DNSFormatError(Exception):
    pass


def read_name(msg: bytes, off: int) -> tuple[str, int]:
    labels: list[bytes] = []
    jumps, end = 0, None
    while True:
        if off >= len(msg):
            raise DNSFormatError("name runs past the message")
        ln = msg[off]
        if ln & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DNSFormatError("bad pointer")
            ptr = ((ln & 0x3F) << 8) | msg[off + 1]
            if end is None:
                end = off + 2
            jumps += 1
            if jumps > 32 or ptr >= len(msg):
                raise DNSFormatError("pointer loop")
            off = ptr
            continue
        if ln & 0xC0:
            raise DNSFormatError("bad label type")
        off += 1
        if ln == 0:
            break
        labels.append(msg[off:off + ln])
        off += ln
    name = b".".join(labels).decode("ascii", errors="replace").lower()
    return name, (end if end is not None else off)


def encode_name(name: str) -> bytes:
    out = b""
    for lab in name.rstrip(".").split("."):
        if lab:
            b = lab.encode("ascii")
            out += bytes([len(b)]) + b
    return out + b"\0"


@dataclass
class RR:
    name: str
    type: int
    cls: int
    ttl: int
    rdata: bytes
    target: str = ""  # CNAME target


@dataclass
class Message:
    id: int
    flags: int
    questions: list[tuple[str, int, int]]
    answers: list[RR]
    authority: list[RR]
    additional: list[RR]

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def parse(msg: bytes) -> Message:
    if len(msg) < 12:
        raise DNSFormatError("short header")
    mid, flags, qd, an, ns, ar = struct.unpack_from(">HHHHHH", msg, 0)
    off = 12
    qs: list[tuple[str, int, int]] = []
    for _ in range(qd):
        name, off = read_name(msg, off)
        if off + 4 > len(msg):
            raise DNSFormatError("short question")
        qt, qc = struct.unpack_from(">HH", msg, off)
        off += 4
        qs.append((name, qt, qc))
    sections: list[list[RR]] = [[], [], []]
    for sec, count in zip(sections, (an, ns, ar), strict=True):
        for _ in range(count):
            name, off = read_name(msg, off)
            if off + 10 > len(msg):
                raise DNSFormatError("short record")
            t, c, ttl, rdlen = struct.unpack_from(">HHIH", msg, off)
            off += 10
            if off + rdlen > len(msg):
                raise DNSFormatError("short rdata")
            rr = RR(name, t, c, ttl, msg[off:off + rdlen])
            if t == QT_CNAME:
                rr.target, _ = read_name(msg, off)
            off += rdlen
            sec.append(rr)
    return Message(mid, flags, qs, *sections)


def build(mid: int, flags: int, questions: list[tuple[str, int, int]],
          answers: Any = (), additional: Any = ()) -> bytes:
    out = struct.pack(">HHHHHH", mid, flags, len(questions), len(answers), 0, len(additional))
    for name, qt, qc in questions:
        out += encode_name(name) + struct.pack(">HH", qt, qc)
    for rr in list(answers) + list(additional):
        rdata = encode_name(rr.target) if rr.type == QT_CNAME else rr.rdata
        out += encode_name(rr.name) + struct.pack(">HHIH", rr.type, rr.cls, rr.ttl, len(rdata))
        out += rdata
    return out


def reply_flags(qflags: int, rcode: int, aa: bool = False) -> int:
    # QR=1, opcode copied, RD copied, RA=1
    return 0x8000 | (qflags & 0x7800) | (qflags & 0x0100) | 0x0080 | (0x0400 if aa else 0) | rcode


def client_udp_size(m: Message) -> int:
    for rr in m.additional:
        if rr.type == QT_OPT:
            return max(512, min(rr.cls, 4096))
    return 512
