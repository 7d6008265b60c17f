"""Landlock denials, as the kernel audits them (ABI 7), read over the audit netlink multicast group.
Why this module is long: the audit netlink plumbing, the host-wide set-up and the router that
depends on both stay in one module.

No auditd needed. Root (CAP_AUDIT_CONTROL to switch audit on, CAP_AUDIT_READ to listen). One
`DenialRouter` per process (the daemon, or an in-process run) reads every Landlock record and
hands each denial to the run whose top process created the denying domain:

    router = DenialRouter.get()          # enables kernel audit if it is off (host side effects:
                                         # docs/filesystem.md), starts a reader thread
    router.register(child_pid, sink)     # sink(Denial) is called from the reader thread
    ... child: restrict_self(fd, LOG_NEW_EXEC_ON) ... execve ...
    router.unregister(child_pid)

Records of one event share "audit(<time>:<serial>)": LANDLOCK_ACCESS (1423: domain, blockers,
object), then LANDLOCK_DOMAIN (1424, the first time a domain denies: the pid that called
restrict_self), then SYSCALL/PROCTITLE/EOE only for tasks with an audit context, which the
`never,task` rule installed here takes away (it keeps every new task's syscalls off audit's slow
path). So a denial names its domain and, through it, the run; not the denied task itself.
Strings an untrusted process chose (path, comm, exe, name) come quoted, or hex-encoded when they
hold a quote, a space or a control byte; both are decoded here.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_GET, AUDIT_SET, AUDIT_ADD_RULE, AUDIT_DEL_RULE = 1000, 1001, 1011, 1012
AUDIT_SECCOMP, AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN = 1326, 1423, 1424
AUDIT_STATUS_ENABLED, AUDIT_STATUS_BACKLOG_LIMIT = 0x1, 0x10
AUDIT_FILTER_TASK, AUDIT_FILTER_EXCLUDE, AUDIT_NEVER = 0x01, 0x05, 0
AUDIT_MSGTYPE = 12
AUDIT_LESS_THAN, AUDIT_GREATER_THAN = 0x10000000, 0x20000000
# Record types that only flow because audit is on (BPF program loads, netfilter changes, user
# messages, syscall records...) are dropped at the source: without an audit daemon the kernel
# printk()s every record, rate-limited, and that flood would hide the seccomp kills that
# /dev/kmsg readers look for. Kept: seccomp (1326), the LSMs' records (1400-1599: Landlock,
# SELinux, AppArmor), which flow with audit off too.
EXCLUDED_TYPES = (((AUDIT_LESS_THAN, AUDIT_SECCOMP),),
                  ((AUDIT_GREATER_THAN, AUDIT_SECCOMP), (AUDIT_LESS_THAN, 1400)),
                  ((AUDIT_GREATER_THAN, 1599),))
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
BACKLOG_LIMIT = 8192  # the kernel's default (64) drops records of a burst before anyone reads
_HDR = struct.Struct("=IHHII")
_STATUS = struct.Struct("=10I")  # mask enabled failure pid rate_limit backlog_limit lost backlog
#                                  feature_bitmap backlog_wait_time (kernel accepts a prefix)
_STATUS_KEYS = ("mask enabled failure pid rate_limit backlog_limit lost backlog feature_bitmap "
                "backlog_wait_time").split()
_SERIAL = re.compile(rb"audit\((\d+\.\d+):(\d+)\): ")
_KV = re.compile(rb'(\w+)=("[^"]*"|\S+)')
_UNTRUSTED = {"path", "comm", "exe", "name", "ocomm"}
_HEX = re.compile(r"^(?:[0-9A-F]{2})+$")


PROC_NET_INIT_INO = 0xEFFFFFF9  # the initial network namespace's inode (Linux >= 6.x)
CLONE_NEWNET = 0x40000000


def _socket() -> socket.socket:
    """A NETLINK_AUDIT socket in the initial network namespace: the kernel multicasts audit
    records there only. From another namespace (a daemon in a pod, a test's netns), the socket
    is made by a thread that enters pid 1's namespace (root, hostPID) and comes back."""
    make = lambda: socket.socket(socket.AF_NETLINK,  # noqa: E731
                                 socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
    try:
        here = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return make()
    if here == PROC_NET_INIT_INO:
        return make()
    try:
        init = os.open("/proc/1/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if os.fstat(init).st_ino == here:  # pid 1's (kernels without the fixed inode)
            os.close(init)
            return make()
    except OSError as e:
        raise AuditUnavailable(
            "glassbreak runs outside the initial network namespace, where alone the kernel "
            f"multicasts audit records, and cannot enter it ({e.strerror}: /proc/1/ns/net; "
            "run it with the host's network namespace, or hostPID and CAP_SYS_ADMIN)") from e
    out: list[socket.socket | BaseException] = []

    def enter() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        try:
            if libc.setns(init, CLONE_NEWNET) != 0:
                raise AuditUnavailable("not in the initial network namespace, and cannot enter "
                                       f"it: {os.strerror(ctypes.get_errno())}")
            out.append(make())
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out.append(e)
        # the thread ends in the initial namespace; nothing else runs on it

    t = threading.Thread(target=enter, name="gb-audit-netns")
    t.start()
    t.join()
    os.close(init)
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class AuditUnavailable(RuntimeError):
    """Kernel audit cannot deliver Landlock records here (no CAP_AUDIT_*, audit=0 at boot, an
    auditd that keeps audit off...): denials are still enforced, but not reported."""


def _request(typ: int, payload: bytes = b"", ack: bool = True,
             sock: socket.socket | None = None) -> list[tuple[int, bytes]]:
    s = sock or _socket()
    try:
        if sock is None:
            s.bind((0, 0))
        s.send(_HDR.pack(16 + len(payload), typ, NLM_F_REQUEST | (NLM_F_ACK if ack else 0), 1,
                         0) + payload)
        out: list[tuple[int, bytes]] = []
        s.settimeout(1.0)
        while True:
            d = s.recv(65536)
            ln, t, _f, _seq, _pid = _HDR.unpack_from(d)
            out.append((t, d[16:ln]))
            if t == NLMSG_ERROR:
                err, = struct.unpack_from("=i", d, 16)
                if err:
                    raise OSError(-err, os.strerror(-err))
                return out
            if not ack:
                return out
    finally:
        if sock is None:
            s.close()


def status(sock: socket.socket | None = None) -> dict[str, int]:
    for t, d in _request(AUDIT_GET, ack=False, sock=sock):
        if t == AUDIT_GET:
            return dict(zip(_STATUS_KEYS, _STATUS.unpack(d[:40].ljust(40, b"\0")), strict=True))
    raise OSError("no AUDIT_GET reply")


def _set(mask: int, enabled: int = 0, backlog_limit: int = 0) -> None:
    _request(AUDIT_SET, _STATUS.pack(mask, enabled, 0, 0, 0, backlog_limit, 0, 0, 0, 0))


def set_enabled(on: bool) -> int:
    """Switch kernel audit on/off (AUDIT_SET); returns the previous `enabled` (0, 1, or 2 =
    locked). Host-wide: every record type starts flowing (docs/filesystem.md)."""
    prev = status()["enabled"]
    if prev != 2:
        _set(AUDIT_STATUS_ENABLED, enabled=int(on))
    return prev


def _rule(flist: int, conds: tuple[tuple[int, int], ...] = ()) -> bytes:
    """struct audit_rule_data: flags action field_count mask[64] fields[64] values[64]
    fieldflags[64] buflen (+ buf[0]); a `never` rule on `flist` with (op, msgtype) fields."""
    n = len(conds)
    return struct.pack("=3I64I64I64I64II", flist, AUDIT_NEVER, n, *([0xFFFFFFFF] * 64),
                       *([AUDIT_MSGTYPE] * n + [0] * (64 - n)),
                       *([v for _, v in conds] + [0] * (64 - n)),
                       *([op for op, _ in conds] + [0] * (64 - n)), 0)


def _add_rule(rule: bytes, on: bool = True) -> None:
    try:
        _request(AUDIT_ADD_RULE if on else AUDIT_DEL_RULE, rule)
    except OSError as e:
        if e.errno not in (17, 2):  # EEXIST, ENOENT
            raise


def set_never_task_rule(on: bool) -> None:
    """'-a never,task': no audit context for tasks forked from now on, so no per-syscall audit
    cost (enabling audit once latches a slow syscall path for every new task until reboot,
    ~+150-250 ns a syscall here, unless this rule is in place). Landlock records still come."""
    _add_rule(_rule(AUDIT_FILTER_TASK), on)


def set_exclude_rules(on: bool) -> None:
    """'-a never,exclude -F msgtype...': only seccomp and LSM records (see EXCLUDED_TYPES)."""
    for conds in EXCLUDED_TYPES:
        _add_rule(_rule(AUDIT_FILTER_EXCLUDE, conds), on)


def ensure_enabled() -> str:
    """Make the kernel deliver Landlock records, changing as little as possible; returns what
    was done (for the audit log). An auditd in charge is left alone (its own rules and state)."""
    try:
        st = status()
        if st["pid"]:
            if not st["enabled"]:
                raise AuditUnavailable(f"an audit daemon (pid {st['pid']}) keeps kernel audit "
                                       "off; enable it there (auditctl -e 1)")
            return f"kernel audit is managed by the audit daemon (pid {st['pid']})"
        done: list[str] = []
        set_exclude_rules(True)  # first: nothing new floods the kernel log
        set_never_task_rule(True)  # no task forked later pays for audit
        if st["enabled"] == 0:
            _set(AUDIT_STATUS_ENABLED, enabled=1)
            done.append("enabled kernel audit (never,task and exclude rules installed)")
        if st["enabled"] != 2 and st["backlog_limit"] < BACKLOG_LIMIT:
            _set(AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=BACKLOG_LIMIT)
            done.append(f"raised the audit backlog limit {st['backlog_limit']} -> "
                        f"{BACKLOG_LIMIT}")
        return "; ".join(done) or "kernel audit already on"
    except OSError as e:
        raise AuditUnavailable(f"kernel audit refused: {e.strerror or e} (needs root with "
                               "CAP_AUDIT_CONTROL and CAP_AUDIT_READ, audit not off at boot)"
                               ) from e


@dataclass
class Denial:
    serial: int
    domain: str = ""
    blockers: str = ""   # e.g. "fs.write_file", "fs.execute", "scope.signal", "ptrace"
    object: dict[str, str] = field(default_factory=dict)  # path= dev= ino= | opid= ocomm= ...
    pid: int | None = None  # the denied task: not in the records (the never,task rule)
    domain_pid: int | None = None  # the pid that called restrict_self (the run's top process)

    @property
    def path(self) -> str:
        return self.object.get("path", "")

    @property
    def rights(self) -> list[str]:
        return [b for b in self.blockers.split(",") if b]


def _decode(key: str, raw: bytes) -> str:
    text = raw.decode(errors="surrogateescape")
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1]
    if key in _UNTRUSTED and _HEX.match(text):
        return os.fsdecode(bytes.fromhex(text))
    return text


def fields(text: bytes) -> dict[str, str]:
    return {k.decode(): _decode(k.decode(), v) for k, v in _KV.findall(text)}


Sink = Callable[[Denial], None]


class DenialRouter:
    """Reads Landlock records in a thread and routes each denial to the sink registered for its
    domain's creator pid. Denials that arrive before their run registered wait up to HOLD s."""

    HOLD = 5.0
    _instance: DenialRouter | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.note = ensure_enabled()
        self.sock = _socket()
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except OSError as e:
            self.sock.close()
            raise AuditUnavailable(f"cannot listen to kernel audit: {e.strerror}") from e
        self.domains: dict[str, int] = {}  # domain id -> pid that created it
        self._learned: dict[str, tuple[int, float]] = {}  # domain id -> (pid, when learned)
        self.seccomp_kills: dict[int, tuple[int, int]] = {}  # pid -> (audit arch, syscall nr)
        self.sinks: dict[int, Sink] = {}
        self.lost = 0  # receive-buffer overruns (ENOBUFS): records the kernel could not hand us
        self._last = 0.0  # when the last record arrived (monotonic)
        self._busy = False  # the reader is routing what it read
        self._status_sock = _socket()  # AUDIT_GET questions (settle)
        self._status_sock.bind((0, 0))
        self._status_sock.settimeout(1.0)
        self._status_lock = threading.Lock()
        self._linger: dict[int, float] = {}  # pid -> when its sink is dropped
        self._open: dict[int, tuple[Denial, float]] = {}
        self._held: list[tuple[Denial, float]] = []
        self._mu = threading.Lock()
        threading.Thread(target=self._loop, name="gb-landlock-audit", daemon=True).start()

    @classmethod
    def running(cls) -> DenialRouter | None:
        return cls._instance

    @classmethod
    def get(cls) -> DenialRouter:
        """The process's router (started on first use); AuditUnavailable if audit cannot work."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = DenialRouter()
            return cls._instance

    def register(self, pid: int, sink: Sink, since: float = 0.0) -> None:
        """Route denials of domains `pid` created to `sink`. `since`: when the run was spawned
        (monotonic): domains learned for this pid before that are an earlier run's."""
        with self._mu:
            for dom in [k for k, (p, t) in self._learned.items() if p == pid and t < since]:
                del self._learned[dom]
                self.domains.pop(dom, None)
            self.sinks[pid] = sink
            self._linger.pop(pid, None)
            held, self._held = self._held, []
        for d, t in held:
            self._route(d, t)

    def settle(self, limit: float = 0.05, ask_kernel: bool = True) -> None:
        """Before a run's report is final: every record the kernel queued before now has been
        routed. kauditd takes records off its queue and multicasts them at once (~0.1 ms
        typically, up to several ms on a loaded machine): wait until the queue is empty (the
        `backlog` of AUDIT_GET, ~30 us a question), then until the reader has read and routed
        what reached its socket. At most `limit` s. ask_kernel=False: only the latter."""
        deadline = time.monotonic() + limit
        if ask_kernel:
            try:
                with self._status_lock:
                    while status(self._status_sock)["backlog"] and time.monotonic() < deadline:
                        time.sleep(0.0005)
            except OSError:
                return
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable and not self._busy:
                return
            time.sleep(0.0002)

    def unregister(self, pid: int, linger: float = 0.0) -> None:
        """Stop routing to this run, now or after `linger` s (denials still in flight when the
        run ended then reach its sink late)."""
        with self._mu:
            if linger > 0:
                self._linger[pid] = time.monotonic() + linger
                return
            self._drop(pid)

    def _drop(self, pid: int) -> None:
        self.sinks.pop(pid, None)
        self._linger.pop(pid, None)
        for dom in [k for k, v in self.domains.items() if v == pid]:
            del self.domains[dom]
            self._learned.pop(dom, None)

    def _loop(self) -> None:
        while True:
            wait = 0.005 if self._open else 0.5
            try:
                r, _, _ = select.select([self.sock], [], [], wait)
                data = self.sock.recv(1 << 16) if r else b""
            except BlockingIOError:
                continue
            except OSError as e:  # ENOBUFS: the receive buffer overflowed; records were lost
                if e.errno == 105:
                    self.lost += 1
                    continue
                return
            if data:
                self._busy = True
                self._last = time.monotonic()
                self._feed_all(data)
            self._flush(time.monotonic(), quiet=not data)
            self._busy = False

    def _feed_all(self, data: bytes) -> None:
        off = 0
        while off + 16 <= len(data):
            ln, typ, _f, _s, _p = _HDR.unpack_from(data, off)
            if ln < 16:
                break
            self._feed(typ, data[off + 16:off + ln].rstrip(b"\0"))
            off += (ln + 3) & ~3

    def _feed(self, typ: int, text: bytes) -> None:
        """Under the never,task rule every record is its own event (its own serial): an
        ACCESS record is routed at once when its domain is known, else when the DOMAIN record
        that names the domain's creator arrives (right after it, for a domain's first denial)."""
        m = _SERIAL.match(text)
        if not m or typ not in (AUDIT_LANDLOCK_ACCESS, AUDIT_LANDLOCK_DOMAIN, AUDIT_SECCOMP):
            return
        serial, f = int(m[2]), fields(text[m.end():])
        now = time.monotonic()
        if typ == AUDIT_SECCOMP:  # kills, for sandbox.kernel.kmsg (not rate-limited here)
            try:
                with self._mu:
                    self.seccomp_kills[int(f["pid"])] = (int(f["arch"], 16), int(f["syscall"]))
                    if len(self.seccomp_kills) > 1024:
                        del self.seccomp_kills[next(iter(self.seccomp_kills))]
            except (KeyError, ValueError):
                pass
            return
        if typ == AUDIT_LANDLOCK_DOMAIN:
            dom = f.get("domain", "")
            if f.get("status") == "allocated" and f.get("pid", "").isdigit():
                with self._mu:
                    self.domains[dom] = int(f["pid"])
                    self._learned[dom] = (int(f["pid"]), now)
                for s, (d, t) in list(self._open.items()):
                    if d.domain == dom:
                        del self._open[s]
                        self._route(d, t)
            return
        d = Denial(serial, f.pop("domain", ""), f.pop("blockers", ""), f)
        if d.domain in self.domains:
            self._route(d, now)
        else:
            self._open[serial] = (d, now)

    def _flush(self, now: float, quiet: bool) -> None:
        """Denials whose domain stayed unknown are held for their run's registration; held
        denials of runs that never registered expire."""
        for serial, (d, t) in list(self._open.items()):
            if now - t > 0.005:
                del self._open[serial]
                self._route(d, t)
        with self._mu:
            self._held = [(d, t) for d, t in self._held if now - t < self.HOLD]
            for pid in [p for p, until in self._linger.items() if now > until]:
                self._drop(pid)

    def _route(self, d: Denial, t: float) -> None:
        with self._mu:
            d.domain_pid = self.domains.get(d.domain)
            sink = self.sinks.get(d.domain_pid) if d.domain_pid is not None else None
            if sink is None:
                if len(self._held) < 10_000:  # another Landlock user's records: not ours
                    self._held.append((d, t))
                return
        try:
            sink(d)
        except Exception as e:  # noqa: BLE001 - one run's sink must not stop every run's reports
            print(f"glassbreak: reporting a Landlock denial failed: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
