"""cgroup BPF socket hooks (bcc): per-run egress policy in the kernel, on the run's cgroup leaf.
Why this module is long: one loaded BPF object. SockHooks (~530 lines) owns the programs, the maps
and every run's rule list under one lock (the union of rules each LPM prefix holds is recomputed on
every change), and the map key and value layouts beside it mirror native/bpf/sockhooks.c and change
with it. Listing and ending sockets (inet_diag) is sandbox.kernel.sockdiag.

One SockHooks per process (compile + load ~0.8 s; a daemon pays it once) serves any number of
runs, each identified by its cgroup id (what bpf_get_current_cgroup_id() returns, the inode of
the leaf directory):

    hooks = SockHooks()
    hooks.attach(leaf)                          # before the run's first process exists
    hooks.register_run(cgid, dns_port=P, flags=F_...)   # no entry: everything refused
    rid = hooks.add(cgid, "10.20.0.0/16", 5432)  # CIDR + port or (lo, hi); ttl=seconds
    hooks.add(cgid, "1.2.3.4", 443, ttl=300, dns=True, label="pypi.org")  # the resolver's
    hooks.add_unix(cgid, "/run/user/1000/bus")   # "@name": an abstract unix name
    hooks.remove(cgid, rid, kill=True)           # revoke + end the connections it let open
    hooks.clear(cgid)                            # run over: every map entry of the run gone
    sel.register(hooks.fileno(), ...); sel.register(hooks.event_fd(cgid), ...)
    hooks.consume(cgid) -> [NetEvent]            # refused (and reported allowed) connects

The programs (native/bpf/sockhooks.c) and their attach types:
  cgroup/connect4|6, sendmsg4|6 (UDP)   the run's allow map (LPM trie keyed cgid + address; IPv4
                                        stored as ::ffff:a.b.c.d so a dual-stack connect6 hits the
                                        same entry); port 53 (TCP and UDP, any address) steered to
                                        the run's resolver port on loopback
  cgroup/recvmsg4|6, getpeername4|6     DNS replies: the resolver's address shown as the server
                                        the client asked
  cgroup/connect_unix, sendmsg_unix     pathname unix sockets: exact string allow-list per run;
                                        abstract names refused unless listed (F_UNIX_ABSTRACT_DENY)
  cgroup/sock_create                    AF_INET/AF_INET6: only TCP and UDP sockets (no raw, ICMP,
                                        MPTCP, UDP-Lite, SCTP)
Attach types 49/50 (unix) are unknown to bcc 0.26's BPFAttachType: raw numbers, checked against
the running kernel's BTF. The AF_UNIX path is not in the UAPI context: its offsets in struct
bpf_sock_addr_kern come from the running kernel's BTF (never from the installed headers).

Userspace keeps each run's rule list: an LPM lookup returns only the longest prefix, so for every
distinct prefix the map holds the union of the rules of every prefix that contains it.
Sensitive addresses (metadata, link-local, loopback, this host's own) are opened only by a rule at
least as specific that did not come from DNS. Expiry is checked in the kernel (boottime ns).
Listing, finding and ending a run's sockets (inet_diag, SOCK_DESTROY) is sandbox.kernel.sockdiag.
"""

from __future__ import annotations

import ctypes as ct
import functools
import ipaddress
import itertools
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.kernel.sockdiag import DiagSock, diag_sockets, sock_destroy
from sandbox.kernel.sockdiag import diag_peer as diag_peer  # handed on (it lived here)

BPF_SOURCE = Path(__file__).resolve().parents[2] / "native" / "bpf" / "sockhooks.c"

MAX_RULES = 16
PER_RUN_QUOTA = 4096  # trie entries one run may hold (DNS answers included)
HOST_REFRESH_S = 2.0  # the host's own addresses are re-read at most this often
REFRESH_SLACK_NS = 1_000_000_000  # a rule's expiry is only pushed later by more than this

PT_CGROUP_SOCK = 9
PT_CGROUP_SOCK_ADDR = 18
AT_INET_SOCK_CREATE = 2
AT_INET4_CONNECT, AT_INET6_CONNECT = 10, 11
AT_UDP4_SENDMSG, AT_UDP6_SENDMSG = 14, 15
AT_UDP4_RECVMSG, AT_UDP6_RECVMSG = 19, 20
AT_INET4_GETPEERNAME, AT_INET6_GETPEERNAME = 29, 30
AT_UNIX_CONNECT, AT_UNIX_SENDMSG = 49, 50

PROGRAMS = [  # (function, program type, expected/attach type)
    ("gb_connect4", PT_CGROUP_SOCK_ADDR, AT_INET4_CONNECT),
    ("gb_connect6", PT_CGROUP_SOCK_ADDR, AT_INET6_CONNECT),
    ("gb_sendmsg4", PT_CGROUP_SOCK_ADDR, AT_UDP4_SENDMSG),
    ("gb_sendmsg6", PT_CGROUP_SOCK_ADDR, AT_UDP6_SENDMSG),
    ("gb_recvmsg4", PT_CGROUP_SOCK_ADDR, AT_UDP4_RECVMSG),
    ("gb_recvmsg6", PT_CGROUP_SOCK_ADDR, AT_UDP6_RECVMSG),
    ("gb_getpeername4", PT_CGROUP_SOCK_ADDR, AT_INET4_GETPEERNAME),
    ("gb_getpeername6", PT_CGROUP_SOCK_ADDR, AT_INET6_GETPEERNAME),
    ("gb_connect_unix", PT_CGROUP_SOCK_ADDR, AT_UNIX_CONNECT),
    ("gb_sendmsg_unix", PT_CGROUP_SOCK_ADDR, AT_UNIX_SENDMSG),
    ("gb_sock_create", PT_CGROUP_SOCK, AT_INET_SOCK_CREATE),
]
ATTACH_NAMES = {AT_INET_SOCK_CREATE: "cgroup/sock_create", AT_INET4_CONNECT: "cgroup/connect4",
                AT_INET6_CONNECT: "cgroup/connect6", AT_UDP4_SENDMSG: "cgroup/sendmsg4",
                AT_UDP6_SENDMSG: "cgroup/sendmsg6", AT_UDP4_RECVMSG: "cgroup/recvmsg4",
                AT_UDP6_RECVMSG: "cgroup/recvmsg6", AT_INET4_GETPEERNAME: "cgroup/getpeername4",
                AT_INET6_GETPEERNAME: "cgroup/getpeername6",
                AT_UNIX_CONNECT: "cgroup/connect_unix", AT_UNIX_SENDMSG: "cgroup/sendmsg_unix"}

R_TCP, R_UDP, R_DNS = 1, 2, 4
F_DEFAULT_ALLOW, F_AUDIT, F_ALLOW_MPTCP = 1, 2, 4
F_UNIX_ABSTRACT_DENY, F_REPORT_DNS, F_REPORT_UNIX, F_REPORT_CONNECT = 8, 16, 32, 64

KINDS = {1: "connect4", 2: "connect6", 3: "sendmsg4", 4: "sendmsg6", 5: "connect_unix",
         6: "sendmsg_unix", 7: "sock_create"}
REASONS = {0: "allowed", 1: "not allowed", 2: "no run", 3: "sensitive address",
           4: "resolver port", 5: "expired", 6: "socket type", 7: "abstract unix",
           8: "no resolver", 9: "dns steered"}

# addresses a broad rule never opens: only a rule at least as specific, and not from DNS
DEFAULT_SENSITIVE = [
    "169.254.0.0/16", "fe80::/10",              # link-local, incl. 169.254.169.254 metadata
    "fd00:ec2::254/128", "100.100.100.200/32",  # AWS IPv6 metadata, Alibaba metadata
    "127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128",  # this host
    "224.0.0.0/4", "ff00::/8", "255.255.255.255/32",
]


class PolicyError(Exception):
    """A rule cannot be inserted (quota, MAX_RULES per prefix, map full): the caller fails
    closed (the resolver withholds the answer; a run start refuses)."""


# -- BTF: member offsets of the running kernel (not the installed headers) --------------------
def btf_member_offset(struct_name: str, member: str,
                      path: str = "/sys/kernel/btf/vmlinux") -> int | None:
    data = Path(path).read_bytes()
    magic, _ver, _fl, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from(
        "<HBBIIIII", data, 0)
    if magic != 0xEB9F:
        return None
    tbase, sbase = hdr_len + type_off, hdr_len + str_off

    def name(off: int) -> bytes:
        end = data.index(b"\0", sbase + off)
        return data[sbase + off:end]

    want, wmember = struct_name.encode(), member.encode()
    extra = {1: 4, 3: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
    per_vlen = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    pos, end = tbase, tbase + type_len
    while pos < end:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        body = pos + 12
        if kind == 4 and name(name_off) == want:
            for i in range(vlen):
                m_name, _m_type, m_off = struct.unpack_from("<III", data, body + 12 * i)
                if name(m_name) == wmember:
                    bits = m_off & 0xFFFFFF if kflag else m_off
                    return int(bits // 8)
            return None
        pos = body + extra.get(kind, 0) + per_vlen.get(kind, 0) * vlen
    return None


# -- address helpers ---------------------------------------------------------------------------
Net = ipaddress.IPv6Network


def to_net128(cidr: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> Net:
    """Any address/CIDR -> the 128-bit space (IPv4 as ::ffff:a.b.c.d/96+plen)."""
    if isinstance(cidr, str):
        return _to_net128_str(cidr)
    return _to_net128(cidr)


@functools.lru_cache(maxsize=65536)
def _to_net128_str(cidr: str) -> Net:
    return _to_net128(ipaddress.ip_network(cidr, strict=False))


def _to_net128(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Net:
    if n.version == 4:
        return ipaddress.IPv6Network((int(n.network_address) | 0xFFFF00000000, 96 + n.prefixlen))
    assert isinstance(n, ipaddress.IPv6Network)
    return n


def addr_words(addr: ipaddress.IPv6Address) -> tuple[int, ...]:
    return struct.unpack("<4I", addr.packed)  # network-order bytes as the kernel's u32 words


def words_addr(words: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    a = ipaddress.IPv6Address(struct.pack("<4I", *words))
    return a.ipv4_mapped or a


def parse_ports(ports: Any) -> tuple[int, int]:
    if ports is None or ports == "*":
        return 1, 65535
    if isinstance(ports, int):
        return ports, ports
    if isinstance(ports, tuple | list):
        return int(ports[0]), int(ports[1])
    s = str(ports)
    if "-" in s:
        lo, hi = s.split("-", 1)
        return int(lo), int(hi)
    return int(s), int(s)


def boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def host_addresses() -> list[str]:
    """The host's own addresses (v4 from fib_trie LOCAL entries, v6 from if_inet6)."""
    out: set[str] = set()
    try:
        prev = None
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            s = line.strip()
            if s.startswith("|--"):
                prev = s[3:].strip()
            elif "/32 host LOCAL" in s and prev:
                out.add(prev + "/32")
    except OSError:
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            h = line.split()[0]
            out.add(str(ipaddress.IPv6Address(bytes.fromhex(h))) + "/128")
    except OSError:
        pass
    return sorted(out)


# -- ctypes mirrors of the C structs -----------------------------------------------------------
class LpmKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("cg", ct.c_uint32 * 2), ("addr", ct.c_uint32 * 4)]


class RuleC(ct.Structure):
    _fields_ = [("expiry", ct.c_uint64), ("lo", ct.c_uint16), ("hi", ct.c_uint16),
                ("plen", ct.c_uint8), ("flags", ct.c_uint8), ("pad", ct.c_uint16)]


class LpmVal(ct.Structure):
    _fields_ = [("n", ct.c_uint32), ("pad", ct.c_uint32), ("r", RuleC * MAX_RULES)]


class SensKey(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint32 * 4)]


class RunCfg(ct.Structure):
    _fields_ = [("dns_port", ct.c_uint16), ("flags", ct.c_uint16), ("pad", ct.c_uint32)]


UNIX_PATH = 112


class UnixKey(ct.Structure):
    _fields_ = [("cgid", ct.c_uint64), ("path", ct.c_char * UNIX_PATH), ("len", ct.c_uint32),
                ("pad", ct.c_uint32)]


class EventC(ct.Structure):
    _fields_ = [("ts", ct.c_uint64), ("cgid", ct.c_uint64), ("cookie", ct.c_uint64),
                ("kind", ct.c_uint32), ("reason", ct.c_uint32), ("pid", ct.c_uint32),
                ("tgid", ct.c_uint32), ("uid", ct.c_uint32), ("gid", ct.c_uint32),
                ("family", ct.c_uint32), ("type", ct.c_uint32), ("protocol", ct.c_uint32),
                ("port", ct.c_uint16), ("pathlen", ct.c_uint16), ("addr", ct.c_uint32 * 4),
                ("audit", ct.c_uint32), ("pad", ct.c_uint32), ("comm", ct.c_char * 16),
                ("path", ct.c_char * UNIX_PATH)]


@dataclass(frozen=True)
class NetEvent:
    """One hook event: a refusal (or, with F_AUDIT, a would-be refusal), or an allowed connect
    reported for the trace (reason "allowed")."""

    kind: str            # connect4 | connect6 | sendmsg4 | sendmsg6 | connect_unix | ...
    reason: str          # not allowed | expired | sensitive address | socket type | allowed ...
    cgroup_id: int
    pid: int             # thread id
    tgid: int            # process id
    uid: int
    gid: int
    comm: str
    family: int
    type: int
    protocol: int
    addr: str = ""       # IPv4 shown as a.b.c.d even when it came through connect6 (mapped)
    port: int = 0
    path: str = ""       # unix: the sun_path as the hook saw it ("@name" for abstract)
    audit: bool = False
    cookie: int = 0
    ts_boot_ns: int = 0

    @property
    def proto(self) -> str:
        if self.family == socket.AF_UNIX:
            return "unix"
        return {6: "tcp", 17: "udp", 262: "mptcp"}.get(self.protocol, str(self.protocol))

    @property
    def destination(self) -> str:
        """host:port (IPv6 in brackets), `unix:/path`, or the socket() triple."""
        if self.kind == "sock_create":
            return (f"socket(family={self.family}, type={self.type}, "
                    f"protocol={self.protocol})")
        if self.family == socket.AF_UNIX:
            return f"unix:{self.path}"
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"{host}:{self.port}"

    @property
    def refused(self) -> bool:
        return self.reason not in ("allowed", "dns steered")


@dataclass
class Rule:
    id: int
    net: Net
    lo: int
    hi: int
    flags: int
    expiry: int  # boot ns, 0 = none
    label: str = ""

    def live(self, now: int) -> bool:
        return self.expiry == 0 or self.expiry > now

    @property
    def dns(self) -> bool:
        return bool(self.flags & R_DNS)


@dataclass
class _Run:
    cfg: RunCfg
    rules: dict[int, Rule] = field(default_factory=dict)
    by_prefix: dict[Net, set[int]] = field(default_factory=dict)
    broad: set[Net] = field(default_factory=set)  # prefixes shorter than 128
    unix: dict[tuple[bytes, int], int] = field(default_factory=dict)  # key -> expiry

    def index(self, rule: Rule) -> None:
        self.by_prefix.setdefault(rule.net, set()).add(rule.id)
        if rule.net.prefixlen < 128:
            self.broad.add(rule.net)

    def unindex(self, rule: Rule) -> None:
        ids = self.by_prefix.get(rule.net)
        if ids is not None:
            ids.discard(rule.id)
            if not ids:
                del self.by_prefix[rule.net]
                self.broad.discard(rule.net)


NetIndex = tuple[tuple[int, frozenset[int]], ...]


def sensitive_int(v: int, index: NetIndex) -> bool:
    """Is the 128-bit address v (IPv4 as ::ffff:a.b.c.d) inside the indexed networks? (the
    hot path of every DNS answer: integers, no ipaddress objects)"""
    return any((v >> (128 - plen)) in prefixes for plen, prefixes in index)


def net_index(nets: Iterable[Net]) -> NetIndex:
    by: dict[int, set[int]] = {}
    for n in nets:
        by.setdefault(n.prefixlen, set()).add(int(n.network_address) >> (128 - n.prefixlen))
    return tuple((plen, frozenset(p)) for plen, p in sorted(by.items()))


def _covers(q: Net, p: Net) -> bool:
    """q contains p (or is p)."""
    if q.prefixlen > p.prefixlen:
        return False
    sh = 128 - q.prefixlen
    return (int(q.network_address) >> sh) == (int(p.network_address) >> sh)


def unix_key_bytes(path: str) -> tuple[bytes, int]:
    """A unix list entry -> (key bytes, length): "@name" is the abstract name "\\0name"
    (exact length), anything else an absolute pathname (matched up to its first NUL)."""
    if path.startswith("@"):
        raw = b"\0" + path[1:].encode()
        if len(raw) > 108:
            raise PolicyError(f"abstract unix name longer than 107 bytes: {path!r}")
        return raw, len(raw)
    p = path.encode()
    if not p.startswith(b"/") or len(p) > 108 or b"\0" in p:
        raise PolicyError(f"unix path must be absolute and at most 108 bytes: {path!r}")
    return p, 0


class SockHooks:
    """The loaded programs and maps. Thread-safe (one lock around the userspace model)."""

    def __init__(self, ringbuf_pages: int = 64, sensitive: Iterable[str] | None = None,
                 include_host_addresses: bool = True, per_run_quota: int = PER_RUN_QUOTA):
        from bcc import BPF  # lazy: import + compile are the expensive part

        off_uaddr = btf_member_offset("bpf_sock_addr_kern", "uaddr")
        off_len = btf_member_offset("bpf_sock_addr_kern", "uaddrlen")
        if off_uaddr is None or off_len is None:
            raise RuntimeError("the kernel's BTF has no bpf_sock_addr_kern.uaddrlen "
                               "(cgroup unix socket hooks need Linux >= 6.7)")
        cflags = ["-w", f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DMAX_RULES={MAX_RULES}",
                  f"-DOFF_UADDR={off_uaddr}", f"-DOFF_UADDRLEN={off_len}"]
        cwd = os.getcwd()  # bcc's compile chdir()s the process
        try:
            self._b = BPF(text=BPF_SOURCE.read_text().encode(), cflags=cflags)
        finally:
            os.chdir(cwd)
        self._fns = [(self._b.load_func(n.encode(), pt, attach_type=at), at)
                     for n, pt, at in PROGRAMS]
        self._trie = self._b[b"allow_trie"]
        self._sens = self._b[b"sensitive"]
        self._runs_map = self._b[b"runs"]
        self._rports = self._b[b"resolver_ports"]
        self._unix = self._b[b"unix_allow"]
        self._lost = self._b[b"lost"]
        self._suppressed = self._b[b"suppressed"]
        self._ring = self._b[b"events"]
        self._ring.open_ring_buffer(self._on_event)
        self._lock = threading.RLock()
        self._runs: dict[int, _Run] = {}
        self._ids = itertools.count(1)
        self._queues: dict[int, deque[NetEvent]] = {}
        self._efds: dict[int, int] = {}
        self._touched: set[int] = set()
        self._leaves: dict[str, int] = {}  # the leaf directory's name (the run id) -> cgid
        self.unrouted = 0
        self.quota = per_run_quota
        self.sensitive: list[str] = []
        self._sens_nets: list[Net] = []
        self._sens_idx: NetIndex = ()
        self._host: set[str] = set()
        self._host_read = 0.0
        self._include_host = include_host_addresses
        for c in list(sensitive if sensitive is not None else DEFAULT_SENSITIVE):
            self.add_sensitive(c)
        self.refresh_host_addresses(force=True)

    # -- cgroups ------------------------------------------------------------------------------
    def attach(self, cgroup_path: str | os.PathLike[str], flags: int = 0) -> None:
        """Attach every hook to the leaf. flags=0 (BPF_F_ALLOW_OVERRIDE/MULTI unset): nothing
        below the leaf can attach a program that would replace ours."""
        from bcc import BPF

        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        done: list[tuple[Any, int]] = []
        try:
            for fn, at in self._fns:
                BPF.attach_func(fn, fd, at, flags)
                done.append((fn, at))
        except Exception:
            for fn, at in done:
                try:
                    BPF.detach_func(fn, fd, at)
                except Exception:  # noqa: BLE001, S110 - best effort on the error path
                    pass
            raise
        finally:
            os.close(fd)

        with self._lock:
            self._leaves[os.path.basename(os.fspath(cgroup_path).rstrip("/"))] = \
                self.cgroup_id(cgroup_path)

    @staticmethod
    def cgroup_id(cgroup_path: str | os.PathLike[str]) -> int:
        return os.stat(cgroup_path).st_ino

    def _owner(self, tgid: int) -> int | None:
        """The run a process in an unknown cgroup belongs to (a cgroup a root run made below
        its leaf): from /proc/PID/cgroup, by the leaf's name in its path."""
        try:
            with open(f"/proc/{tgid}/cgroup") as f:
                path = f.read().strip().rsplit("::", 1)[-1]
        except OSError:
            return None
        parts = path.split("/")
        for name in parts[:-1]:
            cg = self._leaves.get(name)
            if cg is not None and cg in self._queues:
                return cg
        return None

    # -- runs ---------------------------------------------------------------------------------
    def register_run(self, cgid: int, dns_port: int = 0, flags: int = 0) -> None:
        with self._lock:
            run = self._runs.get(cgid)
            if run is None:
                run = self._runs[cgid] = _Run(cfg=RunCfg())
            old = run.cfg.dns_port
            run.cfg.dns_port, run.cfg.flags = dns_port, flags
            if old and old != dns_port:
                self._rports.pop(ct.c_uint16(old), None)
            if dns_port:
                self._rports[ct.c_uint16(dns_port)] = ct.c_uint64(cgid)
            self._runs_map[ct.c_uint64(cgid)] = run.cfg
            self._queues.setdefault(cgid, deque())

    def reserve_resolver_port(self, port: int) -> None:
        """A resolver socket set made ahead of any run: direct traffic to it is refused."""
        self._rports[ct.c_uint16(port)] = ct.c_uint64(0)

    def release_resolver_port(self, port: int) -> None:
        with self._lock:
            if any(r.cfg.dns_port == port for r in self._runs.values()):
                return
            self._rports.pop(ct.c_uint16(port), None)

    def clear(self, cgid: int) -> None:
        """Every map entry and queue of the run (the run is over)."""
        with self._lock:
            run = self._runs.pop(cgid, None)
            if run is not None:
                for net in run.by_prefix:
                    self._trie_del(cgid, net)
                for (p, ln) in run.unix:
                    try:
                        del self._unix[self._ukey(cgid, p, ln)]
                    except KeyError:
                        pass
                if run.cfg.dns_port:
                    try:
                        del self._rports[ct.c_uint16(run.cfg.dns_port)]
                    except KeyError:
                        pass
            for m in (self._runs_map, self._lost, self._suppressed):
                try:  # one syscall each (a Mapping's pop would look it up first)
                    del m[ct.c_uint64(cgid)]
                except KeyError:
                    pass
            self._queues.pop(cgid, None)
            self._touched.discard(cgid)
            for k in [k for k, v in self._leaves.items() if v == cgid]:
                del self._leaves[k]
            efd = self._efds.pop(cgid, None)
            if efd is not None:
                os.close(efd)

    def run_flags(self, cgid: int) -> int | None:
        with self._lock:
            run = self._runs.get(cgid)
            return int(run.cfg.flags) if run else None

    # -- sensitive ----------------------------------------------------------------------------
    def _sens_key(self, net: Net) -> SensKey:
        k = SensKey(prefixlen=net.prefixlen)
        k.addr[:] = addr_words(net.network_address)
        return k

    def add_sensitive(self, cidr: str) -> None:
        net = to_net128(cidr)
        self._sens[self._sens_key(net)] = ct.c_uint32(net.prefixlen)
        with self._lock:
            self.sensitive.append(cidr)
            self._sens_nets.append(net)
            self._sens_idx = net_index(self._sens_nets)

    def _remove_sensitive(self, cidr: str) -> None:
        net = to_net128(cidr)
        if any(n == net for c, n in zip(self.sensitive, self._sens_nets, strict=True)
               if c != cidr):
            return  # still listed under another spelling
        self._sens.pop(self._sens_key(net), None)
        with self._lock:
            i = self.sensitive.index(cidr)
            del self.sensitive[i]
            del self._sens_nets[i]
            self._sens_idx = net_index(self._sens_nets)

    def refresh_host_addresses(self, force: bool = False) -> None:
        """This host's own addresses are sensitive (a connect to them reaches local services);
        interfaces change, so they are re-read at most every HOST_REFRESH_S."""
        if not self._include_host:
            return
        now = time.monotonic()
        if not force and now - self._host_read < HOST_REFRESH_S:
            return
        self._host_read = now
        new = set(host_addresses())
        with self._lock:
            old = self._host
            self._host = new
        for c in sorted(new - old):
            self.add_sensitive(c)
        for c in sorted(old - new):
            self._remove_sensitive(c)

    def is_sensitive(self, addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        a = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
        v = int(a) | 0xFFFF00000000 if a.version == 4 else int(a)
        return sensitive_int(v, self._sens_idx)

    def _sens_plen(self, net: Net) -> int:
        return max((s.prefixlen for s in list(self._sens_nets) if _covers(s, net)), default=-1)

    # -- rules --------------------------------------------------------------------------------
    def add(self, cgid: int, cidr: str, ports: Any = None, ttl: float | None = None,
            proto: str = "tcp", dns: bool = False, label: str = "",
            expiry_boot_ns: int | None = None) -> int:
        """Allow cidr (address or network, v4 or v6) on ports (int, 'lo-hi', (lo, hi), None =
        all) for proto ('tcp', 'udp', 'any'); ttl in seconds (or an absolute boottime expiry;
        neither: until removed). Returns the rule id. PolicyError when it cannot be written."""
        net = to_net128(cidr)
        lo, hi = parse_ports(ports)
        if not (0 < lo <= hi <= 65535):
            raise PolicyError(f"bad port range {ports!r}")
        flags = {"tcp": R_TCP, "udp": R_UDP, "any": R_TCP | R_UDP}[proto] | (R_DNS if dns else 0)
        if expiry_boot_ns is not None:
            expiry = expiry_boot_ns
        else:
            expiry = boot_ns() + int(ttl * 1e9) if ttl is not None else 0
        with self._lock:
            run = self._runs.get(cgid)
            if run is None:
                raise PolicyError(f"cgroup {cgid} is not a registered run")
            # same prefix, ports, flags and label: refresh the expiry instead of a duplicate
            # (a later expiry by less than REFRESH_SLACK_NS is not worth a map write: the
            # resolver refreshes a name's addresses at every answer)
            for rid in run.by_prefix.get(net, ()):
                r = run.rules[rid]
                if (r.lo, r.hi, r.flags, r.label) == (lo, hi, flags, label):
                    if r.expiry == 0 or (expiry != 0 and expiry <= r.expiry + REFRESH_SLACK_NS):
                        return rid
                    r.expiry = 0 if expiry == 0 else expiry
                    self._rewrite(cgid, run, net)
                    return rid
            if net not in run.by_prefix and len(run.by_prefix) >= self.quota:
                self.gc(cgid)
                if len(run.by_prefix) >= self.quota:
                    raise PolicyError(f"run {cgid}: more than {self.quota} destinations")
            rid = next(self._ids)
            rule = Rule(rid, net, lo, hi, flags, expiry, label)
            run.rules[rid] = rule
            run.index(rule)
            try:
                self._rewrite(cgid, run, net)
            except PolicyError:
                del run.rules[rid]
                run.unindex(rule)
                self._rewrite(cgid, run, net)
                raise
            return rid

    def remove(self, cgid: int, rule_id: int, kill: bool = False) -> list[DiagSock]:
        """Remove a rule; kill=True also ends the run's TCP/UDP sockets to destinations it
        covered that no remaining rule allows. Returns the sockets ended."""
        with self._lock:
            run = self._runs.get(cgid)
            if run is None or rule_id not in run.rules:
                return []
            rule = run.rules.pop(rule_id)
            run.unindex(rule)
            self._rewrite(cgid, run, rule.net)
        if not kill:
            return []
        return self.end_connections(cgid, rule.net, rule.lo, rule.hi)

    def rules(self, cgid: int) -> list[Rule]:
        with self._lock:
            run = self._runs.get(cgid)
            return list(run.rules.values()) if run else []

    def gc(self, cgid: int | None = None, older_than: float = 0.0) -> int:
        """Drop rules expired more than `older_than` seconds ago (the kernel already ignores
        them; this frees the entries; until then a refusal says "expired")."""
        now, n = boot_ns() - int(older_than * 1e9), 0
        with self._lock:
            for c in [cgid] if cgid is not None else list(self._runs):
                run = self._runs.get(c)
                if run is None:
                    continue
                dead = [r for r in run.rules.values() if not r.live(now)]
                for r in dead:
                    run.rules.pop(r.id)
                    run.unindex(r)
                for net in {r.net for r in dead}:
                    self._rewrite(c, run, net)
                n += len(dead)
        return n

    def allowed(self, cgid: int, addr: str, port: int, proto: str = "tcp") -> bool:
        """The userspace model's answer (the kernel's logic, for revocation and tests)."""
        a = ipaddress.ip_address(addr)
        net = to_net128(f"{a}/{a.max_prefixlen}")
        pbit = R_UDP if proto == "udp" else R_TCP
        now = boot_ns()
        sens = self._sens_plen(net)
        with self._lock:
            run = self._runs.get(cgid)
            if run is None:
                return False
            for r in run.rules.values():
                if not _covers(r.net, net) or not (r.lo <= port <= r.hi) or not r.flags & pbit:
                    continue
                if sens >= 0 and (r.flags & R_DNS or r.net.prefixlen < sens):
                    continue
                if r.live(now):
                    return True
            return bool(run.cfg.flags & F_DEFAULT_ALLOW) and sens < 0

    def kernel_view(self, cgid: int, addr: str, port: int, proto: str = "tcp") -> bool:
        """What the kernel map says (userspace LPM lookup + the program's rule walk): tests."""
        a = ipaddress.ip_address(addr)
        net = to_net128(f"{a}/{a.max_prefixlen}")
        sens = self._sens_plen(net)
        v = self._trie.get(self._key(cgid, net))
        run_flags = self.run_flags(cgid)
        if run_flags is None:
            return False
        if v is None:
            return bool(run_flags & F_DEFAULT_ALLOW) and sens < 0
        pbit, now = (R_UDP if proto == "udp" else R_TCP), boot_ns()
        for i in range(v.n):
            r = v.r[i]
            if not (r.lo <= port <= r.hi) or not r.flags & pbit:
                continue
            if sens >= 0 and (r.flags & R_DNS or r.plen < sens):
                continue
            if r.expiry and r.expiry <= now:
                continue
            return True
        return bool(run_flags & F_DEFAULT_ALLOW) and sens < 0

    def _value_for(self, run: _Run, net: Net) -> LpmVal:
        merged: dict[tuple[int, int, int, int], int] = {}
        cands = [q for q in run.broad if _covers(q, net)]
        if net.prefixlen == 128 and net in run.by_prefix:
            cands.append(net)
        for pnet in cands:
            for rid in run.by_prefix[pnet]:
                r = run.rules[rid]
                key = (r.lo, r.hi, r.net.prefixlen, r.flags)
                old = merged.get(key)
                merged[key] = r.expiry if old is None else (
                    0 if 0 in (old, r.expiry) else max(old, r.expiry))
        if len(merged) > MAX_RULES:
            raise PolicyError(f"more than {MAX_RULES} port rules cover {net}")
        v = LpmVal(n=len(merged))
        for i, ((lo, hi, plen, flags), exp) in enumerate(
                sorted(merged.items(), key=lambda kv: (kv[1] != 0, kv[0]))):
            v.r[i] = RuleC(expiry=exp, lo=lo, hi=hi, plen=plen, flags=flags)
        return v

    def _key(self, cgid: int, net: Net) -> LpmKey:
        k = LpmKey(prefixlen=64 + net.prefixlen)
        k.cg[0], k.cg[1] = cgid & 0xFFFFFFFF, cgid >> 32
        k.addr[:] = addr_words(net.network_address)
        return k

    def _trie_del(self, cgid: int, net: Net) -> None:
        try:
            del self._trie[self._key(cgid, net)]
        except KeyError:
            pass

    def _rewrite(self, cgid: int, run: _Run, net: Net) -> None:
        """Rewrite the entry of `net` and of every narrower prefix of the run."""
        affected = [net] if net.prefixlen == 128 else [
            p for p in run.by_prefix if _covers(net, p)]
        if net not in run.by_prefix:
            self._trie_del(cgid, net)
        vals = [(p, self._value_for(run, p)) for p in affected if p in run.by_prefix]
        for p, v in vals:
            try:
                self._trie[self._key(cgid, p)] = v
            except Exception as e:  # noqa: BLE001 - map full (E2BIG/ENOMEM): fail closed
                raise PolicyError(f"cannot write {p} for run {cgid}: {e}") from e

    # -- unix ---------------------------------------------------------------------------------
    @staticmethod
    def _ukey(cgid: int, path: bytes, length: int) -> UnixKey:
        k = UnixKey(cgid=cgid, len=length)
        # memmove, not the field setter: ctypes stops a c_char array at the first NUL, and an
        # abstract name starts with one
        ct.memmove(ct.addressof(k) + UnixKey.path.offset, path, len(path))
        return k

    def add_unix(self, cgid: int, path: str, ttl: float | None = None,
                 expiry_boot_ns: int | None = None) -> None:
        key, length = unix_key_bytes(path)
        if expiry_boot_ns is not None:
            exp = expiry_boot_ns
        else:
            exp = boot_ns() + int(ttl * 1e9) if ttl is not None else 0
        with self._lock:
            run = self._runs.get(cgid)
            if run is None:
                raise PolicyError(f"cgroup {cgid} is not a registered run")
            old = run.unix.get((key, length))
            if old is not None and (old == 0 or (exp != 0 and old > exp)):
                exp = old  # never shorten an entry another source holds longer
            self._unix[self._ukey(cgid, key, length)] = ct.c_uint64(exp)
            run.unix[(key, length)] = exp

    def remove_unix(self, cgid: int, path: str) -> None:
        key, length = unix_key_bytes(path)
        with self._lock:
            run = self._runs.get(cgid)
            if run:
                run.unix.pop((key, length), None)
            self._unix.pop(self._ukey(cgid, key, length), None)

    # -- events -------------------------------------------------------------------------------
    def fileno(self) -> int:
        """The ring buffer's map fd: pollable, readable when events are waiting."""
        return int(self._ring.map_fd)

    def event_fd(self, cgid: int) -> int:
        """An eventfd made readable when another consumer queued this run's events."""
        with self._lock:
            efd = self._efds.get(cgid)
            if efd is None:
                efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._efds[cgid] = efd
            return efd

    def _on_event(self, _ctx: Any, data: Any, size: int) -> int:
        if size < ct.sizeof(EventC):
            return 0
        e = ct.cast(data, ct.POINTER(EventC)).contents
        cgid = e.cgid
        q = self._queues.get(cgid)
        if q is None and e.reason == 2:  # "no run": maybe a cgroup below a run's leaf
            owner = self._owner(e.tgid)
            if owner is not None:
                cgid, q = owner, self._queues.get(owner)
        if q is None:
            self.unrouted += 1
            return 0
        path = ""
        if e.family == socket.AF_UNIX:
            raw = ct.string_at(ct.addressof(e) + EventC.path.offset, UNIX_PATH)[: e.pathlen]
            path = ("@" + raw[1:].decode(errors="backslashreplace")
                    if raw[:1] == b"\0" else raw.split(b"\0", 1)[0].decode(errors="replace"))
        q.append(NetEvent(
            kind=KINDS.get(e.kind, str(e.kind)), reason=REASONS.get(e.reason, str(e.reason)),
            cgroup_id=cgid, pid=e.pid, tgid=e.tgid, uid=e.uid, gid=e.gid,
            comm=e.comm.decode(errors="replace"), family=e.family, type=e.type,
            protocol=e.protocol,
            addr=str(words_addr(e.addr)) if e.family in (2, 10) else "",
            port=e.port, path=path, audit=bool(e.audit), cookie=e.cookie, ts_boot_ns=e.ts))
        self._touched.add(cgid)
        return 0

    def poll(self) -> None:
        """Drain the ring buffer into the per-run queues (no syscall when it is empty)."""
        with self._lock:
            self._b.ring_buffer_consume()
            touched, self._touched = self._touched, set()
            for cg in touched:
                efd = self._efds.get(cg)
                if efd is not None:
                    os.eventfd_write(efd, 1)

    def consume(self, cgid: int) -> list[NetEvent]:
        """Poll, then return (and forget) the queued events of one run."""
        with self._lock:
            self.poll()
            efd = self._efds.get(cgid)
            if efd is not None:
                try:
                    os.eventfd_read(efd)
                except BlockingIOError:
                    pass
            q = self._queues.get(cgid)
            if not q:
                return []
            out = list(q)
            q.clear()
            return out

    def lost(self, cgid: int) -> int:
        """Events the ring buffer had no room for (the refusal itself still happened)."""
        v = self._lost.get(ct.c_uint64(cgid))
        return int(v.value) if v is not None else 0

    def suppressed(self, cgid: int) -> int:
        """Refusals not reported because the same destination was reported < 1 s ago."""
        v = self._suppressed.get(ct.c_uint64(cgid))
        return int(v.value) if v is not None else 0

    # -- introspection (tests, doctor) --------------------------------------------------------
    def map_counts(self) -> dict[str, int]:
        return {"allow_trie": sum(1 for _ in self._trie.keys()),
                "runs": sum(1 for _ in self._runs_map.keys()),
                "resolver_ports": sum(1 for _ in self._rports.keys()),
                "unix_allow": sum(1 for _ in self._unix.keys()),
                "lost": sum(1 for _ in self._lost.keys()),
                "suppressed": sum(1 for _ in self._suppressed.keys())}

    def trie_count(self, cgid: int) -> int:
        return sum(1 for k in self._trie.keys() if (k.cg[0] | (k.cg[1] << 32)) == cgid)

    def close(self) -> None:
        with self._lock:
            for efd in self._efds.values():
                os.close(efd)
            self._efds.clear()
            self._b.cleanup()

    # -- ending connections (inet_diag SOCK_DESTROY) ------------------------------------------
    def end_connections(self, cgid: int, cidr: str | Net = "::/0", lo: int = 1,
                        hi: int = 65535, only_disallowed: bool = True) -> list[DiagSock]:
        """SOCK_DESTROY the run's TCP/UDP sockets to cidr:lo-hi (that no rule allows any
        more, unless only_disallowed=False). Returns the sockets ended."""
        net = to_net128(cidr) if isinstance(cidr, str) else cidr
        ended: list[DiagSock] = []
        for s in diag_sockets():
            if s.cgroup_id != cgid or not (lo <= s.dport <= hi):
                continue
            dst = to_net128(f"{s.dst}/{ipaddress.ip_address(s.dst).max_prefixlen}")
            if not _covers(net, dst):
                continue
            proto = "udp" if s.protocol == socket.IPPROTO_UDP else "tcp"
            if only_disallowed and self.allowed(cgid, s.dst, s.dport, proto):
                continue
            if sock_destroy(s):
                ended.append(s)
        return ended
