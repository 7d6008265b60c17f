"""A root run's chmod, chown and utime: performed by the supervisor when the target is a file the
run may write, refused (EPERM, recorded) otherwise. docs/filesystem.md, "What root loses".

Landlock has no right for modes, owners or times. A root run's file-attribute syscalls therefore
reach the supervisor as seccomp user-notifications (the exec gate's listener; the native
responder forwards every notification that is not a fast-allowed exec). For each one
(sandbox.kernel.fileattr does the kernel work):

  1. the call is decoded and its target opened O_PATH in the caller's view, race-free;
  2. the decision is on the OPENED object's identity: it must lie where the run's per-run
     Landlock layer grants writing (the union of the rules on the object and on each directory
     above it, as Landlock computes it, keyed by the (st_dev, st_ino) of the inodes the ruleset
     holds: WRITE_FILE for a file or symlink, MAKE_REG for a directory), and neither it nor a
     directory above it may be one of glassbreak's trust anchors (compared by identity: a hard
     link or a bind mount of an anchor is the anchor). Only regular files and directories (and
     symlinks themselves, for lchown and utimensat(AT_SYMLINK_NOFOLLOW)); nothing on proc,
     sysfs, cgroup and the other kernel filesystems;
  3. chmod never ADDS a setuid or setgid bit (bits already set may stay or go); chown may give
     any owner (the kernel clears setuid/setgid and file capabilities on chown); setxattr is
     never performed (POSIX ACLs answer EOPNOTSUPP, so that `cp -p` falls back to chmod; any
     other name EPERM);
  4. the kernel's own permission rules for the caller's credentials decide the rest (a process
     of the run that became uid 1000 cannot chmod root's files), then the call is performed on
     the opened fd and its result is the answer (never CONTINUE).

Extended attributes stay refused (security.capability would be a privilege).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sandbox.kernel import fileattr as FA
from sandbox.kernel import landlock as L

if TYPE_CHECKING:
    from sandbox.kernel.unotify import Listener, Notif

FAMILY_ACCESS = {"mode": "attr.mode", "owner": "attr.owner", "times": "attr.times",
                 "xattr": "attr.xattr"}


@dataclass(frozen=True)
class Refusal:
    """A refused call, for the report (sandbox.run.layers.LandlockLayer)."""

    syscall: str
    family: str  # mode | owner | times
    path: str  # the kernel's name of the object, else the path as the caller gave it
    kind: str  # outside | anchor | type | setid | unresolvable | internal
    detail: str
    pid: int
    anchor: tuple[str, str] | None = None  # (the anchor's path, what it is)
    argv: tuple[str, ...] = ()  # the caller's, read before it was answered
    exe: str | None = None


@dataclass
class AttrStats:
    performed: int = 0
    refused: int = 0
    failed: int = 0  # the kernel's own answer (ENOENT, EPERM of the caller's credentials...)
    ns: int = 0
    max_ns: int = 0

    def as_dict(self) -> dict[str, float]:
        n = self.performed + self.refused + self.failed
        return {"performed": self.performed, "refused": self.refused, "failed": self.failed,
                "avg_us": round(self.ns / max(n, 1) / 1e3, 1),
                "max_us": round(self.max_ns / 1e3, 1)}


@dataclass
class AttrGate:
    """One root run's mediator. `writable`: (st_dev, st_ino) -> the access its per-run Landlock
    layer's rules grant on that inode; `protected`: (path, why, hidden) of the trust anchors;
    `report`: a refusal, recorded (and escalated) by the filesystem layer."""

    writable: Mapping[tuple[int, int], int]
    protected: Sequence[tuple[str, str, bool]]
    report: Callable[[Refusal], None]
    stats: AttrStats = field(default_factory=AttrStats)
    _anchors: dict[tuple[int, int], tuple[str, str]] | None = None
    _view: FA.SameView | None = None
    _by_nr: dict[int, FA.CallSpec] = field(default_factory=dict)
    _arch: int = 0

    def __post_init__(self) -> None:
        from sandbox.kernel.seccomp import _lib
        from sandbox.kernel.unotify import _native_arch

        sc = _lib()
        self._arch = _native_arch()
        for spec in FA.CALLS:
            nr = sc.resolve_syscall(sc.Arch.NATIVE, spec.name)
            if nr >= 0:
                self._by_nr[nr] = spec

    def handles(self, n: Notif) -> str | None:
        """The syscall's name when it is one of ours."""
        spec = self._by_nr.get(n.nr) if n.arch == self._arch else None
        return spec.name if spec is not None else None

    def handle(self, listener: Listener, n: Notif) -> None:
        """Decide, perform and answer one notification (always answered)."""
        t0 = time.perf_counter_ns()
        spec = self._by_nr[n.nr]
        try:
            err, refusal = self._handle(listener, n, spec)
        except FA.KernelAnswer as e:
            err, refusal = e.errno, None
        except FA.Unresolvable as e:
            err, refusal = errno.EPERM, Refusal(spec.name, spec.family, "?", "unresolvable",
                                                str(e), n.pid)
        except Exception as e:  # noqa: BLE001 - fail closed: refuse, and say why
            err, refusal = errno.EPERM, Refusal(spec.name, spec.family, "?", "internal",
                                                f"{type(e).__name__}: {e}", n.pid)
        if err is None:  # the caller is gone
            return
        if refusal is not None:  # who asked (before the answer lets it go on, or exec)
            refusal = replace(refusal, argv=tuple(_cmdline(n.pid)),
                              exe=_readlink(f"/proc/{n.pid}/exe"))
        if err == 0:
            listener.respond_ok(n.id)
            self.stats.performed += 1
        else:
            listener.respond_errno(n.id, err)
            if refusal is None:
                self.stats.failed += 1
            else:
                self.stats.refused += 1
        dt = time.perf_counter_ns() - t0
        self.stats.ns += dt
        self.stats.max_ns = max(self.stats.max_ns, dt)
        if refusal is not None:
            self.report(refusal)

    def _handle(self, listener: Listener, n: Notif, spec: FA.CallSpec
                ) -> tuple[int | None, Refusal | None]:
        if spec.family == "xattr":  # refused whatever the target; not recorded (as before)
            try:
                mem_x = FA.Mem(n.pid)
            except OSError:
                return errno.EPERM, None
            try:
                return FA.xattr_answer(n, mem_x), None
            finally:
                mem_x.close()
        mem = None
        if spec.path is not None or spec.family == "times":
            try:
                mem = FA.Mem(n.pid)
            except OSError as e:
                if not listener.id_valid(n.id):
                    return None, None  # the caller is gone
                raise FA.Unresolvable(f"cannot read the caller's memory: {e.strerror}") from e
        try:
            call = FA.decode(spec, n, mem)
        finally:
            if mem is not None:
                mem.close()
        if self._view is None:
            self._view = FA.SameView.own()
        try:
            self._view.check(n.pid)
            creds = FA.creds_of(n.pid)
        except FA.Unresolvable as e:
            return errno.EPERM, Refusal(spec.name, spec.family, call.shown(), "unresolvable",
                                        str(e), n.pid)
        try:
            fd = FA.resolve(call)
        except FA.Unresolvable as e:
            return errno.EPERM, Refusal(spec.name, spec.family, call.shown(), "unresolvable",
                                        str(e), n.pid)
        try:
            # the strings were read and the handles opened: still the caller's (no reused tid)?
            if not listener.id_valid(n.id):
                return None, None
            return self._decide(call, fd, creds, n.pid)
        finally:
            os.close(fd)

    def _decide(self, call: FA.AttrCall, fd: int, creds: FA.Creds, pid: int
                ) -> tuple[int, Refusal | None]:
        assert self._view is not None
        spec = call.spec

        def refuse(kind: str, path: str, detail: str,
                   anchor: tuple[str, str] | None = None) -> tuple[int, Refusal]:
            return errno.EPERM, Refusal(spec.name, spec.family, path, kind, detail, pid, anchor)

        st = os.fstat(fd)
        try:
            placed = FA.ancestry(fd, st, self._view.root)
        except FA.Unresolvable as e:
            return refuse("unresolvable", call.shown(), str(e))
        name = placed.name
        anchors = self._anchor_ids()
        for ident in (placed.ident, *placed.ancestors):
            hit = anchors.get(ident)
            if hit is not None:
                return refuse("anchor", name, hit[1], hit)
        acc = self.writable.get(placed.ident, 0)
        for ident in placed.ancestors:
            acc |= self.writable.get(ident, 0)
        is_dir = stat.S_ISDIR(st.st_mode)
        if not acc & (L.FS_MAKE_REG if is_dir else L.FS_WRITE_FILE):
            return refuse("outside", name, "not beneath the run's writable trees")
        if stat.S_ISLNK(st.st_mode):
            if spec.family == "mode":
                return errno.EOPNOTSUPP, None  # the kernel's answer for a symlink's mode
        elif not (stat.S_ISREG(st.st_mode) or is_dir):
            return refuse("type", name, f"a {_kind(st.st_mode)}, not a regular file or "
                          "directory")
        fs = FA.PSEUDO_FS.get(FA.fs_type(fd))
        if fs is not None:
            return refuse("type", name, f"a file of the kernel's {fs} filesystem")
        err, mode = FA.permitted(call, st, creds)
        if err:
            return err, None
        if spec.family == "mode" and mode & FA.SETID & ~st.st_mode:
            return refuse("setid", name, f"mode {mode:04o} would add the "
                          f"{'setuid' if mode & stat.S_ISUID & ~st.st_mode else 'setgid'} bit")
        return FA.perform(call, fd, mode), None

    def _anchor_ids(self) -> dict[tuple[int, int], tuple[str, str]]:
        """The trust anchors' identities (stat'ed at the run's first mediated call)."""
        if self._anchors is None:
            out: dict[tuple[int, int], tuple[str, str]] = {}
            for path, why, _hidden in self.protected:
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                out.setdefault((st.st_dev, st.st_ino), (path, why))
            self._anchors = out
        return self._anchors


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return what
    return "special file"


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return []
    return [x.decode("utf-8", "surrogateescape") for x in data.rstrip(b"\0").split(b"\0") if
            data]


def _readlink(p: str) -> str | None:
    try:
        return os.readlink(p)
    except OSError:
        return None
