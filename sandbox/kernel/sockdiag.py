"""inet_diag over NETLINK_SOCK_DIAG: list a cgroup's TCP/UDP sockets (with their cgroup id), find
the socket a peer address pair belongs to, and SOCK_DESTROY a socket (CONFIG_INET_DIAG_DESTROY).
sandbox.kernel.sockhooks uses it to end the connections a revoked rule let open; the resolver
uses diag_peer to name the process that asked.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
INET_DIAG_CGROUP_ID = 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10


@dataclass(frozen=True)
class DiagSock:
    family: int
    protocol: int
    state: int
    src: str
    sport: int
    dst: str
    dport: int
    ifindex: int
    cookie: tuple[int, int]
    raw_id: bytes
    cgroup_id: int
    inode: int = 0


def _nl_request(sock: socket.socket, mtype: int, flags: int, payload: bytes, seq: int) -> None:
    sock.send(struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, 0) + payload)


def diag_sockets(protocols: tuple[int, ...] = (socket.IPPROTO_TCP, socket.IPPROTO_UDP)
                 ) -> list[DiagSock]:
    """Every TCP/UDP socket of this network namespace, with its cgroup id (sock_diag)."""
    out: list[DiagSock] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        seq = 0
        for fam in (socket.AF_INET, socket.AF_INET6):
            for proto in protocols:
                seq += 1
                req = struct.pack("=BBBBI", fam, proto, 0, 0, 0xFFFFFFFF) + bytes(48)
                _nl_request(s, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, req, seq)
                done = False
                while not done:
                    data = s.recv(1 << 16)
                    off = 0
                    while off + 16 <= len(data):
                        ln, mt, _fl, _sq, _pid = struct.unpack_from("=IHHII", data, off)
                        if mt in (NLMSG_DONE, NLMSG_ERROR):
                            done = True
                            break
                        d = _parse_diag(data[off + 16: off + ln], proto)
                        if d.state != TCP_LISTEN or proto != socket.IPPROTO_TCP:
                            out.append(d)
                        off += (ln + 3) & ~3
    return out


def _parse_diag(body: bytes, proto: int) -> DiagSock:
    fam, state = body[0], body[1]
    raw_id = body[4:52]
    sport, dport = struct.unpack_from(">HH", raw_id, 0)
    if fam == socket.AF_INET:
        src = socket.inet_ntop(fam, raw_id[4:8])
        dst = socket.inet_ntop(fam, raw_id[20:24])
    else:
        src = socket.inet_ntop(fam, raw_id[4:20])
        dst = socket.inet_ntop(fam, raw_id[20:36])
    ifindex, c0, c1 = struct.unpack_from("=III", raw_id, 36)
    inode = struct.unpack_from("=I", body, 68)[0] if len(body) >= 72 else 0
    cg = 0
    off = 72
    while off + 4 <= len(body):
        alen, atype = struct.unpack_from("=HH", body, off)
        if alen < 4:
            break
        if atype == INET_DIAG_CGROUP_ID:
            cg = struct.unpack_from("=Q", body, off + 4)[0]
        off += (alen + 3) & ~3
    return DiagSock(fam, proto, state, src, sport, dst, dport, ifindex, (c0, c1), raw_id, cg,
                    inode)


def diag_peer(proto: int, local: tuple[str, int], peer: tuple[str, int]) -> DiagSock | None:
    """The socket at the other end of one of our own sockets (the resolver's): `local` is our
    address, `peer` the client's. One sock_diag lookup (no dump); None when it is gone."""
    fam = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
    if fam == socket.AF_INET6 and ":" not in local[0]:
        local = ("::ffff:" + local[0], local[1])

    def packed(a: str) -> bytes:
        return socket.inet_pton(fam, a).ljust(16, b"\0")

    if proto == socket.IPPROTO_UDP:
        # udp_dump_one: "src and dst are swapped for historical reasons": the socket bound to
        # dst:dport that would receive a datagram from src:sport
        sid = struct.pack(">HH", local[1], peer[1]) + packed(local[0]) + packed(peer[0])
    else:  # inet_diag_find_one_icsk: local = src:sport, remote = dst:dport
        sid = struct.pack(">HH", peer[1], local[1]) + packed(peer[0]) + packed(local[0])
    sid += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie check
    req = struct.pack("=BBBBI", fam, proto, 0, 0, 0xFFFFFFFF) + sid
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG) as s:
            _nl_request(s, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, req, 1)
            data = s.recv(65536)
    except OSError:
        return None
    if len(data) < 16:
        return None
    ln, mt = struct.unpack_from("=IH", data, 0)
    if mt != SOCK_DIAG_BY_FAMILY:
        return None
    return _parse_diag(data[16:ln], proto)


def sock_destroy(d: DiagSock) -> bool:
    """End one socket (its holder's next call fails with ECONNABORTED)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        req = struct.pack("=BBBBI", d.family, d.protocol, 0, 0, 0xFFFFFFFF) + d.raw_id
        _nl_request(s, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, req, 1)
        data = s.recv(4096)
        _ln, mt = struct.unpack_from("=IH", data, 0)
        if mt == NLMSG_ERROR:
            err = struct.unpack_from("=i", data, 16)[0]
            return bool(err == 0)
        return False
