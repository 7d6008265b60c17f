"""What a sandboxed client does (run inside the run's cgroup by the tests; stdlib + ctypes).
Every function returns a JSON-able result: "ok", or the errno name of the failure."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import random
import socket
import struct
import time

MSG_FASTOPEN = 0x20000000
TCP_FASTOPEN_CONNECT = 30
IPPROTO_MPTCP = 262


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else str(e)


def _fam(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _addr(host: str, port: int):
    if "%" in host:
        h, dev = host.split("%")
        return (h, port, 0, socket.if_nametoindex(dev))
    return (host, port)


def tcp(host: str, port: int, proto: int = 0, send: bytes = b"ping", timeout: float = 3) -> str:
    try:
        s = socket.socket(_fam(host.split("%")[0]), socket.SOCK_STREAM, proto)
    except OSError as e:
        return "socket:" + _err(e)
    s.settimeout(timeout)
    try:
        s.connect(_addr(host, port))
        if send:
            s.sendall(send)
            if s.recv(100) != send:
                return "noecho"
        return "ok"
    except OSError as e:
        return _err(e)
    finally:
        s.close()


def tfo_sendto(host: str, port: int) -> str:
    s = socket.socket(_fam(host), socket.SOCK_STREAM)  # blocking: sendto waits for the SYN
    try:
        s.sendto(b"ping", MSG_FASTOPEN, (host, port))
        s.settimeout(3)
        return "ok" if s.recv(100) == b"ping" else "noecho"
    except OSError as e:
        return _err(e)
    finally:
        s.close()


def tfo_connect(host: str, port: int) -> str:
    s = socket.socket(_fam(host), socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        s.connect((host, port))
        s.sendall(b"ping")
        return "ok" if s.recv(100) == b"ping" else "noecho"
    except OSError as e:
        return _err(e)
    finally:
        s.close()


def udp(host: str, port: int, connect: bool = False) -> str:
    s = socket.socket(_fam(host), socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        if connect:
            s.connect((host, port))
            s.send(b"ping")
        else:
            s.sendto(b"ping", (host, port))
        return "ok" if s.recv(100) == b"ping" else "noecho"
    except OSError as e:
        return _err(e)
    finally:
        s.close()


class _iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _msghdr), ("len", ctypes.c_uint)]


def sendmmsg(dests: list[tuple[str, int]]) -> dict:
    """One unconnected IPv4 UDP socket, one sendmmsg() with a message per destination.
    Returns what sendmmsg returned (count or errno) and which echoes came back."""
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    n = len(dests)
    msgs = (_mmsghdr * n)()
    keep = []
    for i, (h, p) in enumerate(dests):
        sa = ctypes.create_string_buffer(struct.pack("=HH4s8x", socket.AF_INET, socket.htons(p),
                                                     socket.inet_aton(h)), 16)
        payload = ctypes.create_string_buffer(f"m{i}".encode(), 2)
        iov = _iovec(ctypes.cast(payload, ctypes.c_void_p), 2)
        keep += [sa, payload, iov]
        msgs[i].hdr.name = ctypes.cast(sa, ctypes.c_void_p)
        msgs[i].hdr.namelen = 16
        msgs[i].hdr.iov = ctypes.pointer(iov)
        msgs[i].hdr.iovlen = 1
    r = libc.sendmmsg(s.fileno(), msgs, n, 0)
    res = {"sent": r if r >= 0 else errno.errorcode[ctypes.get_errno()], "echo": []}
    try:
        while True:
            res["echo"].append(s.recv(100).decode())
    except OSError:
        pass
    s.close()
    return res


def sock(family: int, type_: int, proto: int = 0) -> str:
    try:
        s = socket.socket(family, type_, proto)
        s.close()
        return "ok"
    except OSError as e:
        return _err(e)


def unix(path: str, dgram: bool = False, cwd: str | None = None) -> str:
    if cwd:
        os.chdir(cwd)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if dgram else socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        if path.startswith("@"):
            path = "\0" + path[1:]
        if dgram:
            s.sendto(b"x", path)
        else:
            s.connect(path)
        return "ok"
    except OSError as e:
        return _err(e)
    finally:
        s.close()


# -- DNS ---------------------------------------------------------------------------------------
def _query(name: str, qtype: int) -> tuple[int, bytes]:
    qid = random.getrandbits(16)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for lab in name.split("."):
        q += bytes([len(lab)]) + lab.encode()
    return qid, q + b"\0" + struct.pack(">HH", qtype, 1)


def _parse(data: bytes) -> dict:
    qid, flags, qd, an = struct.unpack_from(">HHHH", data)
    off = 12

    def skip(off):
        while True:
            ln = data[off]
            if ln & 0xC0 == 0xC0:
                return off + 2
            off += 1
            if ln == 0:
                return off
            off += ln

    for _ in range(qd):
        off = skip(off) + 4
    addrs, cnames, ttls = [], 0, []
    for _ in range(an):
        off = skip(off)
        t, _c, ttl, ln = struct.unpack_from(">HHIH", data, off)
        off += 10
        if t == 1:
            addrs.append(socket.inet_ntop(socket.AF_INET, data[off:off + ln]))
        elif t == 28:
            addrs.append(socket.inet_ntop(socket.AF_INET6, data[off:off + ln]))
        elif t == 5:
            cnames += 1
        ttls.append(ttl)
        off += ln
    return {"id": qid, "rcode": flags & 0xF, "addrs": addrs, "cnames": cnames, "ttls": ttls}


def dns(server: str, name: str, qtype: int = 1, port: int = 53, tcp: bool = False,
        connect: bool = False, timeout: float = 3) -> dict:
    """Ask `server` (any address: the hooks steer port 53). Returns rcode/addrs, the address
    the reply came from (after recvmsg's rewrite), or the errno."""
    qid, q = _query(name, qtype)
    fam = _fam(server)
    try:
        if tcp:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect((server, port))
            s.sendall(struct.pack(">H", len(q)) + q)
            ln = struct.unpack(">H", s.recv(2, socket.MSG_WAITALL))[0]
            data = s.recv(ln, socket.MSG_WAITALL)
            src = s.getpeername()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            if connect:
                s.connect((server, port))
                s.send(q)
                data, src = s.recvfrom(4096)
            else:
                s.sendto(q, (server, port))
                data, src = s.recvfrom(4096)
        s.close()
    except OSError as e:
        return {"error": _err(e)}
    r = _parse(data)
    r["from"] = [src[0], src[1]]
    r["id_ok"] = r.pop("id") == qid
    return r


def getaddrinfo(name: str) -> list | str:
    try:
        return sorted({ai[4][0] for ai in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except OSError as e:
        return f"gaierror {e}"


def hold(host: str, port: int, seconds: float) -> dict:
    """Connect, then keep sending pings; report how the connection ended."""
    s = socket.socket(_fam(host), socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect((host, port))
    except OSError as e:
        return {"connect": _err(e)}
    print("connected", flush=True)
    end = time.time() + seconds
    n = 0
    try:
        while time.time() < end:
            s.sendall(b"x")
            if s.recv(10) == b"":
                return {"connect": "ok", "ended": "eof", "pings": n}
            n += 1
            time.sleep(0.05)
        return {"connect": "ok", "ended": "timeout", "pings": n}
    except OSError as e:
        return {"connect": "ok", "ended": _err(e), "pings": n}


# -- io_uring (raw syscalls; seccomp blocks io_uring in glassbreak: this checks the hooks) ---
def uring_connect(host: str, port: int, udp_sendmsg: bool = False) -> str:
    """IORING_OP_CONNECT of a TCP socket (or IORING_OP_SENDMSG of an unconnected UDP socket
    with a destination) to host:port. Returns "ok" or the errno name of the CQE result."""
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 4, params)  # io_uring_setup
    if fd < 0:
        return "setup:" + errno.errorcode.get(ctypes.get_errno(), "?")
    sq_entries, cq_entries, _flags, _cpu, _idle, features = struct.unpack_from("6I", params, 0)
    sq = struct.unpack_from("7I", params, 40)   # head tail mask entries flags dropped array
    cq = struct.unpack_from("6I", params, 80)   # head tail mask entries overflow cqes
    sq_size = sq[6] + sq_entries * 4
    cq_size = cq[5] + cq_entries * 16
    size = max(sq_size, cq_size)
    ring = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    sqes = mmap.mmap(fd, sq_entries * 64, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                     offset=0x10000000)
    fam = _fam(host)
    if fam == socket.AF_INET:
        sa = struct.pack("=HH4s8x", fam, socket.htons(port), socket.inet_aton(host))
    else:
        sa = struct.pack("=HHI16sI", fam, socket.htons(port), 0,
                         socket.inet_pton(fam, host), 0)
    sabuf = ctypes.create_string_buffer(sa, len(sa))
    s = socket.socket(fam, socket.SOCK_DGRAM if udp_sendmsg else socket.SOCK_STREAM)
    if udp_sendmsg:
        payload = ctypes.create_string_buffer(b"ping", 4)
        iov = _iovec(ctypes.cast(payload, ctypes.c_void_p), 4)
        msg = _msghdr(ctypes.cast(sabuf, ctypes.c_void_p), len(sa), ctypes.pointer(iov), 1,
                      None, 0, 0)
        sqe = struct.pack("=BBHiQQIIQ", 9, 0, 0, s.fileno(), 0, ctypes.addressof(msg), 1, 0, 7)
    else:
        sqe = struct.pack("=BBHiQQIIQ", 16, 0, 0, s.fileno(), len(sa),
                          ctypes.addressof(sabuf), 0, 0, 7)
    sqes[0:64] = sqe + bytes(64 - len(sqe))
    tail = struct.unpack_from("I", ring, sq[1])[0]
    struct.pack_into("I", ring, sq[6] + (tail & sq[2]) * 4, 0)
    struct.pack_into("I", ring, sq[1], tail + 1)
    r = libc.syscall(426, fd, 1, 1, 1, None, 0)  # io_uring_enter(fd, 1, 1, GETEVENTS)
    if r < 0:
        return "enter:" + errno.errorcode.get(ctypes.get_errno(), "?")
    head = struct.unpack_from("I", ring, cq[0])[0]
    _ud, res, _fl = struct.unpack_from("=QiI", ring, cq[5] + (head & cq[2]) * 16)
    s.close()
    os.close(fd)
    return "ok" if res >= 0 else errno.errorcode.get(-res, str(res))


def resolve_connect(name: str, port: int) -> dict:
    """glibc's getaddrinfo (the run's resolv.conf: steered to glassbreak's resolver), then a
    TCP connect to the first IPv4 answer."""
    try:
        infos = socket.getaddrinfo(name, port, proto=socket.IPPROTO_TCP)
    except OSError as e:
        return {"addrs": f"gaierror {e}", "tcp": None}
    addrs = sorted({ai[4][0] for ai in infos})
    v4 = [a for a in addrs if ":" not in a]
    return {"addrs": addrs, "tcp": tcp(v4[0], port) if v4 else None}


def many(calls: list) -> list:
    """Several client calls in one process: [[fn, *args], ...] -> their results."""
    out = []
    for c in calls:
        fn, args = c[0], c[1:]
        out.append(globals()[fn](*args))
    return out


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "ok"


def http(host: str, port: int) -> str:
    """GET /healthz: "ok" when anything answered, else the errno name."""
    try:
        s = socket.create_connection((host, port), timeout=3)
    except OSError as e:
        return _err(e)
    try:
        s.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        return "ok" if s.recv(100) else "eof"
    except OSError as e:
        return _err(e)
    finally:
        s.close()


def redis_ping(host: str, port: int) -> str:
    try:
        s = socket.socket(_fam(host), socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
    except OSError as e:
        return _err(e)
    try:
        s.sendall(b"PING\r\n")
        return s.recv(100).decode().strip()
    except OSError as e:
        return _err(e)
    finally:
        s.close()


def sock_hi(family: int, type_: int) -> str:
    """socket() through the raw syscall with high bits set in the family (the kernel keeps the
    low 32 bits): seccomp must not be fooled by them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(41, ctypes.c_ulong((1 << 32) | family), type_, 0)
    if fd < 0:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    os.close(fd)
    return "ok"


def loopback_udp_ports() -> list:
    """Every UDP port bound on 127.0.0.1 or ::1 (what /proc/net/udp shows any process)."""
    ports = set()
    for f, lo in (("/proc/net/udp", "0100007F"), ("/proc/net/udp6",
                                                   "00000000000000000000000001000000")):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1]
            addr, port = local.split(":")
            if addr == lo:
                ports.add(int(port, 16))
    return sorted(ports)


def dns_loopback() -> dict:
    """A DNS query straight to every UDP port bound on 127.0.0.1 (resolver ports included: an
    attacker finds them in /proc/net/udp): port -> errno name or rcode."""
    out = {}
    for p in loopback_udp_ports():
        r = dns("127.0.0.1", "web.test", port=p, timeout=0.3)
        out[str(p)] = r.get("error") if "error" in r else r.get("rcode")
    return out


def sub_cgroup_tcp(host: str, port: int) -> str:
    """Move into a new cgroup below the run's leaf (root can), then connect."""
    mount = next(line.split()[1] for line in open("/proc/mounts") if line.split()[2] == "cgroup2")
    cg = open("/proc/self/cgroup").read().strip().split("::")[1]
    d = mount + cg + "/sub"
    try:
        os.mkdir(d)
    except OSError as e:
        return f"mkdir:{errno.errorcode.get(e.errno or 0, e.errno)}"
    with open(d + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    return tcp(host, port)


def retry_tcp(host: str, port: int, seconds: float) -> dict:
    """Connect every 0.2 s until it works (e.g. an approval arrives) or `seconds` pass."""
    t0 = time.time()
    while True:
        r = tcp(host, port)
        if r == "ok" or time.time() - t0 > seconds:
            return {"result": r, "at": round(time.time() - t0, 2)}
        time.sleep(0.2)
