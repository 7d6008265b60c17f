"""The exec gate: every exec of a run's process tree judged by the run's profile, and verified
by the kernel.
Why this module is long: ExecGate (~370 lines) is one run's exec gate: the seccomp listener, the
native responder and the in-kernel verifier's reports are handled in one place and one order (the
expectation is written before CONTINUE); splitting it would spread that order over modules. The
decision itself is sandbox.run.execjudge.

1. seccomp user-notification (layer "exec-gate", sandbox.run.execjudge): the caller's path,
   argv and envp are read and judged before the exec happens: EPERM, or an expectation for the
   in-kernel verifier and CONTINUE. The common case (a fast-allowed binary, by identity) is
   answered by the native responder (native/gbresp.c) without Python.
2. in-kernel verification (layer "exec-trace", native/bpf/exectrace.c): at sched_process_exec
   the image that really runs (device + inode) and a keyed hash of the argv + envp the kernel
   copied are compared with the expectation the gate wrote for the exec'ing thread; anything
   else is killed before its first instruction. There is no hold, so nothing inside the run
   (signals, an orphaned process group's SIGCONT, exits) can release an exec early.

What the kernel guarantees for each exec of an enforced run: the image that runs is the file
the gate judged (same device and inode; the content of that inode is the Landlock layer's to
keep read-only), and its argv and environment are byte for byte the ones the gate judged.
Writes into the new image's memory after exec (ptrace, process_vm_writev: seccomp baseline;
/proc/PID/mem: the Landlock layer) are the remaining window.

The supervisor drives one ExecGate per run from its selectors loop (`fds()`, `handle(fd)`).
Every exec gives exactly one ExecObserved (when the kernel reports it, with the argv the gate
judged: the hash proves it is the argv that ran; from the gate when it was refused); every block
an ExecBlocked and an `on_block` call (the escalation).

Modes: enforce; monitor (nothing refused at the argv layers, the kernel kills nothing, every
would-be block recorded); --degraded ebpf (the gate alone: its CONTINUE is racy by design);
--degraded exec-gate (the kernel reports every exec with its identity and the supervisor judges
the process after the fact from /proc, killing it on a block: it has already started).

Why this module is ~490 lines: ExecGate is the one object the supervisor drives per run, and
the order in which it reads its inputs is part of its correctness (the native responder's
records before the kernel's reports, those before the forwarded notifications; an exec's
judgement queued before the kernel reports it). The judge (execjudge.py), the meaning of a
kernel report (exectrace.py) and fast-allow learning (fastallow.py) live elsewhere; what stays
is that ordering, the process table and the events.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sandbox.events import ExecBlocked, ExecObserved
from sandbox.policy.decision import Decision, Layer, Verdict
from sandbox.run.execjudge import Check, ExecJudge, Judged
from sandbox.run.exectrace import judge_after_the_fact, kill_decision
from sandbox.run.fastallow import FAST, Fast, fast_candidate, same_file

if TYPE_CHECKING:
    from sandbox.kernel.ebpf import ExecEvent, ExecTracer
    from sandbox.kernel.unotify import Notif
    from sandbox.kernel.unotify_native import Responder
    from sandbox.policy.profile import ResolvedProfile

TABLE_MAX = 8192
@dataclass
class BlockInfo:
    decision: Decision
    layer: str
    pid: int
    argv: list[str]
    binary: str | None
    sha256: str | None
    cwd: str | None
    ancestry: list[dict[str, Any]]
    recent_execs: list[dict[str, Any]]


@dataclass
class GateStats:
    execs: int = 0
    blocked: int = 0
    would_block: int = 0
    notifications: int = 0
    fast: int = 0  # execs continued by the native responder (no Python on their path)
    native: int = 0
    native_ns: int = 0  # its total time from receipt to answer (or forward)
    first_block: tuple[str, str, str, str | None] | None = None  # rule, reason, layer, esc id
    notify_ns: int = 0  # total time handling notifications in Python
    notify_max_ns: int = 0
    kernel: dict[str, int] = field(default_factory=dict)  # the verifier's counters at the end

    def timing(self) -> dict[str, float]:
        n = max(self.notifications, 1)
        k = self.kernel
        return {"notify_avg_us": self.notify_ns / n / 1e3,
                "notify_max_us": self.notify_max_ns / 1e3,
                "native_avg_us": self.native_ns / max(self.native, 1) / 1e3,
                "kernel_avg_us": k.get("ns", 0) / max(k.get("execs", 0), 1) / 1e3}


@dataclass
class _Proc:
    pid: int
    ppid: int | None = None
    binary: str | None = None
    argv: list[str] = field(default_factory=list)
    exited: bool = False


class ExecGate:
    def __init__(self, *, profile: ResolvedProfile, mode: Literal["enforce", "monitor"],
                 run_id: str, listener_fd: int | None, tracer: ExecTracer | None,
                 cgroup_id: int, emit: Callable[[Any], None],
                 on_block: Callable[[BlockInfo], str | None], check: Check | None = None,
                 attrs: Any = None) -> None:
        if check is None:
            from sandbox.policy.check import check_argv

            check = check_argv
        self._check: Check = check
        self.profile = profile
        self.mode = mode
        self.run_id = run_id
        self.cgroup_id = cgroup_id
        self.emit = emit
        self.on_block = on_block
        self.tracer = tracer
        self.fatal: str | None = None
        self.lost = 0
        self.stats = GateStats()
        self._listener = None
        self._judge: ExecJudge | None = None
        self._lpoll: select.poll | None = None
        self._listener_dead = False
        self._native: Responder | None = None
        if listener_fd is not None:
            from sandbox.kernel.unotify import Listener

            self._listener = Listener(listener_fd)
            self._judge = ExecJudge(listener=self._listener, tracer=tracer,
                                    cgroup_id=cgroup_id, mode=mode, check=check,
                                    allowed=self._allowed, blocked=self._blocked_at,
                                    stats=self.stats, attrs=attrs)
            self._judge.set_profile(profile)
            self._lpoll = select.poll()
            self._lpoll.register(listener_fd, select.POLLIN)
            if tracer is not None and mode == "enforce":  # fast only with the kernel behind
                self._native = _native_responder(listener_fd)
                if self._native is not None:
                    self._native.set_verify(tracer.expect_map_fd, tracer.key, cgroup_id)
        self._procs: dict[int, _Proc] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=64)
        # per thread id, the judge's decisions on execs let through, oldest first, until the
        # kernel reports them
        self._pending: dict[int, list[Judged]] = {}
        self._deferred: list[Notif] = []  # forwarded by the native responder, to answer
        self._closed = False
        self._fast: dict[str, Fast] = {}
        if tracer is not None:
            self._efd = tracer.event_fd(cgroup_id)
            self._refresh_fast()

    # -- the supervisor's interface -------------------------------------------------------------
    def fds(self) -> list[int]:
        out = []
        if self._native is not None:
            out.append(self._native.fileno())
        elif self._listener is not None:
            out.append(self._listener.fd)
        if self.tracer is not None:
            out += [self.tracer.fileno(), self._efd]
        return out

    def handle(self, fd: int) -> None:
        if self._native is not None:
            # native records first (an exec's argv before its kernel report), then the kernel's
            # reports, then the forwarded notifications
            self._deferred += self._native_records()
            self._trace()
            self._answer_deferred()
            return
        self._trace()  # fork events first (the caller's ppid)
        if self._listener is not None and fd == self._listener.fd:
            self._notification()

    def set_profile(self, profile: ResolvedProfile) -> None:
        """Later execs are judged by this profile (grant expiry: the strict one again)."""
        self.profile = profile
        if self._judge is not None:
            self._judge.set_profile(profile)
        self._refresh_fast()

    def catch_up(self) -> None:
        """Read what is already queued (the native responder's records, the kernel's reports),
        without waiting: another layer is about to name a process of the run, and a
        fast-allowed exec's argv reaches the process table only through these."""
        if self._closed:
            return
        if self._native is not None:
            self._deferred += self._native_records()
            self._trace()
            self._answer_deferred()
        else:
            self._trace()

    def drain(self) -> None:
        """Consume every trace event still queued (the run is ending)."""
        if self._native is not None:
            self._deferred += self._native_records()
        self._trace(check_lost=True)
        self._answer_deferred()

    def _answer_deferred(self) -> None:
        """Answer the notifications the native responder forwarded (after the trace)."""
        while self._deferred:
            self._notification(self._deferred.pop(0))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._native is not None:
                self._native.stop()  # first: no exec is continued after the last drain
            self.drain()
        finally:
            if self._native is not None:
                self.stats.native, _, self.stats.native_ns = self._native.counts()
                self._native.close()
            if self.tracer is not None:
                self.stats.kernel = self.tracer.counters(self.cgroup_id)

    def ancestry(self, pid: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        cur: int | None = pid
        while cur and cur not in seen and len(out) < 32:
            seen.add(cur)
            p = self._proc(cur)
            out.append({"pid": p.pid, "ppid": p.ppid, "binary": p.binary, "argv": p.argv})
            cur = p.ppid
        return out

    def recent_execs(self, n: int = 20) -> list[dict[str, Any]]:
        return list(self._recent)[-n:]

    # -- process table --------------------------------------------------------------------------
    def _proc(self, pid: int) -> _Proc:
        p = self._procs.get(pid)
        if p is None:
            if len(self._procs) >= TABLE_MAX:
                for k in [k for k, v in self._procs.items() if v.exited][: TABLE_MAX // 2]:
                    del self._procs[k]
            p = self._procs[pid] = _Proc(pid)
        if p.ppid is None and not p.exited:
            p.ppid = ppid_of(pid)
        return p

    # -- fast-allow: by path AND identity ------------------------------------------------------
    def _refresh_fast(self) -> None:
        if self.tracer is None:
            return
        key = (self.profile.name, self.profile.content_hash)
        self._fast = FAST.setdefault(key, {}) if self.mode == "enforce" else {}
        self._push_fast()

    def _push_fast(self) -> None:
        if self._native is not None:
            self._native.set_allow([(p, f.dev, f.ino, f.ctime_ns) for p, f in self._fast.items()])

    def _learn_fast(self, j: Judged) -> None:
        if (self.tracer is None or self.mode != "enforce" or j.ident is None
                or not j.decision.allowed or len(self._fast) >= 4096):
            return
        dev, ino, ctime = j.ident
        have = self._fast.get(j.path)
        if have is not None and (have.dev, have.ino, have.ctime_ns) == j.ident:
            return
        exe = os.path.realpath(j.path)
        if fast_candidate(self.profile, self._check, j.path, exe) and same_file(exe, j.ident):
            self._fast[j.path] = Fast(dev, ino, ctime, j.decision)
            self._push_fast()

    # -- layer 1: seccomp user-notification ---------------------------------------------------
    def _native_records(self) -> list[Notif]:
        """Read the native responder's records: execs it continued become pending (their argv
        for the kernel's report), forwarded notifications are returned for the Python judge."""
        from sandbox.kernel.unotify import Notif

        assert self._native is not None
        forwarded: list[Notif] = []
        msgs = self._native.read()
        for rec in self._native.take() + msgs:  # every F queued before an N was sent comes first
            if rec.kind == "F":
                f = self._fast.get(rec.path)
                d = f.decision if f is not None else Decision(
                    Verdict.ALLOW, "exec.fast-allow", "allowed with no argv rule", (), rec.path)
                self._pending.setdefault(rec.pid, []).append(
                    Judged(d, list(rec.argv), d.binary or rec.path, rec.path))
                self.stats.fast += 1
            elif rec.kind == "N":
                forwarded.append(Notif(rec.id, rec.pid, rec.nr, rec.arch, rec.args))
            elif rec.kind == "E":
                self._listener_dead = True
            elif rec.kind == "X" and not self._listener_dead:
                self.fatal = ("the native exec responder stopped "
                              f"({os.strerror(rec.err) if rec.err else 'without a reason'}): "
                              "the run's execs can no longer be answered")
        return forwarded

    def _notification(self, n: Notif | None = None) -> None:
        assert self._listener is not None and self._lpoll is not None and self._judge is not None
        if n is None:
            if self._listener_dead:
                return
            ready = self._lpoll.poll(0)
            if not ready or not ready[0][1] & select.POLLIN:
                if ready and ready[0][1] & (select.POLLHUP | select.POLLERR):
                    self._listener_dead = True  # every process of the filter is gone
                return
            n = self._listener.recv()
            if n is None:
                return
        self._judge.handle(n)

    def _allowed(self, tid: int, j: Judged) -> None:
        if self.tracer is None:  # no kernel report will come: observed now
            self._observed(tid, j.decision, Layer.EXEC_GATE, j.binary, j.argv)
        else:
            self._pending.setdefault(tid, []).append(j)

    def _blocked_at(self, d: Decision, layer: Layer, pid: int, binary: str | None,
                    cwd: str | None, observed: bool = True) -> None:
        self._blocked(d, layer, pid, binary, cwd, enforced=True, observed=observed)

    # -- layer 2: the kernel's verdicts ------------------------------------------------------------
    def _trace(self, check_lost: bool = False) -> None:
        if self.tracer is None:
            return
        from sandbox.kernel.ebpf import ExecEvent, ExitEvent, ForkEvent, LostEvent

        for ev in self.tracer.consume(self.cgroup_id, check_lost=check_lost):
            if isinstance(ev, ExecEvent):
                self._exec_event(ev)
            elif isinstance(ev, ForkEvent):
                p = self._procs[ev.pid] = _Proc(ev.pid, ev.ppid)
                parent = self._procs.get(ev.ppid)
                if parent is not None:
                    p.binary, p.argv = parent.binary, parent.argv
            elif isinstance(ev, ExitEvent):
                gone = self._procs.get(ev.pid)
                if gone is not None:
                    gone.exited = True
                self._pending.pop(ev.pid, None)
            elif isinstance(ev, LostEvent):
                self.lost += ev.count
                what = {"kill failed": "the kernel could not kill an exec that differed from "
                                       "its verdict",
                        "verifier skipped": f"the kernel skipped the exec verifier {ev.count} "
                                            "time(s)"}.get(ev.source, f"the eBPF ring buffer "
                                                                      f"dropped {self.lost} "
                                                                      "event(s)")
                self.fatal = f"{what}: the run's execs can no longer all be verified"

    def _take_pending(self, ev: ExecEvent) -> Judged | None:
        """The oldest pending decision of the thread that exec'd (the exec's own, in order)."""
        for pid in (ev.old_pid, ev.pid):
            queue = self._pending.get(pid)
            if queue:
                j = queue.pop(0)
                if not queue:
                    del self._pending[pid]
                return j
        return None

    def _exec_event(self, ev: ExecEvent) -> None:
        j = self._take_pending(ev)
        if j is None and self._native is not None:
            # the native responder queues an exec's record before it lets the exec go on, so
            # a record missing here was queued after our last read: read again
            self._deferred += self._native_records()
            j = self._take_pending(ev)
        if self._listener is None:  # --degraded exec-gate: judged after the fact
            self._after_the_fact(ev)
        elif ev.ok and j is not None:
            self._observed(ev.pid, j.decision, Layer.EXEC_GATE, j.binary, j.argv)
            self._learn_fast(j)
        elif ev.ok:  # cannot happen: verified means the gate wrote an expectation
            d = Decision(Verdict.ALLOW, "exec.verified", "verified by the kernel", (),
                         ev.filename)
            self._observed(ev.pid, d, Layer.EXEC_TRACE, ev.filename, [ev.filename])
        else:
            self._killed(ev, j)

    def _killed(self, ev: ExecEvent, j: Judged | None) -> None:
        """The kernel's verdict differed from the gate's (killed unless monitor mode)."""
        d = kill_decision(ev, j, self.mode)
        if self.mode == "monitor":
            self.stats.would_block += 1
        self._blocked(d, Layer.EXEC_TRACE, ev.pid, d.binary, None, enforced=ev.killed)

    def _after_the_fact(self, ev: ExecEvent) -> None:
        """--degraded exec-gate: judge the process from /proc (or, when it has already exited,
        from the kernel's copy of its argv); kill it on a block."""
        try:
            pidfd: int | None = os.pidfd_open(ev.pid)
        except OSError:
            pidfd = None  # gone already
        try:
            d, binary, argv, cwd = judge_after_the_fact(ev, self.profile, self._check)
            if d.allowed or self.mode == "monitor":
                if not d.allowed:
                    self.stats.would_block += 1
                self._observed(ev.pid, d, Layer.EXEC_TRACE, binary, argv)
            else:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                self._blocked(d, Layer.EXEC_TRACE, ev.pid, binary, cwd, enforced=True)
        except Exception as e:  # noqa: BLE001 - fail closed: kill what we cannot judge
            try:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            d = Decision(Verdict.DENY, "exec-trace.internal-error",
                         f"the exec could not be judged ({type(e).__name__}: {e}); killed",
                         (), ev.filename)
            self._blocked(d, Layer.EXEC_TRACE, ev.pid, ev.filename, None, enforced=True)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    # -- events -----------------------------------------------------------------------------------
    def _observed(self, pid: int, d: Decision, layer: Layer, binary: str | None,
                  argv: list[str]) -> None:
        p = self._proc(pid)
        p.binary, p.argv, p.exited = binary, list(argv), False
        self.stats.execs += 1
        would = not d.allowed and self.mode == "monitor"
        rec = {"pid": pid, "ppid": p.ppid, "binary": binary, "argv": _head(argv),
               "decision": d.verdict.value, "layer": layer.value, "rule_id": d.rule_id,
               "ts": time.time()}
        self._recent.append(rec)
        self.emit(ExecObserved(run_id=self.run_id, pid=pid, ppid=p.ppid, binary=binary or "?",
                               sha256=sha256_of(binary), argv=list(argv),
                               decision=d.verdict.value, layer=layer.value, rule_id=d.rule_id,
                               would_block=would))

    def _blocked(self, d: Decision, layer: Layer, pid: int, binary: str | None,
                 cwd: str | None, *, enforced: bool, observed: bool = True) -> None:
        binary = d.binary or binary
        sha = sha256_of(binary)
        argv = list(d.argv)
        p = self._proc(pid)
        self.stats.blocked += 1
        if observed:
            self.stats.execs += 1
            self._recent.append({"pid": pid, "ppid": p.ppid, "binary": binary,
                                 "argv": _head(argv), "decision": d.verdict.value,
                                 "layer": layer.value, "rule_id": d.rule_id, "ts": time.time()})
            self.emit(ExecObserved(run_id=self.run_id, pid=pid, ppid=p.ppid,
                                   binary=binary or "?", sha256=sha, argv=argv,
                                   decision=d.verdict.value, layer=layer.value,
                                   rule_id=d.rule_id, would_block=not enforced))
        esc: str | None = None
        try:
            if enforced:
                esc = self.on_block(BlockInfo(d, layer.value, pid, argv, binary, sha, cwd,
                                              self.ancestry(pid), self.recent_execs()))
        finally:
            if self.stats.first_block is None and enforced:
                self.stats.first_block = (d.rule_id, d.reason, layer.value, esc)
            self.emit(ExecBlocked(run_id=self.run_id, layer=layer.value,
                                  verdict=d.verdict.value,  # type: ignore[arg-type]
                                  rule_id=d.rule_id, reason=d.reason, argv=argv, binary=binary,
                                  sha256=sha, pid=pid, profile=self.profile.name,
                                  escalation_id=esc, enforced=enforced))


def _native_responder(listener_fd: int) -> Responder | None:
    """The native responder for this listener, or None (library missing: all in Python)."""
    from sandbox.kernel.unotify_native import Responder, load

    lib = load()
    if lib is None:
        return None
    try:
        return Responder(lib, listener_fd)
    except OSError:
        return None


def _head(argv: list[str], n: int = 64) -> list[str]:
    """The first arguments (the recent-execs context of an escalation stays small)."""
    return list(argv[:n]) + ([f"... ({len(argv)} arguments)"] if len(argv) > n else [])


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def sha256_of(path: str | None) -> str | None:
    if not path or not path.startswith("/"):
        return None
    from sandbox.policy.resolve import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None
