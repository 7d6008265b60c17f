"""Landlock: ABI detection, a pure rule plan, rulesets built in the parent, restrict_self in the
child (after no_new_privs, before seccomp). Measured and tested in the prototype this module came
from (docs/filesystem.md has the kernel interface, the ABI table and the costs).
Why this module is long: one kernel interface in three parts (the uapi and ABI detection, the pure
plan, the syscalls that apply it) that share the access-right constants.

    plan(grants, hidden=, read_only=) -> Plan   (path, access) rules; reads the filesystem only
                                                through a FsView (pure with a fake one)
    build(plan.rules, handled_fs=, ...) -> Ruleset  an O_CLOEXEC fd + what it really enforces
    restrict_self(fd, flags)                    in the child; one ruleset fd serves any number
                                                of children (each call makes a new domain)
    exec_closure(binaries)                      the files an exec envelope needs EXECUTE on

Rules follow inodes: a rule on a directory covers everything beneath it (across mounts, whatever
path reaches it); a rule on a file covers that inode (every hard link). Landlock only allows, so
"everything except X" is expanded into rules on X's siblings along the path down to X (plan()).
Layers (stacked restrict_self calls) intersect, and each restricts only the rights it handles:
STATIC_FS (read, execute) is per profile and cacheable, RUN_FS (modifications) is per run.
What glassbreak puts in each layer: sandbox.run.filesystem.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

# ---- uapi: include/uapi/linux/landlock.h (Linux 6.18); syscalls from the generic table ------
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = {
    "x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}.get(platform.machine(), (-1, -1, -1))
CREATE_RULESET_VERSION, CREATE_RULESET_ERRATA = 1 << 0, 1 << 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
FS_NAMES = ("execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file",
            "make_char", "make_dir", "make_reg", "make_sock", "make_fifo", "make_block",
            "make_sym", "refer", "truncate", "ioctl_dev")  # bit i = 1 << i
(FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR, FS_REMOVE_DIR, FS_REMOVE_FILE,
 FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM,
 FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV) = (1 << i for i in range(16))  # REFER: ABI 2,
#                                          TRUNCATE: ABI 3, IOCTL_DEV: ABI 5
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1                      # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1           # ABI 6
LOG_SAME_EXEC_OFF, LOG_NEW_EXEC_ON, LOG_SUBDOMAINS_OFF = 1 << 0, 1 << 1, 1 << 2  # ABI 7

FS_ALL = (1 << 16) - 1
FS_FILE = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # valid on files
FS_READ = FS_READ_FILE | FS_READ_DIR
FS_EXEC = FS_EXECUTE | FS_READ_FILE  # open_exec() opens for reading too: both are checked
FS_DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV
# a writable tree: no EXECUTE, no device nodes (root could mknod the disk and read it raw), no
# device ioctls
FS_WRITE = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG
            | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER | FS_TRUNCATE)
# what read_only takes away (REFER alone moves nothing: reparenting also needs MAKE_*/REMOVE_*)
FS_MODIFY = FS_ALL & ~(FS_READ | FS_EXECUTE | FS_REFER)
# what `hidden` takes away: everything but listing (and REFER, which moves nothing by itself). A
# hidden directory's names stay visible (stat() shows them anyway); in exchange its ancestors stay
# listable: READ_DIR on a directory covers every directory beneath it, so hiding names too would
# make `ls /` fail in every run
FS_HIDE = FS_ALL & ~(FS_READ_DIR | FS_REFER)
STATIC_FS = FS_READ | FS_EXECUTE | FS_REFER  # each layer must handle and grant REFER itself
RUN_FS = FS_ALL & ~(FS_READ | FS_EXECUTE)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
           "/dev/ptmx", "/dev/pts")
_FS_BY_ABI = {0: 0, 1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}


class LandlockUnavailable(RuntimeError):
    """No Landlock (ENOSYS: not built; EOPNOTSUPP: not enabled at boot, see lsm=), an unknown
    architecture, or a requested right the kernel's ABI cannot enforce."""


@dataclass(frozen=True)
class Support:
    """What an ABI enforces (or, as Ruleset.dropped, what was requested but is not)."""

    abi: int
    fs: int
    net: int
    scoped: int
    restrict_flags: int

    @classmethod
    def of(cls, abi: int) -> Support:
        return cls(abi, _FS_BY_ABI.get(abi, FS_ALL), 3 if abi >= 4 else 0,
                   3 if abi >= 6 else 0, 7 if abi >= 7 else 0)


def names(access: int) -> list[str]:
    return [n for i, n in enumerate(FS_NAMES) if access >> i & 1]


class _RulesetAttr(ctypes.Structure):  # 24 bytes (ABI 6+); 16 for ABI 4-5, 8 for ABI 1-3
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):  # __attribute__((packed)): 12 bytes
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):  # 16 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _call(nr: int, *args: object) -> int:
    if nr < 0:
        raise LandlockUnavailable(f"unsupported architecture {platform.machine()}")
    r = _syscall(nr, *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _query(flag: int) -> int:
    return _call(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(flag))


def abi_version() -> int:
    """The kernel's Landlock ABI (7 on Linux 6.15-6.18); LandlockUnavailable if none."""
    try:
        return _query(CREATE_RULESET_VERSION)
    except OSError as e:
        why = {errno.ENOSYS: "not built into this kernel (CONFIG_SECURITY_LANDLOCK)",
               errno.EOPNOTSUPP: "built in but not enabled at boot (lsm=...,landlock)"}
        raise LandlockUnavailable(f"Landlock is {why.get(e.errno or 0, e.strerror)}") from e


def errata() -> int:
    """Bitmask of the Landlock errata this kernel fixed (0 where the query is unknown)."""
    try:
        return _query(CREATE_RULESET_ERRATA)
    except OSError:
        return 0


# ---- plan: pure, the filesystem is seen through a FsView ---------------------------------------
class FsView(Protocol):
    def realpath(self, path: str) -> str | None: ...  # resolved; None if it does not exist
    def kind(self, path: str) -> str | None: ...      # lstat: "dir" | "file" | "link" | None
    def entries(self, path: str) -> list[tuple[str, str]]: ...  # a directory's (name, kind)


class OsView:
    """The real filesystem."""

    def realpath(self, path: str) -> str | None:
        p = os.path.realpath(path)
        return p if os.path.lexists(p) else None

    def kind(self, path: str) -> str | None:
        if (st := _lstat(path)) is None:
            return None
        m = st.st_mode
        return "dir" if stat.S_ISDIR(m) else "link" if stat.S_ISLNK(m) else "file"

    def entries(self, path: str) -> list[tuple[str, str]]:
        try:
            with os.scandir(path) as it:
                return [(e.name, "link" if e.is_symlink() else "dir"
                         if e.is_dir(follow_symlinks=False) else "file") for e in it]
        except OSError:
            return []


@dataclass(frozen=True)
class Grant:
    """`access` beneath `path` (a directory) or on it (a file: FS_FILE bits only); `except_`:
    subtrees this grant alone does not reach."""

    path: str
    access: int
    except_: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    path: str
    access: int
    is_dir: bool


@dataclass
class Plan:
    rules: list[Rule] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (grant path, why)
    expanded: list[str] = field(default_factory=list)  # directories whose entries were listed
    watch: list[str] = field(default_factory=list)  # directories a cached ruleset depends on


def _under(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top + "/")


def plan(grants: Iterable[Grant], *, hidden: Sequence[str] = (), read_only: Sequence[str] = (),
         view: FsView | None = None, resolve: bool = True, hide: int = FS_HIDE,
         watch: bool = True) -> Plan:
    """Rules for `grants` minus `hidden` (no `hide` right from any grant) and minus `read_only`
    (no FS_MODIFY right from any grant). Resolved when planned:
    - paths are resolved (symlinks followed); a missing grant path is skipped (Plan.skipped), a
      missing exclusion ignored (nothing to protect yet; a cache re-plans when it appears);
    - a grant rooted at or beneath an exclusion loses the exclusion's rights;
    - for an exclusion X beneath a grant root R, the rights X keeps are granted on R; the others
      go to the siblings of each directory on the path R -> X (directories as trees, files as
      file rules), never to those ancestors themselves. Hence entries created later in an
      ancestor get none of them (a new file in /etc is unreadable; nothing can be created
      directly in a cwd that holds a protected subtree), and an ancestor would not be listable
      if READ_DIR were taken beneath it (FS_HIDE keeps it);
    - symlinks among the listed entries are skipped (their targets have their own rules).
    resolve=False: the caller passes absolute paths already resolved (saves ~15 us a path).
    watch=False: no Plan.watch (a plan that is not cached)."""
    view = view or OsView()
    real = view.realpath if resolve else os.path.normpath
    out = Plan()
    acc_of: dict[str, int] = {}
    dir_of: dict[str, bool] = {}
    glob: dict[str, int] = {}
    for paths, mask in ((hidden, hide), (read_only, FS_MODIFY)):
        for p in paths:
            if watch:
                out.watch.append(os.path.dirname(os.path.abspath(p)))
            if (rp := real(p)) is not None:
                glob[rp] = glob.get(rp, 0) | mask
                if watch:
                    out.watch.append(os.path.dirname(rp))

    def expand(path: str, is_dir: bool, access: int, below: dict[str, int]) -> None:
        if not is_dir:
            access &= FS_FILE
        removed = 0
        for m in below.values():
            removed |= m
        if access & ~removed:
            acc_of[path] = acc_of.get(path, 0) | access & ~removed
            dir_of[path] = is_dir
        if not access & removed:
            return
        out.expanded.append(path)
        for name, kind in view.entries(path):
            child = path.rstrip("/") + "/" + name
            if kind != "link":
                sub = {e: m for e, m in below.items() if e != child and _under(e, child)}
                expand(child, kind == "dir", access & removed & ~below.get(child, 0), sub)

    for g in grants:
        if watch:
            out.watch.append(os.path.dirname(os.path.abspath(g.path)))
        root = real(g.path)
        kind = view.kind(root) if root is not None else None
        if root is None or kind is None:
            out.skipped.append((g.path, "does not exist"))
            continue
        excl = dict(glob)
        for e in g.except_:
            if (rp := real(e)) is not None:
                excl[rp] = hide
        access = g.access
        for e, m in excl.items():
            if _under(root, e):
                access &= ~m
        if not access:
            out.skipped.append((g.path, "excluded"))
            continue
        expand(root, kind == "dir", access,
               {e: m for e, m in excl.items() if e != root and _under(e, root)})
    out.rules = [Rule(p, a, dir_of[p]) for p, a in acc_of.items()]
    out.expanded = list(dict.fromkeys(out.expanded))
    if not watch:
        return out
    # directories only: a new entry, a rename or a replaced file (package upgrade) changes its
    # directory's mtime; the grant roots' and exclusions' parents say when one appears
    out.watch = list(dict.fromkeys(out.watch + out.expanded +
                                   [os.path.dirname(r.path) for r in out.rules if not r.is_dir]))
    return out


def exec_closure(binaries: Iterable[str], view: FsView | None = None) -> list[str]:
    """The files an exec envelope needs EXECUTE on: each binary (resolved), its ELF interpreter
    (PT_INTERP) and, for a #! script, its interpreter, recursively. Shared libraries need
    READ_FILE only: Landlock does not check mmap(PROT_EXEC). `#!/usr/bin/env X`: env is
    found here, X (searched in PATH at run time) must be listed by the caller."""
    view = view or OsView()
    seen: list[str] = []
    todo = list(binaries)
    while todo:
        rp = view.realpath(todo.pop())
        if rp is not None and rp not in seen and view.kind(rp) == "file":
            seen.append(rp)
            todo.extend(_interpreter(rp))
    return seen


def _interpreter(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            if head[:2] == b"#!":
                words = head[2:].split(b"\n", 1)[0].split()
                return [os.fsdecode(words[0])] if words else []
            if head[:4] != b"\x7fELF" or head[4] != 2:  # ELF64 only
                return []
            e = "<" if head[5] == 1 else ">"
            (phoff,), (phentsize, phnum) = (struct.unpack_from(e + "Q", head, 32),
                                            struct.unpack_from(e + "HH", head, 54))
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                ph = f.read(56)
                if struct.unpack_from(e + "I", ph)[0] == 3:  # PT_INTERP
                    f.seek(struct.unpack_from(e + "Q", ph, 8)[0])
                    size = struct.unpack_from(e + "Q", ph, 32)[0]
                    return [os.fsdecode(f.read(min(size, 4096)).rstrip(b"\0"))]
    except (OSError, struct.error, IndexError):
        pass
    return []


# ---- apply: syscalls --------------------------------------------------------------------------
@dataclass
class Ruleset:
    """A ruleset fd (O_CLOEXEC: dup2 it into a spawned launcher) and what it enforces."""

    fd: int
    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    dropped: Support  # requested but not enforced (only with best_effort)
    rules: int = 0
    # (st_dev, st_ino) of each inode a rule was added on -> the rights granted there (the
    # inodes the kernel holds, whatever happens to their paths later: sandbox.run.attrgate)
    inodes: dict[tuple[int, int], int] = field(default_factory=dict)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def build(rules: Iterable[Rule], *, handled_fs: int = FS_ALL, handled_net: int = 0,
          connect_ports: Iterable[int] = (), bind_ports: Iterable[int] = (),
          scoped: int = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL,
          best_effort: bool = False, abi: int | None = None) -> Ruleset:
    """A ruleset handling these rights, with the rules (each masked with handled_fs; file rules
    with FS_FILE; empty ones dropped). Ports imply the matching NET_* right. A right the kernel
    cannot enforce raises LandlockUnavailable, unless best_effort: then Ruleset.dropped."""
    abi = abi_version() if abi is None else abi
    sup = Support.of(abi)
    connect_ports, bind_ports = list(connect_ports), list(bind_ports)
    handled_net |= (NET_CONNECT_TCP if connect_ports else 0) | (NET_BIND_TCP if bind_ports else 0)
    miss = Support(abi, handled_fs & ~sup.fs, handled_net & ~sup.net, scoped & ~sup.scoped, 0)
    if (miss.fs or miss.net or miss.scoped) and not best_effort:
        raise LandlockUnavailable(f"Landlock ABI {abi} cannot enforce fs={names(miss.fs)} "
                                  f"net={miss.net:#x} scoped={miss.scoped:#x}")
    handled_fs, handled_net, scoped = (handled_fs & sup.fs, handled_net & sup.net,
                                       scoped & sup.scoped)
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = _call(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    rs = Ruleset(fd, abi, handled_fs, handled_net, scoped, miss)
    try:
        pb = _PathBeneathAttr()
        for r in rules:
            acc = r.access & handled_fs & (FS_ALL if r.is_dir else FS_FILE)
            if not acc:
                continue
            try:  # O_NOFOLLOW: a path that became a symlink since the plan grants nothing
                pfd = os.open(r.path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # vanished since the plan
            try:
                pb.allowed_access, pb.parent_fd = acc, pfd
                _call(SYS_ADD_RULE, fd, RULE_PATH_BENEATH, ctypes.byref(pb), 0)
                rs.rules += 1
                st = os.fstat(pfd)
                key = (st.st_dev, st.st_ino)
                rs.inodes[key] = rs.inodes.get(key, 0) | acc
            except OSError as e:  # EINVAL: no longer a directory since the plan: grant nothing
                if e.errno != errno.EINVAL or not r.is_dir:
                    raise
            finally:
                os.close(pfd)
        for ports, right in ((connect_ports, NET_CONNECT_TCP), (bind_ports, NET_BIND_TCP)):
            for port in ports if right & handled_net else ():
                _call(SYS_ADD_RULE, fd, RULE_NET_PORT, ctypes.byref(_NetPortAttr(right, port)), 0)
                rs.rules += 1
    except BaseException:
        rs.close()
        raise
    return rs


def restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """Enforce a ruleset on the calling thread and everything it execs or forks (a new domain
    per call; up to 16 stacked: E2BIG). Needs no_new_privs (or CAP_SYS_ADMIN): EPERM. Fork-safe:
    one ctypes call. flags: LOG_* (ABI 7); glassbreak wants LOG_NEW_EXEC_ON (the default only
    logs denials before the first execve)."""
    _call(SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(flags))


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None
