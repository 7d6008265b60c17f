"""The exec gate: every exec of a run's process tree judged by the run's profile, twice.

1. seccomp user-notification (layer "exec-gate"): the caller's path, argv and envp are read from
   /proc/PID/mem and judged before the exec happens: EPERM or CONTINUE. Racy by design (another
   thread may rewrite the strings after the check), so:
2. the eBPF hold (layer "exec-trace"): at sched_process_exec the new image is stopped before its
   first instruction (unless its filename is in the run's in-kernel fast-allow set), and the
   kernel-written /proc/PID/exe and /proc/PID/cmdline are judged: SIGCONT or SIGKILL.

The supervisor drives one ExecGate per run from its selectors loop (`fds()`, `handle(fd)`).
Every exec gives exactly one ExecObserved (from the trace when it ran, from the gate when it was
refused); every block an ExecBlocked and an `on_block` call (the escalation).

Rules the gate adds to the profile's own: fileless execs (memfd, execveat(AT_EMPTY_PATH),
/proc/self/fd/N, unlinked files) block unless exec.allowFileless (rule exec.fileless); loader
and interpreter environment injection (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH, BASH_ENV, ENV with
a non-empty value in an exec's environment) blocks (rule env.injection:NAME); argv or envp over
4096 entries or 1 MiB is denied (exec.argv-too-large); an exec whose arguments cannot be read is
denied (exec.unreadable); an internal error answers EPERM (exec-gate.internal-error).
"""

from __future__ import annotations

import errno
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

if TYPE_CHECKING:
    from sandbox.kernel.ebpf import ExecTracer, TraceView
    from sandbox.kernel.unotify import ExecRequest, Notif
    from sandbox.kernel.unotify_native import Responder
    from sandbox.policy.profile import ResolvedProfile

INJECTION_VARS = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "BASH_ENV", "ENV")
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
    held: int = 0
    fast: int = 0
    native: int = 0  # execs continued by the native responder (no Python on their path)
    native_ns: int = 0  # its total time from receipt to answer (or forward)
    first_block: tuple[str, str, str, str | None] | None = None  # rule, reason, layer, esc id
    notify_ns: int = 0  # total time handling notifications
    notify_max_ns: int = 0
    hold_ns: int = 0  # total time judging held execs
    hold_max_ns: int = 0

    def timing(self) -> dict[str, float]:
        n, h = max(self.notifications, 1), max(self.held, 1)
        return {"notify_avg_us": self.notify_ns / n / 1e3, "notify_max_us":
                self.notify_max_ns / 1e3, "hold_avg_us": self.hold_ns / h / 1e3,
                "hold_max_us": self.hold_max_ns / 1e3,
                "native_avg_us": self.native_ns / max(self.native, 1) / 1e3}


@dataclass
class _Proc:
    pid: int
    ppid: int | None = None
    binary: str | None = None
    argv: list[str] = field(default_factory=list)
    exited: bool = False


@dataclass
class _Pending:  # the gate's decision on an exec that was let through, until the trace sees it
    decision: Decision
    argv: list[str]
    binary: str | None


Check = Callable[..., Decision]


class ExecGate:
    def __init__(self, *, profile: ResolvedProfile, mode: Literal["enforce", "monitor"],
                 run_id: str, listener_fd: int | None, tracer: ExecTracer | None,
                 cgroup_id: int, emit: Callable[[Any], None],
                 on_block: Callable[[BlockInfo], str | None], check: Check | None = None) -> None:
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
        self._lpoll: select.poll | None = None
        self._listener_dead = False
        self._native: Responder | None = None
        if listener_fd is not None:
            from sandbox.kernel.unotify import Listener

            self._listener = Listener(listener_fd)
            self._lpoll = select.poll()
            self._lpoll.register(listener_fd, select.POLLIN)
            if tracer is not None and mode == "enforce":  # fast only with the eBPF hold behind
                self._native = _native_responder(listener_fd)
        self._procs: dict[int, _Proc] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=64)
        # per pid, the gate's decisions on execs let through, oldest first, until the trace sees
        # them (one process can exec several times before the trace is read: env -> true)
        self._pending: dict[int, list[_Pending]] = {}
        self._deferred: list[Notif] = []  # forwarded by the native responder, to answer
        self._closed = False
        self._fast: set[str] = set()
        self._fast_dec: dict[str, Decision] = {}
        self._memo: dict[tuple[Any, ...], Decision] = {}
        if tracer is not None:
            tracer.watch(cgroup_id, hold=(mode == "enforce"))
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
            # native records first (an exec's argv before its trace event), then the trace (fork
            # events: the caller's ppid; held execs at once), then the forwarded notifications
            self._deferred += self._native_records()
            self._trace()
            self._answer_deferred()
            return
        self._trace()  # fork events first (the caller's ppid), held execs at once
        if self._listener is not None and fd == self._listener.fd:
            self._notification()

    def set_profile(self, profile: ResolvedProfile) -> None:
        """Later execs are judged by this profile (grant expiry: the strict one again)."""
        self.profile = profile
        self._memo.clear()
        self._fast_dec.clear()
        self._refresh_fast()

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
                self.tracer.set_fast_allow(self.cgroup_id, ())

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

    def _refresh_fast(self) -> None:
        if self.tracer is None:
            return
        key = (self.profile.name, self.profile.content_hash)
        self._fast = _FAST.setdefault(key, set()) if self.mode == "enforce" else set()
        self.tracer.set_fast_allow(self.cgroup_id, self._fast)
        if self._native is not None:
            self._native.set_allow(self._fast)

    def _learn_fast(self, view: TraceView) -> None:
        if (self.tracer is None or self.mode != "enforce" or view.script or not view.exe
                or view.filename in self._fast or len(self._fast) >= 4096):
            return
        if fast_candidate(self.profile, self._check, view.filename, view.exe):
            self._fast.add(view.filename)
            self.tracer.set_fast_allow(self.cgroup_id, self._fast)
            if self._native is not None:
                self._native.set_allow(self._fast)

    # -- layer 1: seccomp user-notification -------------------------------------------------------
    def _native_records(self) -> list[Notif]:
        """Read the native responder's records: execs it continued become pending (their argv
        for the trace), forwarded notifications are returned for the Python judge."""
        from sandbox.kernel.unotify import Notif

        assert self._native is not None
        forwarded: list[Notif] = []
        msgs = self._native.read()
        for rec in self._native.take() + msgs:  # every F queued before an N was sent comes first
            if rec.kind == "F":
                self._pending.setdefault(rec.pid, []).append(
                    _Pending(self._fast_decision(rec.path), list(rec.argv), rec.path))
            elif rec.kind == "N":
                forwarded.append(Notif(rec.id, rec.pid, rec.nr, rec.arch, rec.args))
            elif rec.kind == "E":
                self._listener_dead = True
            elif rec.kind == "X" and not self._listener_dead:
                self.fatal = ("the native exec responder stopped "
                              f"({os.strerror(rec.err) if rec.err else 'without a reason'}): "
                              "the run's execs can no longer be answered")
        return forwarded

    def _fast_decision(self, path: str) -> Decision:
        d = self._fast_dec.get(path)
        if d is None:
            d = self._check(self.profile, [path], cwd="/", env_path="", binary=path)
            if not d.allowed:  # cannot happen for a fast path; never record it as blocked
                d = Decision(Verdict.ALLOW, "exec.fast-allow", "allowed with no argv rule", (),
                             path)
            self._fast_dec[path] = d
        return d

    def _notification(self, n: Notif | None = None) -> None:
        assert self._listener is not None and self._lpoll is not None
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
        t0 = time.perf_counter_ns()
        answered = False
        try:
            answered = self._judge_notification(n)
        except Exception as e:  # noqa: BLE001 - fail closed, never leave it unanswered
            if not answered:
                self._listener.respond_errno(n.id, errno.EPERM)
                answered = True
            d = Decision(Verdict.DENY, "exec-gate.internal-error",
                         f"the exec gate failed ({type(e).__name__}: {e}); refused (fail closed)")
            self._blocked(d, Layer.EXEC_GATE, n.pid, None, None, enforced=True)
        finally:
            if not answered:
                self._listener.respond_errno(n.id, errno.EPERM)
            dt = time.perf_counter_ns() - t0
            self.stats.notifications += 1
            self.stats.notify_ns += dt
            self.stats.notify_max_ns = max(self.stats.notify_max_ns, dt)

    def _judge_notification(self, n: Notif) -> bool:
        """Returns True once the notification is answered."""
        from sandbox.kernel.unotify import read_exec

        assert self._listener is not None
        req = read_exec(self._listener, n)
        if not self._listener.id_valid(n.id):
            return True  # the caller is gone (or the syscall was interrupted): nothing to answer
        d = self._decide_request(req)
        if d is None:  # the path does not exist: the kernel would say ENOENT
            self._listener.respond_errno(n.id, errno.ENOENT)
            return True
        if d.allowed or self.mode == "monitor":
            self._listener.respond_continue(n.id)
            if not d.allowed:
                self.stats.would_block += 1
            if self.tracer is None:
                self._observed(n.pid, d, Layer.EXEC_GATE, req.binary, req.argv)
            else:
                self._pending.setdefault(n.pid, []).append(_Pending(d, req.argv, req.binary))
            return True
        self._listener.respond_errno(n.id, errno.EPERM)
        self._blocked(d, Layer.EXEC_GATE, n.pid, req.binary, req.cwd, enforced=True)
        return True

    def _decide_request(self, req: ExecRequest) -> Decision | None:
        argv = req.argv
        if req.error:
            rule = "exec.argv-too-large" if req.too_large else "exec.unreadable"
            return Decision(Verdict.DENY, rule, req.error, tuple(argv[:64]), req.binary)
        if req.fileless is not None:
            d = self._fileless(req.fileless, req.fd_target, argv, req.cwd)
            if d is not None:
                return d
        elif req.binary is None or not os.path.exists(req.binary):
            return None
        inj = _injection(req.envp, argv, req.binary)
        if inj is not None:
            return inj
        binary = req.abspath if req.fileless is None else req.fd_target
        path = next((e[5:] for e in req.envp if e.startswith("PATH=")), None)
        return self._cached_check(argv or [req.path], req.cwd, path, binary)

    def _cached_check(self, argv: list[str], cwd: str | None, env_path: str | None,
                      binary: str | None) -> Decision:
        """check_argv, memoised per run on the exact inputs and the binary's identity (dev,
        inode, mtime, size): a replaced file is judged again. Cleared by set_profile."""
        try:
            st = os.stat(binary) if binary else None
        except OSError:
            st = None
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) if st else None
        key = (binary, ident, tuple(argv), cwd, env_path)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._check(self.profile, argv, cwd=cwd, env_path=env_path, binary=binary)
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def _fileless(self, why: str, target: str | None, argv: list[str], cwd: str | None
                  ) -> Decision | None:
        real = target is not None and target.startswith("/") and not target.endswith(
            " (deleted)") and not target.startswith("/memfd:") and os.path.isfile(target)
        if not self.profile.exec.allowFileless:
            return Decision(Verdict.BLOCK, "exec.fileless",
                            f"{why} -> {target}: fileless execs are not allowed by this profile "
                            "(exec.allowFileless)", tuple(argv), target)
        if real:
            return None  # judged as the file it points to
        return Decision(Verdict.ALLOW, "exec.allowFileless", f"{why} (allowed by the profile)",
                        tuple(argv), target)

    # -- layer 2: the eBPF trace and hold ---------------------------------------------------------
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
                self.fatal = (f"the eBPF ring buffer dropped {self.lost} event(s): the run's "
                              "execs can no longer all be verified")

    def _take_pending(self, ev: Any) -> _Pending | None:
        """The oldest pending decision of this exec's process (the exec's own, in order)."""
        for pid in (ev.old_pid, ev.pid):
            queue = self._pending.get(pid)
            if queue:
                pend = queue.pop(0)
                if not queue:
                    del self._pending[pid]
                return pend
        return None

    def _exec_event(self, ev: Any) -> None:
        pend = self._take_pending(ev)
        if pend is None and not ev.held and self._native is not None:
            # the native responder queues an exec's record before it lets the exec go on, so
            # a record missing here was queued after our last read: read again
            self._deferred += self._native_records()
            pend = self._take_pending(ev)
        if not ev.held:
            self.stats.fast += 1
            d = pend.decision if pend is not None else Decision(
                Verdict.ALLOW, "exec.fast-allow", "allowed with no argv rule", (), ev.filename)
            argv = pend.argv if pend is not None else [ev.filename]
            binary = pend.binary if pend is not None else ev.filename
            self._observed(ev.pid, d, Layer.EXEC_GATE if pend else Layer.EXEC_TRACE, binary, argv)
            return
        self.stats.held += 1
        t0 = time.perf_counter_ns()
        try:
            pidfd = os.pidfd_open(ev.pid)
        except OSError:
            return  # gone already (killed while held)
        try:
            from sandbox.kernel.ebpf import read_trace_view

            view = read_trace_view(ev.pid, ev.filename)
            d = self._decide_view(view)
            if d.allowed or self.mode == "monitor":
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
                if not d.allowed:
                    self.stats.would_block += 1
                else:
                    self._learn_fast(view)
                self._observed(ev.pid, d, Layer.EXEC_TRACE, view.binary, view.argv)
            else:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                self._blocked(d, Layer.EXEC_TRACE, ev.pid, view.binary, view.cwd, enforced=True)
        except Exception as e:  # noqa: BLE001 - fail closed: kill what we cannot verify
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            d = Decision(Verdict.DENY, "exec-trace.internal-error",
                         f"the exec could not be verified ({type(e).__name__}: {e}); killed",
                         (), ev.filename)
            self._blocked(d, Layer.EXEC_TRACE, ev.pid, ev.filename, None, enforced=True)
        finally:
            os.close(pidfd)
            dt = time.perf_counter_ns() - t0
            self.stats.hold_ns += dt
            self.stats.hold_max_ns = max(self.stats.hold_max_ns, dt)

    def _decide_view(self, v: TraceView) -> Decision:
        if v.error:
            return Decision(Verdict.DENY, "exec.unreadable", v.error, tuple(v.argv), v.binary)
        if v.fileless is not None:
            d = self._fileless(v.fileless, v.binary, v.argv, v.cwd)
            if d is not None:
                return d
        inj = _injection(v.envp, v.argv, v.binary)
        if inj is not None:
            return inj
        return self._check(self.profile, v.argv, cwd=v.cwd, env_path=v.env_path,
                           binary=v.binary)

    # -- events -----------------------------------------------------------------------------------
    def _observed(self, pid: int, d: Decision, layer: Layer, binary: str | None,
                  argv: list[str]) -> None:
        p = self._proc(pid)
        p.binary, p.argv, p.exited = binary, list(argv), False
        self.stats.execs += 1
        would = not d.allowed and self.mode == "monitor"
        rec = {"pid": pid, "ppid": p.ppid, "binary": binary, "argv": list(argv),
               "decision": d.verdict.value, "layer": layer.value, "rule_id": d.rule_id,
               "ts": time.time()}
        self._recent.append(rec)
        self.emit(ExecObserved(run_id=self.run_id, pid=pid, ppid=p.ppid, binary=binary or "?",
                               sha256=sha256_of(binary), argv=list(argv),
                               decision=d.verdict.value, layer=layer.value, rule_id=d.rule_id,
                               would_block=would))

    def _blocked(self, d: Decision, layer: Layer, pid: int, binary: str | None,
                 cwd: str | None, *, enforced: bool) -> None:
        binary = d.binary or binary
        sha = sha256_of(binary)
        argv = list(d.argv)
        p = self._proc(pid)
        self.stats.blocked += 1
        self.stats.execs += 1
        self._recent.append({"pid": pid, "ppid": p.ppid, "binary": binary, "argv": argv,
                             "decision": d.verdict.value, "layer": layer.value,
                             "rule_id": d.rule_id, "ts": time.time()})
        self.emit(ExecObserved(run_id=self.run_id, pid=pid, ppid=p.ppid, binary=binary or "?",
                               sha256=sha, argv=argv, decision=d.verdict.value,
                               layer=layer.value, rule_id=d.rule_id))
        esc: str | None = None
        try:
            esc = self.on_block(BlockInfo(d, layer.value, pid, argv, binary, sha, cwd,
                                          self.ancestry(pid), self.recent_execs()))
        finally:
            if self.stats.first_block is None:
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


def _injection(envp: list[str], argv: list[str], binary: str | None) -> Decision | None:
    for e in envp:
        name, eq, value = e.partition("=")
        if eq and value and name in INJECTION_VARS:
            return Decision(Verdict.BLOCK, f"env.injection:{name}",
                            f"{name} in the environment of an exec loads code into the program "
                            "before it starts", tuple(argv), binary)
    return None


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


_FAST_PROBES = ((), ("--glassbreak-probe",), ("-Z", "glassbreak-probe", "--", "x"))
# learned fast-allow sets per (profile name, content hash): a daemon's later runs start warm
_FAST: dict[tuple[str, str], set[str]] = {}


def fast_candidate(profile: ResolvedProfile, check: Check, filename: str, exe: str) -> bool:
    """May `filename` be continued in the kernel without a hold from now on? Only a plain
    absolute spelling in a trusted dir of a root-owned regular file (in a root-owned, not
    group/world-writable dir), that is not a script, not the loader, has no safeBins rule, and is
    allowed whatever its argv (so neither multi-call binaries nor ruled binaries qualify)."""
    from sandbox.policy.resolve import is_loader_name, trusted_set

    if (not filename.startswith("/") or os.path.normpath(filename) != filename
            or os.path.realpath(filename) != exe or is_loader_name(exe)):
        return False
    d, name = os.path.split(filename)
    keys = profile.safeBins
    if name in keys or filename in keys or exe in keys or os.path.basename(exe) in keys:
        return False
    if os.path.realpath(d) not in trusted_set(profile.exec.trustedDirs) or not _root_owned(exe):
        return False
    try:
        return all(check(profile, [filename, *probe], cwd="/", env_path="",
                         binary=filename).allowed for probe in _FAST_PROBES)
    except Exception:  # noqa: BLE001 - when in doubt, hold
        return False


def _root_owned(path: str) -> bool:
    import stat as st_mod

    try:
        st = os.stat(path)
        dst = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return (st_mod.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022
            and dst.st_uid == 0 and not dst.st_mode & 0o022)
