"""seccomp user-notification: receive execve/execveat notifications, read what the caller asked
for from /proc/PID/mem, answer CONTINUE or an errno.
Why this module is long: one kernel interface: the user-notification ABI (ioctls, struct sizes), the
listener, and MemReader, which reads the caller's strings from /proc/PID/mem under the rules below
(zeroed buffers, NOTIF_ID_VALID after every read).

The kernel side (seccomp(2), SECCOMP_FILTER_FLAG_NEW_LISTENER):
- every notification MUST be answered; a notification left unanswered blocks the caller until
  the listener fd closes (then the kernel fails the syscall with ENOSYS);
- the receive buffer must be zeroed before every SECCOMP_IOCTL_NOTIF_RECV (else EINVAL);
- strings read from the caller's memory are racy (another thread can rewrite them after we read
  them): check NOTIF_ID_VALID after reading, and never make CONTINUE the only check (the
  in-kernel verification at sched_process_exec compares the image and the argv the kernel really
  copied with what was judged, and kills a difference before the first instruction).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate, repeat
from operator import add

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

    def respond_ok(self, notif_id: int) -> bool:
        """The syscall returns 0 (the supervisor performed it on the caller's behalf)."""
        return self._send(notif_id, 0, 0)

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

# The kernel's own limits on what an exec may pass (fs/exec.c, include/uapi/linux/binfmts.h):
# each string at most MAX_ARG_STRLEN bytes with its NUL, and all argv + envp strings plus their
# pointers within 3/4 of _STK_LIM (less when RLIMIT_STACK is smaller: the kernel then refuses
# with E2BIG itself). There is no limit on the number of entries beyond that.
MAX_ARG_STRLEN = 32 * 4096
ARG_MAX_KERNEL = 6 << 20


class TooLarge(Exception):
    """More than the kernel accepts: the exec would fail with E2BIG (the gate says so)."""


class MemReader:
    """pread over /proc/PID/mem in blocks of up to 64 KiB starting at the page of the address
    asked for (argv and envp strings and their pointer arrays are contiguous on the caller's
    stack, usually), cached for one notification; a block that runs into an unmapped page ends
    there."""

    BLOCK = 1 << 16

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        self._blocks: dict[int, bytes] = {}
        self._last = (0, b"")

    def close(self) -> None:
        os.close(self.fd)

    def _block(self, addr: int) -> tuple[int, bytes]:
        """(base, bytes) of a cached block that holds addr."""
        base, data = self._last
        if base <= addr < base + len(data):
            return base, data
        base = addr - addr % PAGE
        data = self._blocks.get(base, b"")
        if not data:
            try:
                data = os.pread(self.fd, self.BLOCK, base)
            except OSError:
                data = b""
            if not data:  # the block runs into an unmapped page: up to it, page by page
                parts: list[bytes] = []
                for off in range(0, self.BLOCK, PAGE):
                    try:
                        p = os.pread(self.fd, PAGE, base + off)
                    except OSError:
                        break
                    if not p:
                        break
                    parts.append(p)
                data = b"".join(parts)
            if not data:
                raise OSError(errno_mod.EFAULT, f"cannot read the caller's memory at {addr:#x}")
            if len(self._blocks) >= 256:  # 16 MiB: more than the kernel's own limit
                self._blocks.clear()
            self._blocks[base] = data
        self._last = (base, data)
        return base, data

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            base, blk = self._block(addr)
            piece = blk[addr - base: addr - base + n - len(out)]
            out += piece
            addr += len(piece)
        return bytes(out)

    def cstring(self, addr: int, limit: int = MAX_ARG_STRLEN) -> bytes:
        """The NUL-terminated string at addr, without its NUL (at most limit - 1 bytes)."""
        if addr == 0:
            raise OSError(errno_mod.EFAULT, "NULL string pointer")
        base, blk = self._block(addr)
        off = addr - base
        end = blk.find(b"\0", off, off + limit)
        if end >= 0:
            return blk[off:end]
        out = bytearray(blk[off:off + limit])
        addr = base + len(blk)
        while len(out) < limit:
            base, blk = self._block(addr)
            end = blk.find(b"\0", 0, limit - len(out))
            if end >= 0:
                return bytes(out + blk[:end])
            out += blk[: limit - len(out)]
            addr = base + len(blk)
        raise TooLarge(f"a string longer than {limit - 1} bytes (MAX_ARG_STRLEN)")

    def pointers(self, addr: int, max_n: int) -> list[int]:
        """A NULL-terminated array of 8-byte pointers (without the NULL); more than max_n
        entries raises TooLarge."""
        out: list[int] = []
        while True:
            if addr % 8 == 0:
                base, blk = self._block(addr)
                off = addr - base
                n = (len(blk) - off) // 8
                chunk = list(struct.unpack_from(f"<{n}Q", blk, off)) if n > 0 else []
            else:
                n = 0
                chunk = []
            if n <= 0:  # unaligned, or a pointer straddling blocks
                n, chunk = 1, [int.from_bytes(self.read(addr, 8), "little")]
            try:
                end = chunk.index(0)
            except ValueError:
                end = -1
            if end >= 0:
                out.extend(chunk[:end])
                return out
            out.extend(chunk)
            if len(out) > max_n:
                raise TooLarge(f"more than {max_n} entries")
            addr += 8 * n

    def string_array(self, addr: int, budget: list[int]) -> list[bytes]:
        """A NULL-terminated char*[] (argv/envp). NULL pointer -> []. `budget` ([bytes left])
        is shared by argv and envp: strings with their NULs and the pointers count against
        the kernel's own limit."""
        if addr == 0:
            return []
        ptrs = self.pointers(addr, budget[0] // 8)
        budget[0] -= 8 * len(ptrs)
        out = self._contiguous(ptrs, budget[0])
        if out is not None:
            budget[0] -= ptrs[-1] - ptrs[0] + len(out[-1]) + 1  # the region, NULs included
            return out
        out = []
        for ptr in ptrs:
            s = self.cstring(ptr)
            budget[0] -= len(s) + 1
            if budget[0] < 0:
                raise TooLarge(f"argv and envp larger than the kernel's {ARG_MAX_KERNEL} bytes")
            out.append(s)
        return out

    def _contiguous(self, ptrs: list[int], budget: int) -> list[bytes] | None:
        """The strings, when they lie back to back in ascending order (xargs, execv from a
        built argv): one read of the region and one split instead of a read per string. None
        when they do not (then each is read on its own)."""
        if len(ptrs) < 64:
            return None
        first, last = ptrs[0], ptrs[-1]
        if last < first or last - first > budget:
            return None  # (a region larger than the budget: read one by one, to say why)
        try:
            head = self.read(first, last - first)
            tail = self.cstring(last)
        except (OSError, TooLarge):
            return None
        parts = head.split(b"\0")
        if len(parts) != len(ptrs) or parts[-1] != b"":
            return None
        parts[-1] = tail
        # where each string starts if they are back to back (C-level iteration only)
        starts = list(accumulate(map(add, map(len, parts[:-1]), repeat(1)), initial=first))
        if starts != ptrs:
            return None
        if len(head) + len(tail) >= MAX_ARG_STRLEN and max(map(len, parts)) >= MAX_ARG_STRLEN:
            return None  # one string too long: read one by one, to say which
        if len(head) + len(tail) + 1 > budget:
            raise TooLarge(f"argv and envp larger than the kernel's {ARG_MAX_KERNEL} bytes")
        return parts


# -- what an exec asks for --------------------------------------------------------------------


@dataclass
class ExecRequest:
    """An execve/execveat as the caller asked for it (bytes, exactly as in its memory)."""

    pid: int  # the calling thread
    syscall: str  # execve | execveat
    dirfd: int
    path: bytes
    argv: list[bytes]
    envp: list[bytes]
    flags: int = 0
    cwd: str | None = None  # the caller's cwd in our view (readlink), for messages
    error: str | None = None  # could not be read: the reason (the exec is then refused)
    too_large: bool = False  # more than the kernel accepts: E2BIG

    @cached_property
    def argv_str(self) -> list[str]:
        return [_dec(a) for a in self.argv]

    @cached_property
    def envp_str(self) -> list[str]:
        return [_dec(e) for e in self.envp]

    @property
    def path_str(self) -> str:
        return _dec(self.path)


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _readlink(p: str) -> str | None:
    try:
        return os.readlink(p)
    except OSError:
        return None


def read_exec(listener: Listener, n: Notif, *, args: bool = True) -> ExecRequest:
    """Read path, argv and envp of an execve/execveat notification from /proc/PID/mem.
    args=False reads the path only (read_args() reads the rest): the kernel opens the file
    before it looks at argv (alloc_bprm, Linux >= 6.7), so an exec of a missing path (every
    PATH entry execvp tries) is answered without reading megabytes of argv."""
    names = SYSCALLS.get(n.arch)
    is_at = names is not None and n.nr == names[1]
    req = ExecRequest(pid=n.pid, syscall="execveat" if is_at else "execve", dirfd=AT_FDCWD,
                      path=b"", argv=[], envp=[])
    if names is None or n.nr not in names[:2]:
        req.error = f"unexpected syscall nr {n.nr} arch {n.arch:#x} at the exec gate"
        return req
    a = n.args
    path_p = a[1] if is_at else a[0]
    if is_at:
        req.dirfd = ctypes.c_int32(a[0] & 0xFFFFFFFF).value
        req.flags = a[4] & 0xFFFFFFFF
    req.cwd = _readlink(f"/proc/{n.pid}/cwd")
    try:
        mem = MemReader(n.pid)
    except OSError as e:
        req.error = f"cannot open /proc/{n.pid}/mem: {e.strerror}"
        return req
    try:
        req.path = mem.cstring(path_p, PATH_MAX) if path_p else b""
        if args:
            _read_args(req, n, mem)
    except TooLarge as e:
        req.too_large = True
        req.error = str(e)
    except OSError as e:
        req.error = f"cannot read the exec arguments: {e.strerror or e}"
    finally:
        mem.close()
    return req


def read_args(req: ExecRequest, n: Notif) -> None:
    """The argv and envp of a request read with args=False (req.error / too_large on failure)."""
    try:
        mem = MemReader(n.pid)
    except OSError as e:
        req.error = f"cannot open /proc/{n.pid}/mem: {e.strerror}"
        return
    try:
        _read_args(req, n, mem)
    except TooLarge as e:
        req.too_large = True
        req.error = str(e)
    except OSError as e:
        req.error = f"cannot read the exec arguments: {e.strerror or e}"
    finally:
        mem.close()


def _read_args(req: ExecRequest, n: Notif, mem: MemReader) -> None:
    a = n.args
    argv_p, envp_p = (a[2], a[3]) if req.syscall == "execveat" else (a[1], a[2])
    budget = [ARG_MAX_KERNEL]
    req.argv = mem.string_array(argv_p, budget)
    req.envp = mem.string_array(envp_p, budget)
