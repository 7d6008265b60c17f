"""chmod, chown and utime of a root run, performed by the supervisor on the caller's behalf.
Why this module is long: one mechanism in four steps (decode, the caller's credentials, resolution
in the caller's view, perform) that only hold together against races as a whole: each step works on
what the one before opened, and the docstring below is the argument for why that is safe.

Landlock has no right for modes, owners or times, so a root run's file-attribute syscalls reach
the supervisor as seccomp user-notifications (sandbox.kernel.seccomp, `mediate_root`). This
module is the mechanism; what may be changed is sandbox.run.attrgate's decision. For one
notification:

  decode()   which call it is (CALLS: where its dirfd, path, fd, mode, owner, times and flags
             are) and its arguments, strings and times read from /proc/TID/mem;
  resolve()  the object it names AS THE CALLER SEES IT, opened O_PATH: from the caller's cwd
             (/proc/TID/cwd), its dirfd or fd (/proc/TID/fd/N: the open object, not a name) with
             one openat2(RESOLVE_NO_MAGICLINKS), O_NOFOLLOW where the call does not follow the
             last component. A procfs magic link resolved here would name the SUPERVISOR's
             files (/proc/self) or another process's: refused (ELOOP -> Unresolvable), except
             the whole path "/proc/self/fd/N" (or thread-self), glibc's lchmod idiom, which is
             the caller's own fd N. The caller must share the supervisor's mount namespace,
             user namespace and root (a run cannot chroot or unshare: CAP_SYS_CHROOT and
             CAP_SYS_ADMIN are dropped, the base profile refuses both); otherwise Unresolvable;
  ancestry() the opened object's identity (st_dev, st_ino) and its ancestors', walked with
             openat(fd, "..") up to the root the way Landlock walks a path (mount points are
             crossed to the parent mount). A non-directory is first placed in its directory:
             the kernel's name for the open file, whose directory is opened without following
             any symlink and must hold that very inode under that name (else Unresolvable);
  perform()  the call on THAT fd (fchmodat2 / fchownat / utimensat with AT_EMPTY_PATH), never by
             name again, after the kernel's own permission rules for the caller's credentials
             (fsuid, fsgid, groups, effective capabilities from /proc/TID/status).

The answer is the call's own result (val 0 or an errno), never SECCOMP_USER_NOTIF_FLAG_CONTINUE:
a check followed by CONTINUE would let the kernel resolve the path again, after a rename.
A caller interrupted by a signal after the call was performed restarts it: chmod, chown and
utime are idempotent.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import struct
from dataclasses import dataclass

from sandbox.kernel.unotify import AT_FDCWD, PAGE, PATH_MAX, Notif

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID = 0, 1, 3, 4
SETID = stat.S_ISUID | stat.S_ISGID
RESOLVE_NO_MAGICLINKS = 0x02
SYS_OPENAT2 = 437  # the generic table: x86_64 and aarch64
SYS_FCHMODAT2 = 452
O_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
MAX_DEPTH = 4096
# filesystems whose files are the kernel's, not a run's (fstatfs f_type)
PSEUDO_FS = {0x9FA0: "proc", 0x62656572: "sysfs", 0x63677270: "cgroup2", 0x27E0EB: "cgroup",
             0x1CD1: "devpts", 0x64626720: "debugfs", 0x74726163: "tracefs",
             0x73636673: "securityfs", 0xCAFE4A11: "bpf", 0x62656570: "configfs",
             0xDE5E81E4: "efivarfs", 0x6165676C: "pstore", 0x42494E4D: "binfmt_misc",
             0x19800202: "mqueue", 0x50495045: "pipefs", 0x534F434B: "sockfs",
             0x09041934: "anon_inode", 0x444D4142: "dma-buf", 0x454D444D: "devmem"}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_PROC_FD = re.compile(rb"/proc/(?:self|thread-self)/fd/([0-9]{1,9})")


class KernelAnswer(Exception):
    """The call fails the way the kernel would have failed it (ENOENT, EBADF, EINVAL, EPERM of
    the caller's own credentials...): not a policy refusal, not recorded."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(msg or os.strerror(err))
        self.errno = err


class Unresolvable(Exception):
    """The target cannot be named safely in the caller's view (a magic link, another namespace,
    an unlinked file): refused with EPERM and recorded."""


@dataclass(frozen=True)
class CallSpec:
    """Where a call's arguments are (argument indexes; None: the call has none)."""

    name: str
    family: str  # mode | owner | times
    path: int | None = None  # the path pointer
    dirfd: int | None = None  # the dirfd for a relative path
    fd: int | None = None  # the fd the call acts on (fchmod, fchown)
    value: int = 1  # mode, uid (gid: value + 1) or the times pointer
    flags: int | None = None
    follow: bool = True  # the last component is followed (unless flags say otherwise)
    times: str = ""  # utimbuf | timeval | timespec
    null_path_is_fd: bool = False  # a NULL path means the dirfd itself (futimesat, utimensat)


CALLS = (
    CallSpec("chmod", "mode", path=0, value=1),
    CallSpec("fchmod", "mode", fd=0, value=1),
    CallSpec("fchmodat", "mode", dirfd=0, path=1, value=2),
    CallSpec("fchmodat2", "mode", dirfd=0, path=1, value=2, flags=3),
    CallSpec("chown", "owner", path=0, value=1),
    CallSpec("lchown", "owner", path=0, value=1, follow=False),
    CallSpec("fchown", "owner", fd=0, value=1),
    CallSpec("fchownat", "owner", dirfd=0, path=1, value=2, flags=4),
    CallSpec("utime", "times", path=0, value=1, times="utimbuf"),
    CallSpec("utimes", "times", path=0, value=1, times="timeval"),
    CallSpec("futimesat", "times", dirfd=0, path=1, value=2, times="timeval",
             null_path_is_fd=True),
    CallSpec("utimensat", "times", dirfd=0, path=1, value=2, flags=3, times="timespec",
             null_path_is_fd=True),
    # refused whatever the target (only the attribute's name is read): see xattr_answer()
    CallSpec("setxattr", "xattr", path=0, value=1),
    CallSpec("lsetxattr", "xattr", path=0, value=1),
    CallSpec("fsetxattr", "xattr", fd=0, value=1),
)
POSIX_ACLS = (b"system.posix_acl_access", b"system.posix_acl_default")
XATTR_NAME_MAX = 255
CALL_NAMES = tuple(c.name for c in CALLS)
VALID_FLAGS = {"fchmodat2": AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH,
               "fchownat": AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH,
               "utimensat": AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH}


@dataclass
class AttrCall:
    """One call, decoded (the caller's values, as the kernel would take them)."""

    spec: CallSpec
    tid: int
    dirfd: int = AT_FDCWD
    path: bytes | None = None  # None: the call acts on `fd`
    fd: int | None = None
    follow: bool = True
    empty_path: bool = False
    mode: int = 0
    uid: int = -1  # -1: unchanged
    gid: int = -1
    times: tuple[tuple[int, int], tuple[int, int]] | None = None  # (sec, nsec) x 2

    @property
    def name(self) -> str:
        return self.spec.name

    def shown(self) -> str:
        """The path as the caller gave it, for messages."""
        if self.path is None:
            return f"fd {self.fd}"
        return self.path.decode("utf-8", "surrogateescape") or f"fd {self.dirfd} (empty path)"


def _int(v: int) -> int:
    return ctypes.c_int32(v & 0xFFFFFFFF).value


def decode(spec: CallSpec, n: Notif, mem: Mem | None) -> AttrCall:
    """The call's arguments; strings and times read through `mem` (KernelAnswer: EFAULT,
    ENAMETOOLONG, EINVAL, as the kernel would answer)."""
    a = n.args
    c = AttrCall(spec, n.pid, follow=spec.follow)
    flags = 0
    if spec.flags is not None:
        flags = a[spec.flags] & 0xFFFFFFFF
        if flags & ~VALID_FLAGS.get(spec.name, 0):
            raise KernelAnswer(errno.EINVAL, f"unknown flags {flags:#x}")
        c.follow = not flags & AT_SYMLINK_NOFOLLOW
        c.empty_path = bool(flags & AT_EMPTY_PATH)
    if spec.fd is not None:
        c.fd = _int(a[spec.fd])
    else:
        if spec.dirfd is not None:
            c.dirfd = _int(a[spec.dirfd])
        ptr = a[spec.path] if spec.path is not None else 0
        if ptr == 0 and spec.null_path_is_fd and c.dirfd != AT_FDCWD:
            if flags:  # utimensat(fd, NULL, times, flags): the kernel wants no flags
                raise KernelAnswer(errno.EINVAL, "flags with a NULL path")
            c.fd = c.dirfd
        elif ptr == 0:
            raise KernelAnswer(errno.EFAULT, "NULL path")
        else:
            c.path = _read_path(mem, ptr)
    if spec.family == "mode":
        c.mode = a[spec.value] & 0o7777
    elif spec.family == "owner":
        c.uid, c.gid = _int(a[spec.value]), _int(a[spec.value + 1])
    else:
        ptr = a[spec.value]
        if ptr:
            c.times = _read_times(mem, ptr, spec.times)
    return c


class Mem:
    """The caller's memory (/proc/TID/mem), read in small preads: a path is read to the end of
    its page first (no 64 KiB block for a 20-byte name)."""

    def __init__(self, tid: int) -> None:
        self.fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, n: int) -> bytes:
        out = b""
        while len(out) < n:
            try:
                got = os.pread(self.fd, n - len(out), addr + len(out))
            except OSError as e:
                raise KernelAnswer(errno.EFAULT, "cannot read the caller's memory") from e
            if not got:
                raise KernelAnswer(errno.EFAULT, "cannot read the caller's memory")
            out += got
        return out

    def cstring(self, addr: int, limit: int = PATH_MAX) -> bytes:
        """The NUL-terminated string at addr (ENAMETOOLONG past `limit` bytes with its NUL)."""
        out = b""
        while len(out) < limit:
            want = min(PAGE - (addr + len(out)) % PAGE, limit - len(out))
            chunk = self.read(addr + len(out), want)
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk
        raise KernelAnswer(errno.ENAMETOOLONG, "path longer than PATH_MAX")


def _read_path(mem: Mem | None, ptr: int) -> bytes:
    if mem is None:
        raise KernelAnswer(errno.EFAULT, "no memory reader")
    return mem.cstring(ptr, PATH_MAX)


def _read_times(mem: Mem | None, ptr: int, kind: str
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    if mem is None:
        raise KernelAnswer(errno.EFAULT, "no memory reader")
    raw = mem.read(ptr, 16 if kind == "utimbuf" else 32)
    if kind == "utimbuf":
        at, mt = struct.unpack("<qq", raw)
        return (at, 0), (mt, 0)
    s0, f0, s1, f1 = struct.unpack("<qqqq", raw)
    if kind == "timeval":
        if not (0 <= f0 < 1_000_000 and 0 <= f1 < 1_000_000):
            raise KernelAnswer(errno.EINVAL, "tv_usec out of range")
        return (s0, f0 * 1000), (s1, f1 * 1000)
    for f in (f0, f1):
        if not (0 <= f < 1_000_000_000 or f in (UTIME_NOW, UTIME_OMIT)):
            raise KernelAnswer(errno.EINVAL, "tv_nsec out of range")
    return (s0, f0), (s1, f1)


def xattr_answer(n: Notif, mem: Mem) -> int:
    """setxattr, lsetxattr, fsetxattr of a root run: never performed. A POSIX ACL (what
    `cp -p` sets, even for a plain mode) answers EOPNOTSUPP, as on a filesystem without ACLs:
    coreutils and others then set the mode with chmod, which is mediated. Every other name
    (security.capability: a privilege; user.*, trusted.*) answers EPERM."""
    try:
        name = mem.cstring(n.args[1], XATTR_NAME_MAX + 1)
    except KernelAnswer as e:
        return errno.ERANGE if e.errno == errno.ENAMETOOLONG else e.errno
    return errno.EOPNOTSUPP if name in POSIX_ACLS else errno.EPERM


# ---- the caller's credentials ------------------------------------------------------------------
@dataclass(frozen=True)
class Creds:
    fsuid: int
    fsgid: int
    groups: frozenset[int]
    caps: int  # effective

    def cap(self, bit: int) -> bool:
        return bool(self.caps >> bit & 1)

    def in_group(self, gid: int) -> bool:
        return gid == self.fsgid or gid in self.groups


_STATUS = re.compile(rb"^Uid:\s+\d+\s+\d+\s+\d+\s+(\d+)\s*\nGid:\s+\d+\s+\d+\s+\d+\s+(\d+)\s*\n"
                     rb"(?:.*\n)*?Groups:([ \t\d]*)\n(?:.*\n)*?CapEff:\s+([0-9a-f]+)", re.M)


def parse_status(text: bytes) -> Creds:
    """Creds from /proc/TID/status (Uid/Gid: real, effective, saved, filesystem)."""
    m = _STATUS.search(text)
    if m is None:
        raise ValueError("no Uid/Gid/Groups/CapEff lines")
    return Creds(int(m.group(1)), int(m.group(2)),
                 frozenset(int(g) for g in m.group(3).split()), int(m.group(4), 16))


def creds_of(tid: int) -> Creds:
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return parse_status(os.read(fd, 1 << 14))
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:
        raise Unresolvable(f"cannot read the caller's credentials: {e}") from e


def permitted(c: AttrCall, st: os.stat_result, cr: Creds) -> tuple[int, int]:
    """The kernel's own rules (fs/attr.c setattr_prepare, chown_ok, chgrp_ok; fs/utimes.c) for
    this caller: (0 or the errno the kernel would answer, the mode to set)."""
    owner = cr.fsuid == st.st_uid
    mode = c.mode
    if c.spec.family == "mode":
        if not (owner or cr.cap(CAP_FOWNER)):
            return errno.EPERM, mode
        if mode & stat.S_ISGID and not (cr.in_group(st.st_gid) or cr.cap(CAP_FSETID)):
            mode &= ~stat.S_ISGID  # the kernel drops it silently
        return 0, mode
    if c.spec.family == "owner":
        if c.uid != -1 and not ((owner and c.uid == st.st_uid) or cr.cap(CAP_CHOWN)):
            return errno.EPERM, mode
        if c.gid != -1 and not ((owner and (c.gid == st.st_gid or cr.in_group(c.gid)))
                                or cr.cap(CAP_CHOWN)):
            return errno.EPERM, mode
        return 0, mode
    if owner or cr.cap(CAP_FOWNER):
        return 0, mode
    if c.times is not None and not (c.times[0][1] == UTIME_NOW and c.times[1][1] == UTIME_NOW):
        return errno.EPERM, mode  # explicit times: the owner only
    # "now": any writer (mode bits; POSIX ACLs are not consulted here)
    m = st.st_mode
    ok = cr.cap(CAP_DAC_OVERRIDE) or (m & stat.S_IWUSR if owner else
                                      m & stat.S_IWGRP if cr.in_group(st.st_gid)
                                      else m & stat.S_IWOTH)
    return (0 if ok else errno.EACCES), mode


# ---- resolution in the caller's view -------------------------------------------------------------
class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: bytes, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(path),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(fd)


@dataclass(frozen=True)
class SameView:
    """The supervisor's own namespaces and root: a caller must share them."""

    mnt: str  # "mnt:[4026531841]"
    user: str
    root: tuple[int, int]

    @classmethod
    def own(cls) -> SameView:
        st = os.stat("/")
        return cls(os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/user"),
                   (st.st_dev, st.st_ino))

    def check(self, tid: int) -> None:
        try:
            mnt = os.readlink(f"/proc/{tid}/ns/mnt")
            user = os.readlink(f"/proc/{tid}/ns/user")
            st = os.stat(f"/proc/{tid}/root")
        except OSError as e:
            raise Unresolvable(f"cannot see the caller's root: {e.strerror}") from e
        if (mnt, user) != (self.mnt, self.user):
            raise Unresolvable("the caller is in another mount or user namespace")
        if (st.st_dev, st.st_ino) != self.root:
            raise Unresolvable("the caller has another root directory")


def _fd_flags(tid: int, fd: int) -> int:
    try:
        with open(f"/proc/{tid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    raise KernelAnswer(errno.EBADF, f"no fd {fd}")


def _task_fd(tid: int, fd: int, *, directory: bool = False) -> int:
    """The caller's open file `fd`, opened again O_PATH (the object it refers to)."""
    try:
        return os.open(f"/proc/{tid}/fd/{fd}",
                       O_PATH_FLAGS | (os.O_DIRECTORY if directory else 0))
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise KernelAnswer(errno.ENOTDIR, f"fd {fd} is not a directory") from e
        raise KernelAnswer(errno.EBADF, f"no fd {fd}") from e


def resolve(c: AttrCall) -> int:
    """An O_PATH fd (the caller owns it) of the object the call acts on, in the caller's view.
    KernelAnswer: the kernel's own failure (ENOENT, ENOTDIR, EBADF...); Unresolvable: a name
    that cannot be resolved safely here."""
    if c.path is None:  # fchmod, fchown, utimensat(fd, NULL): the open file itself
        assert c.fd is not None
        if _fd_flags(c.tid, c.fd) & os.O_PATH:
            raise KernelAnswer(errno.EBADF, "an O_PATH fd")
        return _task_fd(c.tid, c.fd)
    if not c.path:
        if not c.empty_path:
            raise KernelAnswer(errno.ENOENT, "empty path")
        if c.dirfd == AT_FDCWD:
            return _open_proc(c.tid, "cwd")
        return _task_fd(c.tid, c.dirfd)
    m = _PROC_FD.fullmatch(c.path)
    if m is not None:
        if not c.follow:
            raise Unresolvable("the /proc magic link itself, not followed")
        return _task_fd(c.tid, int(m.group(1)))
    if c.path.startswith(b"/"):
        base = os.open("/", O_PATH_FLAGS | os.O_DIRECTORY)  # the caller's root (checked)
    elif c.dirfd == AT_FDCWD:
        base = _open_proc(c.tid, "cwd")
    else:
        base = _task_fd(c.tid, c.dirfd)
    try:
        return openat2(base, c.path, O_PATH_FLAGS | (0 if c.follow else os.O_NOFOLLOW),
                       RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Unresolvable("a procfs magic link (or a symlink loop) in the path") from e
        raise KernelAnswer(e.errno or errno.ENOENT, f"cannot resolve {c.shown()!r}") from e
    finally:
        os.close(base)


def _open_proc(tid: int, what: str) -> int:
    try:
        return os.open(f"/proc/{tid}/{what}", O_PATH_FLAGS | os.O_DIRECTORY)
    except OSError as e:
        raise Unresolvable(f"cannot open the caller's {what}: {e.strerror}") from e


def fs_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], "little")


@dataclass
class Placed:
    """An opened object, its kernel name and identity, and its ancestors' identities (the
    object's directory first, up to the root)."""

    name: str
    ident: tuple[int, int]
    ancestors: list[tuple[int, int]]


def ancestry(fd: int, st: os.stat_result, root: tuple[int, int]) -> Placed:
    """Where the opened object lies: its name (the kernel's, /proc/self/fd/N), and the identities
    of the directories above it, each reached with openat("..") from the one below (Unresolvable
    when the object has no name that holds it: unlinked, another mount tree)."""
    ident = (st.st_dev, st.st_ino)
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        raise Unresolvable(f"the object has no name: {e.strerror}") from e
    if stat.S_ISDIR(st.st_mode):
        cur = os.dup(fd)
    else:
        cur = _parent_holding(name, ident)
    out: list[tuple[int, int]] = []
    try:
        s = os.fstat(cur)
        while True:
            here = (s.st_dev, s.st_ino)
            if here != ident:
                out.append(here)
            if here == root or len(out) > MAX_DEPTH:
                break
            nxt = os.open("..", O_PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=cur)
            os.close(cur)
            cur = nxt
            s = os.fstat(cur)
            if (s.st_dev, s.st_ino) == here:  # ".." of a root is itself
                break
    finally:
        os.close(cur)
    if not out or out[-1] != root:
        if ident != root:
            raise Unresolvable(f"{name!r} does not lie beneath the root")
    return Placed(name, ident, out)


def _parent_holding(name: str, ident: tuple[int, int]) -> int:
    """An O_PATH fd of the directory that holds `ident` under `name`'s last component."""
    if not name.startswith("/"):
        raise Unresolvable(f"the object has no path ({name!r})")
    parent, base = os.path.split(name)
    if not base:
        raise Unresolvable(f"no last component in {name!r}")
    try:
        pfd = openat2(-100, os.fsencode(parent), O_PATH_FLAGS | os.O_DIRECTORY,
                      RESOLVE_NO_MAGICLINKS | 0x04)  # RESOLVE_NO_SYMLINKS: a kernel name
    except OSError as e:
        raise Unresolvable(f"the directory of {name!r} cannot be opened: {e.strerror}") from e
    try:
        st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except OSError as e:
        os.close(pfd)
        raise Unresolvable(f"{name!r} is no longer there (unlinked or renamed)") from e
    if (st.st_dev, st.st_ino) != ident:
        os.close(pfd)
        raise Unresolvable(f"{name!r} names another file now (renamed)")
    return pfd


# ---- the call itself, on the opened object ---------------------------------------------------
class _Timespec2(ctypes.Structure):
    _fields_ = [("a_sec", ctypes.c_int64), ("a_nsec", ctypes.c_int64),
                ("m_sec", ctypes.c_int64), ("m_nsec", ctypes.c_int64)]


def perform(c: AttrCall, fd: int, mode: int) -> int:
    """The call on the object `fd` (O_PATH) refers to: 0 or the kernel's errno."""
    if c.spec.family == "mode":
        r = _libc.syscall(ctypes.c_long(SYS_FCHMODAT2), ctypes.c_int(fd), ctypes.c_char_p(b""),
                          ctypes.c_uint(mode), ctypes.c_int(AT_EMPTY_PATH))
        if r < 0 and ctypes.get_errno() == errno.ENOSYS:  # before Linux 6.6: our own fd
            try:
                os.chmod(f"/proc/self/fd/{fd}", mode)
                return 0
            except OSError as e:
                return e.errno or errno.EPERM
    elif c.spec.family == "owner":
        r = _libc.fchownat(ctypes.c_int(fd), ctypes.c_char_p(b""),
                           ctypes.c_uint(c.uid & 0xFFFFFFFF), ctypes.c_uint(c.gid & 0xFFFFFFFF),
                           ctypes.c_int(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
    else:
        ts = None
        if c.times is not None:
            (a0, a1), (m0, m1) = c.times
            ts = ctypes.byref(_Timespec2(a0, a1, m0, m1))
        r = _libc.utimensat(ctypes.c_int(fd), ctypes.c_char_p(b""), ts,
                            ctypes.c_int(AT_EMPTY_PATH))
    if r < 0:
        return ctypes.get_errno() or errno.EPERM
    return 0
