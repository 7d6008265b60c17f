"""Spawn the sandboxed child with os.fork: cgroup, stdio, privileges, no_new_privs, Landlock,
seccomp, exec.
Why this module is long: the fork/exec path. spawn() and the child's fixed step order (STEPS) are
one security-critical sequence, from fork to execve, that must be read in one piece; the launcher
variant and the parent's side of the report pipe belong to it.

In the child, in this order (every failure is reported to the parent, never a traceback):
  1 PR_SET_PDEATHSIG(SIGKILL), then getppid() must still be the parent (else _exit)
  2 enter the run's leaf cgroup (write "0" to its cgroup.procs, opened by the parent)
  3 stdio (dup2), 4 chdir, 5 drop privileges (the capabilities in `drop_caps` from the bounding
  set while still root, the ambient set cleared, setgroups, setgid, setuid, then those
  capabilities from the effective, permitted and inheritable sets of a process that stays root;
  PDEATHSIG is cleared by a credential change, so it is set and checked again), 6 default
  signal dispositions and an empty mask, 7 close every other fd (not the Landlock rulesets),
  8 PR_SET_NO_NEW_PRIVS and PR_SET_CHILD_SUBREAPER, 9 landlock_restrict_self() with each
  ruleset the parent built (static layer, then the run's layer), closing them, 10 seccomp(
  SET_MODE_FILTER) with the raw BPF compiled by the parent (SECCOMP_FILTER_FLAG_NEW_LISTENER
  when notify), 11 send the listener fd to the parent over SCM_RIGHTS and close it (the
  sandboxed program never holds its own listener), 12 execve.

Reports go over a SOCK_SEQPACKET socketpair whose child end is O_CLOEXEC: a successful execve
closes it (EOF), a failed step sends (step, errno).

IMPORTANT (notify=True): once the filter is loaded, the child's own execve is a notified syscall.
spawn() therefore returns as soon as it holds the listener fd, BEFORE the child has exec'd; the
child waits in execve until the caller answers that first notification (CONTINUE or an errno).
An exec failure after that (ENOENT, EACCES, or the gate's EPERM) is read with
Child.exec_error() once the child has exited (exit code 127 for ENOENT, 126 otherwise).

PDEATHSIG fires when the *thread* that forked dies: fork from a long-lived thread. It only covers
the direct child; the run's cgroup (sandbox.kernel.cgroup) covers the rest of the tree.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import os
import platform
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import CommandNotFound, GlassbreakError, RunnerError

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(platform.machine(), -1)
SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(platform.machine(), -1)
SYS_LANDLOCK_RESTRICT_SELF = 446  # the generic number (x86_64, aarch64)
SYS_CAPGET, SYS_CAPSET = {"x86_64": (125, 126), "aarch64": (90, 91)}.get(platform.machine(),
                                                                        (-1, -1))
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 23, 24, 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LANDLOCK_FD = 6  # the launcher's fixed fd numbers for the rulesets: 6, 7, ...
# What a run never holds, root included (the supervisor's runs; docs/filesystem.md says what root
# loses): admin of the host, its kernel, its network stack, audit and MAC, other processes'
# memory and environment (CAP_SYS_ADMIN reads /proc/PID/environ past Landlock), file capabilities
# and the immutable flag, keeping a setuid/setgid bit through a write or a chmod (FSETID: without
# it the kernel clears them when a setuid file in a writable tree is written), the kernel log,
# the clock.
DROPPED_CAPS = {
    "fsetid": 4, "linux_immutable": 9, "net_admin": 12, "net_raw": 13, "sys_module": 16,
    "sys_rawio": 17, "sys_chroot": 18, "sys_ptrace": 19, "sys_admin": 21, "sys_boot": 22,
    "sys_time": 25,
    "audit_write": 29, "audit_control": 30, "setfcap": 31, "mac_override": 32, "mac_admin": 33,
    "syslog": 34, "audit_read": 37, "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}
DROP_MASK = sum(1 << c for c in DROPPED_CAPS.values())

STEPS = ("set PDEATHSIG", "check parent", "enter cgroup", "set up stdio", "chdir",
         "drop privileges", "reset signals", "close fds", "set no_new_privs",
         "enter its Landlock domain", "load seccomp filter", "send seccomp listener", "execve")
S_PDEATH, S_PARENT, S_CGROUP, S_STDIO, S_CHDIR, S_PRIVS, S_SIGNALS, S_CLOSE, S_NNP, S_LANDLOCK, \
    S_SECCOMP, S_SEND, S_EXEC = range(len(STEPS))
OK = -1
PID_REPORT = -2  # the launcher's first report: (PID_REPORT, the sandboxed child's pid)
_REPORT = struct.Struct("ii")
SPAWN_TIMEOUT = 10.0


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
        lib.prctl.restype = ctypes.c_int
        lib.syscall.restype = ctypes.c_long
        lib.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.signal.restype = ctypes.c_void_p
        _libc = lib
    return _libc


@dataclass
class Child:
    """The spawned child. `pidfd` and `listener_fd` belong to the caller (close them)."""

    pid: int
    pidfd: int
    listener_fd: int | None
    argv: list[str] = field(default_factory=list)
    _sock: socket.socket | None = field(default=None, repr=False)
    status: int | None = None
    landlock: bool = False  # the child entered a Landlock domain (EACCES at exec: the envelope)

    def poll(self) -> int | None:
        """The wait status if the child has exited (reaps it), else None."""
        if self.status is None:
            try:
                pid, st = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.status
            if pid:
                self.status = st
        return self.status

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit (pidfd readable); the wait status, or None on timeout."""
        if self.status is not None:
            return self.status
        _wait_readable(self.pidfd, timeout)
        return self.poll()

    def exit_code(self) -> int | None:
        """Shell-style code: the exit code, or 128+N for death by signal N."""
        st = self.poll()
        if st is None:
            return None
        return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)

    def send_signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def exec_error(self) -> GlassbreakError | None:
        """After the child exited: why its execve failed (None if it exec'd or sent nothing)."""
        if self._sock is None:
            return None
        try:
            data = self._sock.recv(64, socket.MSG_DONTWAIT)
        except (BlockingIOError, OSError):
            return None
        if len(data) != _REPORT.size:
            return None
        step, err = _REPORT.unpack(data)
        return _error(step, err, self.argv, self.landlock) if step != OK else None

    def close(self) -> None:
        for fd in (self.pidfd, self.listener_fd):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd, self.listener_fd = -1, None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _error(step: int, err: int, argv: list[str], landlock: bool = False) -> GlassbreakError:
    what = STEPS[step] if 0 <= step < len(STEPS) else f"step {step}"
    cmd = argv[0] if argv else "?"
    if step == S_EXEC and err == errno.ENOENT:
        return CommandNotFound(f"command not found: {cmd}",
                               hint="check the spelling and PATH, or give an absolute path")
    if step == S_EXEC and err == errno.EACCES and landlock:
        return RunnerError(f"{cmd} is not in the exec envelope: Landlock refused to execute it "
                           "(only the profile's exec.allow and safeBins programs, their "
                           "interpreters and the loader can run)",
                           hint="add the program to the profile's exec.allow, or run an allowed "
                           "program; a copy of an allowed program elsewhere cannot run")
    if step == S_EXEC:
        return RunnerError(f"cannot execute {cmd}: {os.strerror(err)}",
                           hint="check that the file is an executable the sandbox may run")
    hints = {
        S_CGROUP: "check that cgroup v2 is mounted and writable (`glassbreak doctor`)",
        S_CHDIR: "the working directory must exist and be accessible to the run's user",
        S_PRIVS: "dropping to another uid/gid needs root",
        S_SECCOMP: "the kernel refused the seccomp filter; run `glassbreak doctor`",
        S_NNP: "the kernel refused no_new_privs; run `glassbreak doctor`",
        S_LANDLOCK: "the kernel refused the Landlock domain; run `glassbreak doctor` "
        "(`--degraded landlock` runs without it, root only)",
    }
    return RunnerError(f"the sandboxed child failed to {what}: {os.strerror(err)} "
                       f"(errno {err})", hint=hints.get(step, "run `glassbreak doctor`"))


@dataclass
class ChildSpec:
    """Everything the child needs, collected from the run's layers before it is spawned (the
    order in which the child applies them is fixed by STEPS, not by who filled them in)."""

    argv: list[str]
    executable: str
    env: dict[str, str]
    cwd: str
    cgroup_procs: str | None = None
    filters: list[bytes] = field(default_factory=list)  # stacked; the last is the main one
    notify: bool = False  # the main filter returns a user-notification listener
    stdin: int = 0
    stdout: int = 1
    stderr: int = 2
    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None
    new_session: bool = False
    # Landlock rulesets to enter, in order, with each one's restrict_self flags
    landlock: list[tuple[int, int]] = field(default_factory=list)
    drop_caps: int = 0  # capability bits dropped from every set (bounding too)

    def spawn(self) -> Child:
        return spawn(self.argv, executable=self.executable, env=self.env, cwd=self.cwd,
                     cgroup_procs=self.cgroup_procs,
                     bpf=self.filters[-1] if self.filters else None, notify=self.notify,
                     stdin=self.stdin, stdout=self.stdout, stderr=self.stderr, uid=self.uid,
                     gid=self.gid, groups=self.groups, new_session=self.new_session,
                     extra_bpf=tuple(self.filters[:-1]), landlock=tuple(self.landlock),
                     drop_caps=self.drop_caps)


def spawn(argv: list[str], *, executable: str, env: dict[str, str], cwd: str,
          cgroup_procs: str | None, bpf: bytes | None, notify: bool,
          stdin: int = 0, stdout: int = 1, stderr: int = 2,
          uid: int | None = None, gid: int | None = None, groups: list[int] | None = None,
          new_session: bool = False, extra_bpf: tuple[bytes, ...] = (),
          landlock: tuple[tuple[int, int], ...] = (), drop_caps: int = 0) -> Child:
    """Fork the sandboxed child; returns once it holds the filter (see the module doc)."""
    if not argv:
        raise RunnerError("empty command", hint="give the command after `--`")
    if len(landlock) > 8:
        raise RunnerError("too many Landlock layers", hint="internal error")
    if notify and not bpf:
        raise RunnerError("notify=True needs a seccomp filter", hint="internal error")
    libc = _get_libc()
    prog = None
    buf = None
    if bpf:
        if len(bpf) % 8 or not 0 < len(bpf) // 8 <= 4096:
            raise RunnerError(f"bad seccomp program ({len(bpf)} bytes)", hint="internal error")
        if SYS_SECCOMP < 0:
            raise RunnerError(f"unsupported architecture {platform.machine()}",
                              hint="glassbreak supports x86_64 and aarch64")
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER if notify else 0
    # stacked filters (loaded before the main one), kept alive with their buffers
    extras: list[tuple[Any, Any]] = []
    for blob in extra_bpf:
        if len(blob) % 8 or not 0 < len(blob) // 8 <= 4096:
            raise RunnerError(f"bad seccomp program ({len(blob)} bytes)", hint="internal error")
        ebuf = ctypes.create_string_buffer(blob, len(blob))
        extras.append((ebuf, _SockFprog(len(blob) // 8, ctypes.cast(ebuf, ctypes.c_void_p))))
    exe_b = os.fsencode(executable)
    argv_b = [os.fsencode(a) for a in argv]
    env_b = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    cwd_b = os.fsencode(cwd)
    all_signals = [s for s in range(1, 65) if s not in (signal.SIGKILL, signal.SIGSTOP)]
    dfl_action = ctypes.create_string_buffer(64)  # a zeroed kernel sigaction: SIG_DFL
    ok_msg = _REPORT.pack(OK, 0)
    parent = os.getpid()
    ll_fds = [fd for fd, _ in landlock]
    cap_bits = [c for c in range(64) if drop_caps >> c & 1]
    cap_mask = (~drop_caps) & 0xFFFFFFFF, (~drop_caps >> 32) & 0xFFFFFFFF
    cap_hdr = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    cap_data = ctypes.create_string_buffer(24)  # two {effective, permitted, inheritable}
    am_root = os.geteuid() == 0

    try:
        cg_fd = os.open(cgroup_procs, os.O_WRONLY | os.O_CLOEXEC) if cgroup_procs else -1
    except OSError as e:
        raise RunnerError(f"cannot open the run's cgroup {cgroup_procs}: {e.strerror}",
                          hint="check cgroup v2 with `glassbreak doctor`") from e
    psock, csock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if csock.fileno() < 3:
        moved = fcntl.fcntl(csock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
        csock.close()
        csock = socket.socket(fileno=moved)
    cfd = csock.fileno()
    nosig = socket.MSG_NOSIGNAL

    def report(step: int, err: int) -> None:
        try:
            csock.send(_REPORT.pack(step, err), nosig)
        except OSError:
            pass

    launcher = launcher_path()
    if launcher is not None:
        cg_dir = -1
        try:
            # the launcher clones the child straight into the cgroup (its directory's fd)
            if cgroup_procs:
                cg_dir = os.open(os.path.dirname(cgroup_procs),
                                 os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            pid = _spawn_launcher(
                launcher, parent=parent, notify=notify, new_session=new_session, uid=uid,
                gid=gid, groups=groups, cwd_b=cwd_b, exe_b=exe_b, argv_b=argv_b, env_b=env_b,
                filters=[*extra_bpf, *([bpf] if bpf else [])], stdio=(stdin, stdout, stderr),
                csock=cfd, cg_fd=cg_dir, landlock=landlock, drop_caps=drop_caps)
        except OSError as e:
            if cg_dir >= 0:
                os.close(cg_dir)
            psock.close()
            csock.close()
            if cg_fd >= 0:
                os.close(cg_fd)
            raise RunnerError(f"cannot start the launcher {launcher}: {e.strerror}",
                              hint="re-run `bash scripts/setup.sh`, or set "
                              "GLASSBREAK_NO_LAUNCHER=1 to spawn in Python") from e
        if cg_dir >= 0:
            os.close(cg_dir)
        return _parent(pid, psock, csock, cg_fd, argv, notify, launcher=True,
                       landlock=bool(landlock))
    try:
        pid = os.fork()
    except OSError as e:
        psock.close()
        csock.close()
        if cg_fd >= 0:
            os.close(cg_fd)
        raise RunnerError(f"fork failed: {e.strerror}", hint="the system is out of processes "
                          "or memory; retry later") from e
    if pid == 0:  # ---- the child: no imports, no logging, nothing that can block -----------
        step = S_PDEATH
        try:
            gc.disable()
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                report(step, ctypes.get_errno())
                os._exit(125)
            step = S_PARENT
            if os.getppid() != parent:
                os._exit(125)
            step = S_CGROUP
            if cg_fd >= 0:
                os.write(cg_fd, b"0")
                os.close(cg_fd)
            step = S_STDIO
            tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in (stdin, stdout, stderr)]
            for i, fd in enumerate(tmp):
                os.dup2(fd, i)
            step = S_CHDIR
            os.chdir(cwd_b)
            step = S_PRIVS
            if cap_bits and am_root:
                for c in cap_bits:  # needs CAP_SETPCAP: before any setuid
                    if libc.prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1 and \
                            libc.prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 and \
                            ctypes.get_errno() != errno.EPERM:
                        report(step, ctypes.get_errno())
                        os._exit(125)
                    # EPERM: a supervisor without CAP_SETPCAP (deploy/) cannot shrink the
                    # bounding set; the sets below are still cleared, and no_new_privs keeps
                    # an exec from regaining anything
                if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
            if uid is not None or gid is not None or groups is not None:
                if groups is not None or uid is not None:
                    os.setgroups(groups if groups is not None else ([gid] if gid is not None
                                                                    else []))
                if gid is not None:
                    os.setgid(gid)
                if uid is not None:
                    os.setuid(uid)
                if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
                if os.getppid() != parent:
                    os._exit(125)
            if cap_bits and am_root and os.geteuid() == 0:  # still root: drop them for good
                if libc.syscall(SYS_CAPGET, cap_hdr, cap_data) != 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
                words = list(struct.unpack("6I", cap_data.raw))
                for i in range(6):
                    words[i] &= cap_mask[i // 3]
                ctypes.memmove(cap_data, struct.pack("6I", *words), 24)
                if libc.syscall(SYS_CAPSET, cap_hdr, cap_data) != 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
            if new_session:
                os.setsid()
            step = S_SIGNALS
            for s in all_signals:
                # the raw syscall: glibc's signal() refuses its reserved signals 32 and 33, so
                # an ignored one in the supervisor would be inherited across exec
                if SYS_RT_SIGACTION < 0 or libc.syscall(SYS_RT_SIGACTION, s, dfl_action,
                                                        None, 8) != 0:
                    libc.signal(s, None)  # SIG_DFL
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            step = S_CLOSE
            lo = 3
            for keep in sorted({cfd, *ll_fds}):
                os.closerange(lo, keep)
                lo = keep + 1
            os.closerange(lo, 0x7FFFFFFF)
            step = S_NNP
            # The run's top-level process is the subreaper of its tree: orphans stay in the
            # run's session, so no process group of the tree becomes orphaned while a member
            # is stopped, and the kernel never sends it SIGCONT (which would release an exec
            # held by the eBPF tracer). The seccomp guard refuses clearing it.
            if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
                    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                report(step, ctypes.get_errno())
                os._exit(125)
            step = S_LANDLOCK
            for lfd_, lflags in landlock:
                if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, lfd_, lflags) != 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
                os.close(lfd_)
            step = S_SECCOMP
            for _ebuf, eprog in extras:
                if libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0,
                                ctypes.byref(eprog)) < 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
            if prog is not None:
                lfd = libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags,
                                   ctypes.byref(prog))
                if lfd < 0:
                    report(step, ctypes.get_errno())
                    os._exit(125)
                step = S_SEND
                if notify:
                    socket.send_fds(csock, [ok_msg], [lfd], nosig)
                    os.close(lfd)
                else:
                    csock.send(ok_msg, nosig)
            else:
                csock.send(ok_msg, nosig)
            step = S_EXEC
            os.execve(exe_b, argv_b, env_b)  # noqa: S606
        except OSError as e:
            report(step, e.errno or errno.EIO)
            os._exit(127 if (step == S_EXEC and e.errno == errno.ENOENT) else 126
                     if step == S_EXEC else 125)
        except BaseException:  # noqa: BLE001 - the child must never unwind into the caller
            report(step, errno.EIO)
            os._exit(125)
        os._exit(125)  # not reached

    # ---- the parent -------------------------------------------------------------------------
    del buf, prog
    return _parent(pid, psock, csock, cg_fd, argv, notify, landlock=bool(landlock))


def _parent(pid: int, psock: socket.socket, csock: socket.socket, cg_fd: int, argv: list[str],
            notify: bool, launcher: bool = False, landlock: bool = False) -> Child:
    csock.close()
    if cg_fd >= 0:
        os.close(cg_fd)
    if launcher:
        pid = _launched_pid(pid, psock, argv)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        psock.close()
        _reap(pid)
        raise RunnerError(f"pidfd_open failed: {e.strerror}", hint="needs Linux >= 5.3") from e
    child = Child(pid=pid, pidfd=pidfd, listener_fd=None, argv=list(argv), _sock=psock,
                  landlock=landlock)
    try:
        first, lfd = _recv(psock, pidfd, pid)
        if first is None:
            raise RunnerError("the sandboxed child died before it was ready",
                              hint="run `glassbreak doctor`; the kernel may lack a feature")
        if first[0] != OK:
            raise _error(first[0], first[1], argv, landlock)
        child.listener_fd = lfd
        if notify and lfd is None:
            raise RunnerError("the child did not pass its seccomp listener", hint="internal error")
        if not notify:  # nothing waits on us: the exec result comes now (EOF = exec'd)
            nxt, _ = _recv(psock, pidfd, pid)
            if nxt is not None and nxt[0] != OK:
                raise _error(nxt[0], nxt[1], argv, landlock)
        return child
    except BaseException:
        child.send_signal(signal.SIGKILL)
        child.status = _reap(pid)
        child.close()
        raise


def _launched_pid(lpid: int, psock: socket.socket, argv: list[str]) -> int:
    """The launcher's first report is the sandboxed child's pid (the launcher may have cloned
    it into the run's cgroup as our child, then exited): reap the launcher if so."""
    try:
        lpidfd = os.pidfd_open(lpid)
    except OSError as e:
        psock.close()
        _reap(lpid)
        raise RunnerError(f"pidfd_open failed: {e.strerror}", hint="needs Linux >= 5.3") from e
    try:
        first, fd = _recv(psock, lpidfd, lpid)
        if fd is not None:
            os.close(fd)
        if first is None or first[0] != PID_REPORT:
            try:
                os.kill(lpid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(lpid)
            psock.close()
            if first is None:
                raise RunnerError("the launcher died before it started the command",
                                  hint="run `glassbreak doctor`; or GLASSBREAK_NO_LAUNCHER=1")
            raise _error(first[0], first[1], argv)
        if first[1] != lpid:
            _reap(lpid)  # it exited right after the clone
        return first[1]
    finally:
        os.close(lpidfd)


def launcher_path() -> str | None:
    """The native launcher (scripts/setup.sh builds it next to the venv's python), or None:
    then the child's steps run in Python after os.fork (GLASSBREAK_NO_LAUNCHER=1 forces that;
    GLASSBREAK_LAUNCHER=PATH names another build)."""
    if os.environ.get("GLASSBREAK_NO_LAUNCHER") == "1":
        return None
    path = os.environ.get("GLASSBREAK_LAUNCHER") or os.path.join(
        os.path.dirname(sys.executable), "glassbreak-launch")
    return path if os.access(path, os.X_OK) else None


def _spawn_launcher(launcher: str, *, parent: int, notify: bool, new_session: bool,
                    uid: int | None, gid: int | None, groups: list[int] | None, cwd_b: bytes,
                    exe_b: bytes, argv_b: list[bytes], env_b: dict[bytes, bytes],
                    filters: list[bytes], stdio: tuple[int, int, int], csock: int,
                    cg_fd: int, landlock: tuple[tuple[int, int], ...] = (),
                    drop_caps: int = 0) -> int:
    """posix_spawn (vfork) the launcher with the spec in a sealed memfd; see
    native/glassbreak_launch.c for the fd layout and the spec format."""
    fields = [b"GBL2", b"%d" % parent, b"1" if notify else b"0", b"1" if new_session else b"0",
              b"" if uid is None else b"%d" % uid, b"" if gid is None else b"%d" % gid,
              b"-" if groups is None else b",".join(b"%d" % g for g in groups),
              b"%d" % drop_caps, b"%d" % len(landlock), *(b"%d" % f for _, f in landlock),
              cwd_b, exe_b, b"%d" % len(argv_b), *argv_b, b"%d" % len(env_b),
              *(k + b"=" + v for k, v in env_b.items()), b"%d" % len(filters)]
    if any(b"\0" in f for f in fields):
        raise RunnerError("the command, its environment or cwd contains a NUL byte",
                          hint="remove the NUL byte; execve cannot pass it")
    spec = b"\0".join(fields) + b"\0" + b"".join(b"%d\0" % len(f) + f for f in filters)
    mfd = os.memfd_create("glassbreak-spec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    high: list[int] = []
    try:
        _write_all(mfd, spec)
        fcntl.fcntl(mfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW |
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        # every source above the targets 0-5 and the rulesets' 6, 7, ..., so the dup2 actions
        # cannot clobber each other
        srcs = [(fd, i) for i, fd in enumerate([*stdio, csock, mfd])]
        srcs += [(cg_fd, 5)] if cg_fd >= 0 else []
        srcs += [(fd, LANDLOCK_FD + i) for i, (fd, _) in enumerate(landlock)]
        actions = []
        for fd, target in srcs:
            high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16))
            actions.append((os.POSIX_SPAWN_DUP2, high[-1], target))
        return os.posix_spawn(launcher, [launcher], {}, file_actions=actions)
    finally:
        for fd in (*high, mfd):
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _recv(sock: socket.socket, pidfd: int, pid: int) -> tuple[tuple[int, int] | None, int | None]:
    """One report (step, errno) and an optional fd; (None, None) on EOF. Never hangs."""
    deadline = time.monotonic() + SPAWN_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunnerError(f"the sandboxed child did not get ready within {SPAWN_TIMEOUT:.0f} s",
                              hint="the system may be overloaded; retry")
        if not _wait_readable(sock.fileno(), min(left, 0.5)):
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 64, 1)
        except InterruptedError:
            continue
        if not data:
            for fd in fds:
                os.close(fd)
            return None, None
        if len(data) != _REPORT.size:
            for fd in fds:
                os.close(fd)
            raise RunnerError("garbled report from the sandboxed child", hint="internal error")
        step, err = _REPORT.unpack(data)
        return (step, err), (fds[0] if fds else None)


def _wait_readable(fd: int, timeout: float | None) -> bool:
    """poll(), not select(): a long-lived daemon has fds above select()'s 1,024 limit."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))


def _reap(pid: int) -> int | None:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


__all__ = ["Child", "ChildSpec", "spawn", "STEPS"]
