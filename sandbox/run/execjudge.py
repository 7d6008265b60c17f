"""The exec gate's judge: one seccomp user-notification at a time, judged and answered.

For an execve/execveat (layer "exec-gate"):
  1. read path, argv and envp from the caller's memory (sandbox.kernel.unotify), completely:
     the only cap is the kernel's own (past it: E2BIG, as the kernel would answer);
  2. plan the exec in the CALLER's view (sandbox.kernel.execplan): the file its root and cwd
     name, the interpreter chain of a `#!` script, the identity (device + inode) of the image
     that will run and the argv the kernel will lay out; a path the kernel would refuse gets the
     kernel's errno;
  3. judge the file by a name that means the same file in the supervisor's view, with the
     caller's argv (fileless execs, environment injection, then the profile: check_argv);
  4. allowed (or monitor mode): write the expectation {identity, SipHash(argv + envp)} for the
     in-kernel verifier BEFORE answering CONTINUE; the kernel kills the exec if what it runs
     differs (another file, other bytes: a race on the caller's memory, a rename, a chroot).
     Blocked: EPERM, and the block with its context.

For any other notified syscall (profile rules with action `notify`, e.g. the base profile's
chroot and pidfd_getfd): EPERM, recorded as a block (layer "seccomp", rule seccomp.<rule id>);
a root run's chmod, chown and utime (the root guard's, not a profile's notify rule) go to its
attribute mediator (sandbox.run.attrgate), which performs or refuses them.

Rules the judge adds to the profile's own: fileless execs (memfd, execveat(AT_EMPTY_PATH),
/proc/self/fd/N, unlinked files) block unless exec.allowFileless (rule exec.fileless); loader
and interpreter environment injection (LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH, BASH_ENV, ENV with
a non-empty value) blocks (rule env.injection:NAME); an exec whose arguments cannot be read is
denied (exec.unreadable), one whose file has no name in the supervisor's view (another mount
namespace) too (exec.unresolvable); an internal error answers EPERM (exec-gate.internal-error).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sandbox.policy.decision import Decision, Layer, Verdict

if TYPE_CHECKING:
    from sandbox.kernel.ebpf import ExecTracer
    from sandbox.kernel.execplan import ExecPlan, TaskView
    from sandbox.kernel.unotify import ExecRequest, Listener, Notif
    from sandbox.policy.profile import ResolvedProfile

INJECTION_VARS = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "BASH_ENV", "ENV")
MEMO_ARGS = 256
Check = Callable[..., Decision]


@dataclass
class Judged:
    """An exec the judge let through, until the kernel's verdict on it arrives."""

    decision: Decision
    argv: list[str]
    binary: str | None
    path: str = ""  # as the caller gave it
    ident: tuple[int, int, int] | None = None  # (st_dev, st_ino, st_ctime_ns): a fast candidate


class ExecJudge:
    """Judges and answers the notifications of one run's listener. `allowed(tid, judged)` and
    `blocked(decision, layer, pid, binary, cwd, observed)` report to the gate."""

    def __init__(self, *, listener: Listener, tracer: ExecTracer | None, cgroup_id: int,
                 mode: str, check: Check, allowed: Callable[[int, Judged], None],
                 blocked: Callable[..., None], stats: Any, attrs: Any = None) -> None:
        self.listener = listener
        self.tracer = tracer
        self.cgroup_id = cgroup_id
        self.mode = mode
        self.check = check
        self.profile: ResolvedProfile | None = None
        self._allowed = allowed
        self._blocked = blocked
        self.stats = stats
        self.attrs = attrs  # a root run's AttrGate, or None
        self._memo: dict[tuple[Any, ...], Decision] = {}

    def set_profile(self, profile: ResolvedProfile) -> None:
        self.profile = profile
        self._memo.clear()

    # -- one notification ---------------------------------------------------------------------
    def handle(self, n: Notif) -> None:
        t0 = time.perf_counter_ns()
        answered = False
        try:
            answered = self._judge(n)
        except Exception as e:  # noqa: BLE001 - fail closed, never leave it unanswered
            if not answered:
                self.listener.respond_errno(n.id, errno.EPERM)
                answered = True
            d = Decision(Verdict.DENY, "exec-gate.internal-error",
                         f"the exec gate failed ({type(e).__name__}: {e}); refused (fail closed)")
            self._blocked(d, Layer.EXEC_GATE, n.pid, None, None)
        finally:
            if not answered:
                self.listener.respond_errno(n.id, errno.EPERM)
            dt = time.perf_counter_ns() - t0
            self.stats.notifications += 1
            self.stats.notify_ns += dt
            self.stats.notify_max_ns = max(self.stats.notify_max_ns, dt)

    def _judge(self, n: Notif) -> bool:
        """Returns True once the notification is answered."""
        from sandbox.kernel.execplan import PlanError, TaskView, open_exec, plan_exec
        from sandbox.kernel.unotify import SYSCALLS, read_args, read_exec

        names = SYSCALLS.get(n.arch)
        if names is not None and n.nr not in names[:2]:
            name = self.attrs.handles(n) if self.attrs is not None else None
            if name is not None and not self._profile_notifies(name):
                self.attrs.handle(self.listener, n)  # answers
                return True
            return self._syscall(n)
        req = read_exec(self.listener, n, args=False)
        if req.error:
            return self._unreadable(n, req)
        try:
            view = TaskView(n.pid)
        except OSError as e:
            if not self.listener.id_valid(n.id):
                return True
            d = Decision(Verdict.DENY, "exec.unreadable", f"cannot see the caller's root: {e}",
                         (), req.path_str)
            return self._refuse(n, d, None, req.cwd)
        with view:
            try:  # the kernel opens the file before it reads argv: ENOENT & co. come first
                first = open_exec(view, req.dirfd, req.path, req.flags)
            except PlanError as e:
                if self.listener.id_valid(n.id):
                    self.listener.respond_errno(n.id, e.errno)
                return True
            plan = None
            try:
                read_args(req, n)
                if not self.listener.id_valid(n.id):
                    return True  # the caller is gone (or interrupted): nothing to answer
                if req.too_large:  # the kernel's own answer; not a policy decision
                    self.listener.respond_errno(n.id, errno.E2BIG)
                    return True
                if req.error:
                    return self._unreadable(n, req)
                plan = plan_exec(view, req.dirfd, req.path, req.argv, req.envp, req.flags,
                                 first=first)  # owns `first` from here
            except PlanError as e:  # the kernel would refuse it the same way
                self.listener.respond_errno(n.id, e.errno)
                return True
            finally:
                if plan is None and first.fd >= 0:
                    os.close(first.fd)
            try:
                d, binary, ident = self._decide(req, view, plan)
                if not (d.allowed or self.mode == "monitor"):
                    return self._refuse(n, d, binary, req.cwd)
                if self.tracer is not None:  # before CONTINUE: the kernel checks this exec
                    self.tracer.expect(n.pid, plan.st_dev, plan.st_ino,
                                       self.tracer.hash_args(plan.argv, plan.envp),
                                       self.cgroup_id)
                if not self.listener.respond_continue(n.id):
                    if self.tracer is not None:
                        self.tracer.unexpect(n.pid)
                    return True
                if not d.allowed:
                    self.stats.would_block += 1
                self._allowed(n.pid, Judged(d, req.argv_str or [req.path_str], binary,
                                            req.path_str, ident))
                return True
            finally:
                plan.close()

    def _unreadable(self, n: Notif, req: ExecRequest) -> bool:
        if not self.listener.id_valid(n.id):
            return True
        d = Decision(Verdict.DENY, "exec.unreadable", req.error or "unreadable",
                     tuple(req.argv_str), req.path_str or None)
        return self._refuse(n, d, None, req.cwd)

    def _refuse(self, n: Notif, d: Decision, binary: str | None, cwd: str | None) -> bool:
        self.listener.respond_errno(n.id, errno.EPERM)
        self._blocked(d, Layer.EXEC_GATE, n.pid, binary, cwd)
        return True

    # -- the decision -------------------------------------------------------------------------
    def _decide(self, req: ExecRequest, view: TaskView, plan: ExecPlan
                ) -> tuple[Decision, str | None, tuple[int, int, int] | None]:
        """(decision, the binary as named in our view, identity if a fast-allow candidate)."""
        from sandbox.kernel.execplan import AT_EMPTY_PATH, AT_FDCWD, fd_target, name_in_our_view

        argv = req.argv_str or [req.path_str]
        f = plan.file
        target = fd_target(f.fd)
        fileless = None
        if req.path == b"" and req.flags & AT_EMPTY_PATH:
            fileless = 'execveat(fd, "", AT_EMPTY_PATH)'
        elif f.via_fd is not None:
            fileless = f"exec through a file descriptor ({req.path_str})"
        elif f.st.st_nlink == 0 or target.startswith("/memfd:"):
            fileless = f"exec of an unlinked or anonymous file ({req.path_str})"
        guess = None
        if fileless is None:
            base = req.cwd if req.dirfd == AT_FDCWD else _readlink(
                f"/proc/{req.pid}/fd/{req.dirfd}")
            if base is not None or req.path.startswith(b"/"):
                guess = os.path.normpath(os.path.join(base or "/", req.path_str))
        binary = name_in_our_view(view, f, guess)
        if fileless is not None:
            d = self._fileless(fileless, target, argv, binary)
            if d is not None:
                return d, target, None
        inj = _injection(req.envp_str, argv, binary or target)
        if inj is not None:
            return inj, binary or target, None
        if binary is None:
            return Decision(Verdict.DENY, "exec.unresolvable",
                            f"{req.path_str!r} names a file ({target}) that has no name in the "
                            "supervisor's view (another mount namespace?)", tuple(argv),
                            target), target, None
        env_path = next((e[5:] for e in req.envp_str if e.startswith("PATH=")), None)
        d = self._cached_check(argv, req.cwd, env_path, binary, f.st)
        ident = None
        if (d.allowed and not plan.script and fileless is None and guess == binary
                and req.dirfd == AT_FDCWD):
            ident = (f.st.st_dev, f.st.st_ino, f.st.st_ctime_ns)
        return d, d.binary or binary, ident

    def _cached_check(self, argv: list[str], cwd: str | None, env_path: str | None,
                      binary: str, st: os.stat_result) -> Decision:
        """check_argv, memoised per run on the exact inputs and the file's identity (device,
        inode, mtime, size): a replaced file is judged again. Cleared by set_profile."""
        if len(argv) > MEMO_ARGS:  # hashing the key would cost more than judging again
            return self.check(self.profile, argv, cwd=cwd, env_path=env_path, binary=binary)
        ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        key = (binary, ident, tuple(argv), cwd, env_path)
        hit = self._memo.get(key)
        if hit is None:
            hit = self.check(self.profile, argv, cwd=cwd, env_path=env_path, binary=binary)
            if len(self._memo) >= 4096:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def _fileless(self, why: str, target: str, argv: list[str], binary: str | None
                  ) -> Decision | None:
        assert self.profile is not None
        if not self.profile.exec.allowFileless:
            return Decision(Verdict.BLOCK, "exec.fileless",
                            f"{why} -> {target}: fileless execs are not allowed by this profile "
                            "(exec.allowFileless)", tuple(argv), target)
        if binary is not None and os.path.isfile(binary):
            return None  # judged as the file it points to
        return Decision(Verdict.ALLOW, "exec.allowFileless", f"{why} (allowed by the profile)",
                        tuple(argv), target)

    # -- other notified syscalls --------------------------------------------------------------
    def _profile_notifies(self, name: str) -> bool:
        """Does the profile itself send `name` to the supervisor (refused and recorded)?"""
        return any(r.action == "notify" and name in r.syscalls
                   for r in (self.profile.seccomp.rules if self.profile else ()))

    def _syscall(self, n: Notif) -> bool:
        """A syscall the profile sends to the supervisor (action notify): refused, recorded."""
        from sandbox.kernel.seccomp import syscall_name

        name = syscall_name(n.nr, n.arch)
        rid, why = "profile", "the profile's seccomp rules send it to the supervisor"
        for rule in self.profile.seccomp.rules if self.profile else ():
            if rule.action == "notify" and name in rule.syscalls:
                rid, why = rule.id or "profile", rule.reason or why
                break
        argv = _cmdline(n.pid)
        exe = _readlink(f"/proc/{n.pid}/exe")
        self.listener.respond_errno(n.id, errno.EPERM)
        d = Decision(Verdict.DENY, f"seccomp.{rid}", f"{name}: {why}", tuple(argv), exe)
        self._blocked(d, Layer.SECCOMP, n.pid, exe, _readlink(f"/proc/{n.pid}/cwd"),
                      observed=False)
        return True


def _injection(envp: list[str], argv: list[str], binary: str | None) -> Decision | None:
    for e in envp:
        name, eq, value = e.partition("=")
        if eq and value and name in INJECTION_VARS:
            return Decision(Verdict.BLOCK, f"env.injection:{name}",
                            f"{name} in the environment of an exec loads code into the program "
                            "before it starts", tuple(argv), binary)
    return None


def _readlink(p: str) -> str | None:
    try:
        return os.readlink(p)
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return []
    return [x.decode("utf-8", "surrogateescape") for x in data.rstrip(b"\0").split(b"\0")]
