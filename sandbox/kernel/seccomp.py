"""Compile a profile's SeccompPolicy into a raw seccomp BPF program (libseccomp via pyseccomp).
Why this module is long: compile_filter (~150 lines) is the one place a profile becomes a seccomp
program, and the order in which it adds rules is part of what it means; the libseccomp binding and
the syscall-name checks it needs are beside it.

Compiled in the PARENT; the child only loads the bytes (sandbox.kernel.child). Semantics:

- actions: allow, log, trap, errno:NAME / errno:N, kill_process; `kill` and `kill_thread` are
  mapped to kill_process (never leave half a process running). `notify` answers with
  SECCOMP_RET_USER_NOTIF (only meaningful with a listener, i.e. exec_notify=True).
- several rules naming the same syscall: the strictest action wins
  (kill_process > trap > errno > notify > log > allow). An unconditional rule covers every
  argument, so a weaker unconditional rule next to a stricter argument rule is a ProfileError.
- `notify`: the supervisor answers (sandbox.run.execjudge): for a syscall other than an exec it
  refuses it with EPERM and records a `blocked` event (layer seccomp, rule seccomp.<rule id>),
  the way the base profile refuses chroot and pidfd_getfd. Without a listener (exec_notify=False)
  a notify rule is plain errno:EPERM (refused, not recorded).
- exec_notify: execve and execveat answer SECCOMP_RET_USER_NOTIF (the exec gate decides) unless
  the profile is stricter for them.
- clone3 fails with ENOSYS (its flags are behind a pointer that seccomp cannot read, so libc falls
  back to clone, whose flags are filtered).
- guard_root (runs as uid 0): the file-attribute syscalls Landlock has no right for fail with
  EPERM: chmod, chown, extended-attribute writes, and utime with explicit times (root in a
  Landlock domain could otherwise chmod /etc/shadow, set security.capability on a system binary
  or forge timestamps; setting the current time, `touch`, stays: the kernel allows that to any
  writer). The ones newer than libseccomp (setxattrat, removexattrat, file_setattr) are added
  by number. Where the profile has its own rules on one of them, the guard goes into a second,
  stacked filter (CompiledFilter.extra: the kernel runs both and takes the stricter answer).
  mediate_root (with guard_root and the listener): chmod, chown and utime (ROOT_MEDIATED) go to
  the supervisor instead (notify), which performs them when the target is a file the run may
  write (sandbox.run.attrgate); setxattr, lsetxattr and fsetxattr too, to be refused there
  (POSIX ACLs with EOPNOTSUPP: `cp -p` then sets the mode with chmod; any other name EPERM);
  the other extended-attribute calls stay EPERM here, and so do the mediated calls that land in
  the stacked filter (a second filter has no listener).
  Creating a file with a setuid or setgid bit (open, openat, creat, mknod, mknodat with
  S_ISUID or S_ISGID in the mode) fails with EPERM for root; openat2, whose mode seccomp cannot
  read, with ENOSYS (callers fall back to openat).
- foreign arches: only the native arch is in the filter, the bad-arch action is KILL_PROCESS,
  and libseccomp's x86_64 program sends x32 syscall numbers (nr >= 0x40000000) to the bad-arch
  action too (visible in the BPF, not in libseccomp's pseudo code).
"""

from __future__ import annotations

import errno as _errno
import functools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.errors import ProfileError

if TYPE_CHECKING:
    from sandbox.policy.profile import ArgCondition, SeccompPolicy

RANK = {"allow": 0, "log": 1, "notify": 2, "errno": 3, "trap": 4, "kill_process": 5}
OPS = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}


ROOT_GUARDS = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
               "fchownat", "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "removexattr",
               "lremovexattr", "fremovexattr", "removexattrat", "file_setattr")
# utime family: refused when the times argument (index) is not NULL (NULL = now, like touch)
ROOT_TIME_GUARDS = {"utime": 1, "utimes": 1, "futimesat": 2, "utimensat": 2}
# the generic syscall table (x86_64 and aarch64 share numbers from 424 on)
ROOT_GUARD_NUMBERS = {"fchmodat2": 452, "setxattrat": 463, "removexattrat": 466,
                      "file_setattr": 469}
ROOT_GUARD_REASON = "root in a run may not change modes, owners, extended attributes or times " \
    "(Landlock has no right for them)"
# mediate_root: performed by the supervisor when the target is a file the run may write
ROOT_MEDIATED = ("chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
                 "fchownat", *ROOT_TIME_GUARDS)
ROOT_MEDIATE_REASON = "root's chmod, chown and utime are performed by the supervisor, only on " \
    "files the run may write (Landlock has no right for them)"
# mediate_root: refused by the supervisor, POSIX ACLs with EOPNOTSUPP (cp -p, coreutils: set the
# mode with chmod instead), every other name with EPERM (security.capability, ...)
ROOT_XATTR_NOTIFY = ("setxattr", "lsetxattr", "fsetxattr")
ROOT_XATTR_REASON = "extended attributes are refused in a root run (file capabilities); POSIX " \
    "ACLs answer EOPNOTSUPP, so that tools set the mode with chmod instead"
# a file created with a setuid/setgid bit (index of the mode argument)
ROOT_SETID_CREATE = {"open": 2, "openat": 3, "creat": 1, "mknod": 1, "mknodat": 2}
ROOT_SETID_REASON = "root in a run may not create setuid or setgid files"


@dataclass(frozen=True)
class SyscallRule:
    """One row of the compiled table (for `profile explain`)."""

    syscall: str
    action: str
    condition: str = ""
    source: str = "profile"  # the profile rule id | exec-gate | clone3
    reason: str | None = None


@dataclass(frozen=True)
class CompiledFilter:
    bpf: bytes
    notify: bool
    default_action: str
    syscalls: tuple[SyscallRule, ...] = field(default_factory=tuple)
    # filters stacked under the main one (loaded first); none today (the child still loads them)
    extra: tuple[bytes, ...] = ()
    _build: Any = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def pfc(self) -> str:
        """libseccomp's pseudo filter code (plus the x32 note it does not print)."""
        flt = self._build()
        text = _export(flt, pfc=True).decode()
        return text + "# x32 syscall numbers (nr >= 0x40000000): invalid architecture action\n"

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8


_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


_LIB: Any = None
_LIB_LOCK = threading.Lock()


def _lib() -> Any:
    """Import pyseccomp; its import-time ctypes.util.find_library() runs ldconfig/gcc
    subprocesses (~15 ms on the cold path), so the two well-known sonames are tried with a
    plain dlopen first and the slow search is the fallback. Under a lock: a daemon's first
    concurrent runs all get here at once, and a thread that found the module in sys.modules
    while another was still importing it got it half-initialized (and the find_library patch
    of one thread could be restored by another)."""
    if _LIB is not None:
        return _LIB
    with _LIB_LOCK:
        return _import_lib()


def _import_lib() -> Any:
    global _LIB
    if _LIB is not None:
        return _LIB
    import ctypes
    import ctypes.util

    slow = ctypes.util.find_library

    def fast(name: str) -> str | None:
        so = _SONAMES.get(name)
        if so:
            try:
                ctypes.CDLL(so)
                return so
            except OSError:
                pass
        return slow(name)

    ctypes.util.find_library = fast
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as e:
        from sandbox.errors import KernelFeatureMissing

        raise KernelFeatureMissing(
            f"libseccomp is not usable ({e})",
            hint="install libseccomp2 and the pyseccomp package (`make setup`)",
        ) from e
    finally:
        ctypes.util.find_library = slow
    _LIB = pyseccomp
    return pyseccomp


def check_syscall_names(names: Iterable[str]) -> list[str]:
    """Validate syscall names for the native arch; unknown names raise ProfileError (all listed).

    Names of syscalls that exist on other arches only (libseccomp pseudo numbers) are accepted:
    a rule for them is a no-op here.
    """
    sc = _lib()
    out: list[str] = []
    bad: list[str] = []
    for n in names:
        if n in out:
            continue
        if not n or sc.resolve_syscall(sc.Arch.NATIVE, n) == -1:
            bad.append(n)
        else:
            out.append(n)
    if bad:
        raise ProfileError(
            "unknown syscall name" + ("s" if len(bad) > 1 else "") + ": "
            + ", ".join(repr(b) for b in bad),
            hint="check the spelling; `ausyscall --dump` lists this machine's syscalls",
        )
    return out


def syscall_name(nr: int, arch: int | None = None) -> str:
    """Syscall number -> name for `arch` (AUDIT_ARCH_* value; native when None)."""
    sc = _lib()
    try:
        return str(sc.resolve_syscall(arch or sc.Arch.NATIVE, nr).decode())
    except (ValueError, OSError):
        return f"syscall_{nr}"


def _action(text: str, sc: Any) -> tuple[str, int]:
    """Profile action text -> (rank key, libseccomp action value)."""
    if text in ("kill_process", "kill", "kill_thread"):
        return "kill_process", sc.KILL_PROCESS
    if text == "allow":
        return "allow", sc.ALLOW
    if text == "log":
        return "log", sc.LOG
    if text == "trap":
        return "trap", sc.TRAP
    if text == "notify":
        return "notify", sc.NOTIFY
    if text.startswith("errno:"):
        val = text[6:]
        if val.isdigit():
            num = int(val)
        else:
            num = getattr(_errno, val, -1)
            if not isinstance(num, int) or num < 0 or val not in _errno.errorcode.values():
                raise ProfileError(f"unknown errno name {val!r} in seccomp action {text!r}",
                                   hint="use a name from `errno -l` such as EPERM or EACCES")
        if not 0 < num < 4096:
            raise ProfileError(f"errno value {num} out of range in {text!r}",
                               hint="use 1..4095, e.g. errno:EPERM")
        return "errno", sc.ERRNO(num)
    raise ProfileError(f"unknown seccomp action {text!r}",
                       hint="use allow, errno:NAME, kill_process, log or trap")


@dataclass
class _Cond:
    key: str
    value: int
    label: str
    args: list[Any]
    text: str
    source: str
    reason: str | None


def _cond_text(conds: list[ArgCondition]) -> str:
    parts = []
    for c in conds:
        if c.op == "masked_eq":
            parts.append(f"arg{c.arg} & {c.mask:#x} == {c.value}")
        else:
            parts.append(f"arg{c.arg} {c.op} {c.value}")
    return " and ".join(parts)


def compile_filter(policy: SeccompPolicy, *, exec_notify: bool = True,
                   guard_root: bool = False, mediate_root: bool = False) -> CompiledFilter:
    """SeccompPolicy -> CompiledFilter (raw BPF for the native arch). Pure apart from libseccomp."""
    sc = _lib()
    mediate = guard_root and mediate_root and exec_notify
    dkey, dval = _action(_listened(policy.defaultAction, exec_notify), sc)
    uncond: dict[str, tuple[str, int, str, str, str | None]] = {}
    conds: dict[str, list[_Cond]] = {}

    def put_uncond(name: str, text: str, source: str, reason: str | None) -> None:
        text = _listened(text, exec_notify)
        key, val = _action(text, sc)
        cur = uncond.get(name)
        if cur is None or RANK[key] > RANK[cur[0]]:
            uncond[name] = (key, val, text, source, reason)

    all_names = [n for r in policy.rules for n in r.syscalls]
    check_syscall_names(all_names)
    for rule in policy.rules:
        for name in rule.syscalls:
            if not rule.args:
                put_uncond(name, rule.action, rule.id or "profile", rule.reason)
                continue
            action = _listened(rule.action, exec_notify)
            key, val = _action(action, sc)
            args = [sc.Arg(c.arg, OPS[c.op], c.value & 0xFFFFFFFFFFFFFFFF,
                           (c.mask or 0) & 0xFFFFFFFFFFFFFFFF) if c.op != "masked_eq"
                    else sc.Arg(c.arg, OPS[c.op], c.mask & 0xFFFFFFFFFFFFFFFF,  # type: ignore[operator]
                                c.value & 0xFFFFFFFFFFFFFFFF)
                    for c in rule.args]
            conds.setdefault(name, []).append(
                _Cond(key, val, action, args, _cond_text(rule.args), rule.id or "profile",
                      rule.reason))
    if exec_notify:
        for name in ("execve", "execveat"):
            put_uncond(name, "notify", "exec-gate", "every exec is checked by the supervisor")
    by_number: list[tuple[str, int]] = []
    # root guards on syscalls the profile has its own rules for: a second, stacked filter
    stacked: list[tuple[str, list[Any], str, int, str]] = []
    if guard_root:
        for name in ROOT_GUARDS:
            if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
                if name in ROOT_GUARD_NUMBERS:
                    by_number.append((name, ROOT_GUARD_NUMBERS[name]))
            elif name in conds:
                stacked.append((name, [], "", _errno.EPERM, ROOT_GUARD_REASON))
            elif mediate and name in ROOT_MEDIATED:
                put_uncond(name, "notify", "root-guard", ROOT_MEDIATE_REASON)
            elif mediate and name in ROOT_XATTR_NOTIFY:
                put_uncond(name, "notify", "root-guard", ROOT_XATTR_REASON)
            else:
                put_uncond(name, "errno:EPERM", "root-guard", ROOT_GUARD_REASON)
        for name, idx in ROOT_TIME_GUARDS.items():
            if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
                continue
            args, text = [sc.Arg(idx, sc.NE, 0, 0)], f"arg{idx} != NULL (explicit times)"
            if name in conds or name in uncond:
                stacked.append((name, args, text, _errno.EPERM, ROOT_GUARD_REASON))
            elif mediate:
                conds.setdefault(name, []).append(_Cond(
                    "notify", sc.NOTIFY, "notify", args, text, "root-guard",
                    ROOT_MEDIATE_REASON))
            else:
                conds.setdefault(name, []).append(_Cond(
                    "errno", sc.ERRNO(_errno.EPERM), "errno:EPERM", args, text, "root-guard",
                    ROOT_GUARD_REASON))
        for name, idx in ROOT_SETID_CREATE.items():
            if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
                continue  # aarch64: no open, creat, mknod
            own = name in conds or name in uncond
            for bit, what in ((0o4000, "S_ISUID"), (0o2000, "S_ISGID")):
                args = [sc.Arg(idx, OPS["masked_eq"], bit, bit)]
                text = f"arg{idx} & {what} (mode)"
                if own:
                    stacked.append((name, args, text, _errno.EPERM, ROOT_SETID_REASON))
                else:
                    conds.setdefault(name, []).append(_Cond(
                        "errno", sc.ERRNO(_errno.EPERM), "errno:EPERM", args, text,
                        "root-guard", ROOT_SETID_REASON))
        if sc.resolve_syscall(sc.Arch.NATIVE, "openat2") >= 0:
            if "openat2" in conds:
                stacked.append(("openat2", [], "", _errno.ENOSYS, ROOT_SETID_REASON +
                                " (openat2's mode is in memory seccomp cannot read)"))
            else:
                put_uncond("openat2", "errno:ENOSYS", "root-guard", ROOT_SETID_REASON +
                           " (openat2's mode is in memory seccomp cannot read; callers fall "
                           "back to openat)")
    # clone3's flags sit behind a pointer seccomp cannot read (namespaces, exit signal): ENOSYS,
    # the one answer that makes libc fall back to clone, whose flags are filtered. A profile's
    # errno for clone3 is replaced by ENOSYS (EPERM would break fork and threads); kill/trap stay.
    cur = uncond.get("clone3")
    if cur is None or RANK[cur[0]] <= RANK["errno"]:
        uncond["clone3"] = ("errno", sc.ERRNO(_errno.ENOSYS), "errno:ENOSYS", "clone3",
                            "clone3 flags cannot be filtered; libc falls back to clone")

    def build() -> tuple[Any, list[SyscallRule]]:
        flt = sc.SyscallFilter(dval)
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        rows: list[SyscallRule] = []

        def add(val: int, name: str, *args: Any) -> None:
            try:
                flt.add_rule(val, name, *args)
            except OSError as e:
                raise ProfileError(f"libseccomp refused a rule for {name}: {e.strerror}",
                                   hint="simplify the argument conditions of that rule") from e

        for name in sorted(set(uncond) | set(conds)):
            u = uncond.get(name)
            cs = conds.get(name, [])
            if u is not None:
                ukey, uval, utext, usrc, ureason = u
                stricter = [c for c in cs if RANK[c.key] > RANK[ukey]]
                if not stricter:
                    if ukey != dkey:
                        add(uval, name)
                    rows.append(SyscallRule(name, utext, "", usrc, ureason))
                    continue
                for c in stricter:
                    if ukey != dkey:
                        raise ProfileError(
                            f"seccomp rules for {name} conflict: the unconditional action "
                            f"{utext} would hide the stricter {c.label} when {c.text}",
                            hint="drop the unconditional rule or make it the default action")
                    rows.append(SyscallRule(name, c.label, c.text, c.source, c.reason))
                    add(c.value, name, *c.args)
                if ukey != dkey:
                    add(uval, name)
                rows.append(SyscallRule(name, utext, "otherwise", usrc, ureason))
                continue
            for c in cs:
                if c.key == dkey:
                    continue
                add(c.value, name, *c.args)
                rows.append(SyscallRule(name, c.label, c.text, c.source, c.reason))
        if RANK[dkey] < RANK["errno"]:
            for name, nr in by_number:
                flt.add_rule(sc.ERRNO(_errno.EPERM), nr)
                rows.append(SyscallRule(name, "errno:EPERM", "", "root-guard", ROOT_GUARD_REASON))
        return flt, rows

    flt, rows = build()
    bpf = _export(flt, pfc=False)
    extra: tuple[bytes, ...] = ()
    if stacked:
        gflt = sc.SyscallFilter(sc.ALLOW)
        gflt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
        for name, args, text, err, reason in stacked:
            gflt.add_rule(sc.ERRNO(err), name, *args)
            rows.append(SyscallRule(name, f"errno:{_errno.errorcode[err]}", text, "root-guard",
                                    reason))
        extra = (_export(gflt, pfc=False),)
    return CompiledFilter(bpf=bpf, notify=exec_notify, default_action=policy.defaultAction,
                          extra=extra, syscalls=tuple(rows), _build=lambda: build()[0])


def _listened(action: str, listener: bool) -> str:
    """`notify` needs the supervisor's listener; without one it is a plain refusal."""
    return action if listener or action != "notify" else "errno:EPERM"


def _export(flt: Any, *, pfc: bool) -> bytes:
    fd = os.memfd_create("glassbreak-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as f:
            (flt.export_pfc if pfc else flt.export_bpf)(f)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)
