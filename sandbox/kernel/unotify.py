"""seccomp user-notification: receive execve/execveat notifications, read what the caller asked
for from /proc/PID/mem, answer CONTINUE or an errno.

The kernel side (seccomp(2), SECCOMP_FILTER_FLAG_NEW_LISTENER):
- every notification MUST be answered; a notification left unanswered blocks the caller until
  the listener fd closes (then the kernel fails the syscall with ENOSYS);
- the receive buffer must be zeroed before every SECCOMP_IOCTL_NOTIF_RECV (else EINVAL);
- strings read from the caller's memory are racy (another thread can rewrite them after we read
  them): check NOTIF_ID_VALID after reading, and never make CONTINUE the only check (the eBPF hold
  at sched_process_exec verifies the image that really runs).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import re
import stat
import struct
from dataclasses import dataclass, field

# ioctls (include/uapi/linux/seccomp.h, x86_64 / aarch64 share the generic encoding)
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_GET_NOTIF_SIZES = 3

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
# arch -> (execve, execveat, seccomp)
SYSCALLS = {AUDIT_ARCH_X86_64: (59, 322, 317), AUDIT_ARCH_AARCH64: (221, 281, 277)}
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

PATH_MAX = 4096
MAX_ARGS = 4096  # argv (and envp) entries read at most
MAX_ARG_BYTES = 1 << 20  # total bytes of argv strings read at most
MAX_ENV_BYTES = 1 << 20
PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


class SeccompData(ctypes.Structure):
    _fields_ = [
        ("nr", ctypes.c_int),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", SeccompData),
    ]


class SeccompNotifResp(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class SeccompNotifSizes(ctypes.Structure):
    _fields_ = [
        ("seccomp_notif", ctypes.c_uint16),
        ("seccomp_notif_resp", ctypes.c_uint16),
        ("seccomp_data", ctypes.c_uint16),
    ]


def _native_arch() -> int:
    m = os.uname().machine
    return AUDIT_ARCH_AARCH64 if m in ("aarch64", "arm64") else AUDIT_ARCH_X86_64


_SIZES: SeccompNotifSizes | None = None


def notif_sizes() -> SeccompNotifSizes:
    """The kernel's struct sizes (seccomp(SECCOMP_GET_NOTIF_SIZES)); cached."""
    global _SIZES
    if _SIZES is None:
        sizes = SeccompNotifSizes()
        nr = SYSCALLS[_native_arch()][2]
        if _libc.syscall(ctypes.c_long(nr), ctypes.c_uint(SECCOMP_GET_NOTIF_SIZES),
                         ctypes.c_uint(0), ctypes.byref(sizes)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"seccomp(SECCOMP_GET_NOTIF_SIZES): {os.strerror(e)}")
        _SIZES = sizes
    return _SIZES


@dataclass(frozen=True)
class Notif:
    id: int
    pid: int  # the calling thread's id (in the supervisor's pid namespace)
    nr: int
    arch: int
    args: tuple[int, ...]


class Listener:
    """A seccomp notification listener fd (owned: close() closes it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        sizes = notif_sizes()
        self._recv_size = max(sizes.seccomp_notif, ctypes.sizeof(SeccompNotif))
        self._resp_size = max(sizes.seccomp_notif_resp, ctypes.sizeof(SeccompNotifResp))
        self._recv_buf = ctypes.create_string_buffer(self._recv_size)
        self._resp_buf = ctypes.create_string_buffer(self._resp_size)
        self._id_buf = ctypes.c_uint64(0)

    def fileno(self) -> int:
        return self.fd

    def recv(self) -> Notif | None:
        """One notification, or None when it vanished (the caller died: ENOENT) or EINTR."""
        ctypes.memset(self._recv_buf, 0, self._recv_size)  # the kernel insists on zeroes
        if _libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, self._recv_buf) != 0:
            e = ctypes.get_errno()
            if e in (errno_mod.ENOENT, errno_mod.EINTR, errno_mod.EAGAIN):
                return None
            raise OSError(e, f"SECCOMP_IOCTL_NOTIF_RECV: {os.strerror(e)}")
        n = SeccompNotif.from_buffer_copy(self._recv_buf.raw[: ctypes.sizeof(SeccompNotif)])
        return Notif(int(n.id), int(n.pid), int(n.data.nr), int(n.data.arch),
                     tuple(int(a) for a in n.data.args))

    def id_valid(self, notif_id: int) -> bool:
        self._id_buf.value = notif_id
        return _libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.byref(self._id_buf)) == 0

    def _send(self, notif_id: int, error: int, flags: int) -> bool:
        ctypes.memset(self._resp_buf, 0, self._resp_size)
        resp = SeccompNotifResp.from_buffer(self._resp_buf)
        resp.id, resp.val, resp.error, resp.flags = notif_id, 0, error, flags
        if _libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, self._resp_buf) != 0:
            e = ctypes.get_errno()
            if e == errno_mod.ENOENT:  # the caller is gone (killed) or already answered
                return False
            raise OSError(e, f"SECCOMP_IOCTL_NOTIF_SEND: {os.strerror(e)}")
        return True

    def respond_continue(self, notif_id: int) -> bool:
        return self._send(notif_id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)

    def respond_errno(self, notif_id: int, err: int = errno_mod.EPERM) -> bool:
        return self._send(notif_id, -abs(err), 0)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


# -- reading the caller's memory --------------------------------------------------------------


class TooLarge(Exception):
    """argv/envp beyond the sane bounds: the exec is denied (rule exec.argv-too-large)."""


class MemReader:
    """pread over /proc/PID/mem, one page at a time, pages cached for this one notification
    (argv and envp strings and their pointer arrays usually share a few pages)."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        self._pages: dict[int, bytes] = {}

    def close(self) -> None:
        os.close(self.fd)

    def _page(self, base: int) -> bytes:
        data = self._pages.get(base)
        if data is None:
            try:
                data = os.pread(self.fd, PAGE, base)
            except OSError:
                data = b""
            if not data:
                raise OSError(errno_mod.EFAULT, f"cannot read the caller's memory at {base:#x}")
            if len(self._pages) > 512:
                self._pages.clear()
            self._pages[base] = data
        return data

    def cstring(self, addr: int, limit: int = PATH_MAX) -> bytes:
        if addr == 0:
            raise OSError(errno_mod.EFAULT, "NULL string pointer")
        out = b""
        while len(out) < limit:
            base = addr - addr % PAGE
            data = self._page(base)
            off = addr - base
            end = data.find(b"\0", off)
            if end >= 0:
                out += data[off:end]
                if len(out) > limit:
                    break
                return out
            out += data[off:]
            addr = base + len(data)
        raise TooLarge(f"a string longer than {limit} bytes")

    def pointers(self, addr: int, max_n: int) -> list[int]:
        """A NULL-terminated array of 8-byte pointers (without the NULL)."""
        out: list[int] = []
        while True:
            base = addr - addr % PAGE
            data = self._page(base)
            off = addr - base
            n = (len(data) - off) // 8
            if n <= 0:  # a pointer straddling pages
                out.append(int.from_bytes(self.read(addr, 8), "little"))
                n, chunk = 1, out[-1:]
            else:
                chunk = list(struct.unpack_from(f"<{n}Q", data, off))
                out.extend(chunk)
            if 0 in chunk:
                return out[: out.index(0)]
            if len(out) > max_n:
                raise TooLarge(f"more than {max_n} entries")
            addr += 8 * n

    def read(self, addr: int, n: int) -> bytes:
        out = b""
        while len(out) < n:
            base = addr - addr % PAGE
            piece = self._page(base)[addr - base : addr - base + n - len(out)]
            out += piece
            addr += len(piece)
        return out

    def string_array(self, addr: int, max_n: int, max_bytes: int) -> list[bytes]:
        """A NULL-terminated char*[] (argv/envp). NULL pointer -> []."""
        if addr == 0:
            return []
        out: list[bytes] = []
        total = 0
        for ptr in self.pointers(addr, max_n):
            s = self.cstring(ptr, limit=min(max_bytes - total, 128 * 1024) + 1)
            total += len(s) + 1
            if total > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes")
            out.append(s)
        return out


# -- what an exec asks for --------------------------------------------------------------------


_FD_PATH = re.compile(r"^/proc/\d+(?:/task/\d+)?/fd/\d+$")
_PROC_SELF = re.compile(r"^/proc/(self|thread-self)(?=/|$)")


@dataclass
class ExecRequest:
    """An execve/execveat as the caller asked for it (strings decoded with surrogateescape)."""

    pid: int
    syscall: str  # execve | execveat
    path: str  # as given
    argv: list[str]
    envp: list[str]
    binary: str | None  # resolved absolute path (symlinks followed), None if fileless
    cwd: str | None
    abspath: str | None = None  # the path made absolute (cwd / dirfd), symlinks kept
    fileless: str | None = None  # why this is a fileless / fd exec (memfd, AT_EMPTY_PATH, ...)
    fd_target: str | None = None  # what the fd points to (readlink), for the message
    error: str | None = None  # could not be read: the reason (the exec is then refused)
    too_large: bool = False
    env_names: set[str] = field(default_factory=set)


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _readlink(p: str) -> str | None:
    try:
        return os.readlink(p)
    except OSError:
        return None


def resolve_path(pid: int, path: str, base: str | None) -> tuple[str | None, str | None]:
    """Resolve `path` as process `pid` sees it -> (absolute real path, fd target if the path
    goes through a /proc/.../fd/N or /dev/fd/N magic link). /proc/self means `pid`, not us."""
    if not path.startswith("/"):
        if base is None:
            return None, None
        path = base.rstrip("/") + "/" + path
    seen = 0
    parts = [p for p in path.split("/") if p]
    done = ""
    while parts:
        comp = parts.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            done = done.rsplit("/", 1)[0]
            continue
        cand = done + "/" + comp
        m = _PROC_SELF.match(cand)
        if m:
            cand = f"/proc/{pid}"
        if _FD_PATH.match(cand):
            return None, _readlink(cand) or "?"
        try:
            st = os.lstat(cand)
        except OSError:
            done = cand
            continue
        if stat.S_ISLNK(st.st_mode):
            seen += 1
            if seen > 40:
                return None, None
            link = os.readlink(cand)
            if link.startswith("/"):
                done = ""
            parts = [p for p in link.split("/") if p] + parts
            continue
        done = cand
    return done or "/", None


def read_exec(listener: Listener, n: Notif) -> ExecRequest:
    """Read path, argv and envp of an execve/execveat notification from /proc/PID/mem."""
    names = SYSCALLS.get(n.arch)
    is_at = names is not None and n.nr == names[1]
    req = ExecRequest(pid=n.pid, syscall="execveat" if is_at else "execve", path="", argv=[],
                      envp=[], binary=None, cwd=None)
    if names is None or n.nr not in names[:2]:
        req.error = f"unexpected syscall nr {n.nr} arch {n.arch:#x} at the exec gate"
        return req
    a = n.args
    path_p, argv_p, envp_p = (a[1], a[2], a[3]) if is_at else (a[0], a[1], a[2])
    try:
        mem = MemReader(n.pid)
    except OSError as e:
        req.error = f"cannot open /proc/{n.pid}/mem: {e.strerror}"
        return req
    try:
        req.path = _dec(mem.cstring(path_p, PATH_MAX)) if path_p else ""
        req.argv = [_dec(s) for s in mem.string_array(argv_p, MAX_ARGS, MAX_ARG_BYTES)]
        req.envp = [_dec(s) for s in mem.string_array(envp_p, MAX_ARGS, MAX_ENV_BYTES)]
    except TooLarge as e:
        req.too_large = True
        req.error = f"argv/envp too large: {e}"
    except OSError as e:
        req.error = f"cannot read the exec arguments: {e.strerror or e}"
    finally:
        mem.close()
    req.env_names = {e.split("=", 1)[0] for e in req.envp}
    req.cwd = _readlink(f"/proc/{n.pid}/cwd")
    if req.error:
        return req
    base = req.cwd
    if is_at:
        dirfd = ctypes.c_int32(a[0] & 0xFFFFFFFF).value
        flags = a[4]
        if dirfd != AT_FDCWD:
            base = _readlink(f"/proc/{n.pid}/fd/{dirfd}")
            if flags & AT_EMPTY_PATH and req.path == "":
                req.fileless = "execveat(fd, \"\", AT_EMPTY_PATH)"
                req.fd_target = base or "?"
                return req
            if base is None or not base.startswith("/") or base.endswith(" (deleted)"):
                req.fileless = f"execveat relative to fd {dirfd}"
                req.fd_target = base or "?"
                return req
    binary, fd_target = resolve_path(n.pid, req.path, base)
    if fd_target is not None:
        req.fileless = f"exec through a file descriptor ({req.path})"
        req.fd_target = fd_target
        return req
    if binary is None:
        req.error = f"cannot resolve the exec path {req.path!r} (cwd {req.cwd!r})"
        return req
    if binary.startswith("/memfd:") or binary.endswith(" (deleted)"):
        req.fileless = f"exec of an unlinked or anonymous file ({req.path})"
        req.fd_target = binary or "?"
        return req
    req.binary = binary
    req.abspath = os.path.normpath(req.path if req.path.startswith("/") else
                                   os.path.join(base or "/", req.path))
    return req
