"""The native seccomp user-notification responder (native/gbresp.c, built by
scripts/setup.sh into $VENV/lib/libgbresp.so with native/siphash.c; GLASSBREAK_NATIVE_LIB=PATH
names another build; sandbox.kernel.nativelib loads it), driven from Python.

It runs in a thread of the supervisor (a ctypes call releases the GIL) and owns the RECV side of
one run's listener. It answers CONTINUE itself only for a plain execve of a path in the run's
fast-allow set that names, in the caller's own root, the same file (device, inode, ctime) the
entry was learned from, with argv/envp read completely and no injection variable; before it
answers it writes the exec's expectation for the in-kernel verifier (`set_verify`). It queues a
record of each such exec ('F', before answering) that `take()` collects without any wake-up per
exec; everything else it forwards unchanged ('N' on `fileno()`, a SOCK_SEQPACKET socket) for
Python to judge and answer on the same listener fd. When the library is missing, `load()`
returns None and the exec gate does everything in Python (same decisions, slower; the SipHash
falls back to sandbox.kernel.siphash's Python twin). GLASSBREAK_NO_NATIVE=1 forces that.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Any

from sandbox.kernel.nativelib import lib_path, load, reset

__all__ = ["Record", "Responder", "lib_path", "load", "parse", "reset"]

HDR = struct.Struct("<c3xIQII")  # type, pid, notification id, argc, errno
IDENT = struct.Struct("<QQ")  # record F: st_dev, st_ino of the file it resolved
DATA = struct.Struct("<iIQ6Q")  # seccomp_data: nr, arch, instruction pointer, args


@dataclass(frozen=True)
class Record:
    kind: str  # F: continued natively, N: forwarded, W: take(), E: listener gone, X: error
    pid: int = 0
    id: int = 0
    path: str = ""
    argv: tuple[str, ...] = ()
    nr: int = 0
    arch: int = 0
    args: tuple[int, ...] = ()
    err: int = 0
    ident: tuple[int, int] = (0, 0)  # F: (st_dev, st_ino) of the file, in the caller's root


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def parse(msg: bytes) -> Record | None:
    if len(msg) < HDR.size:
        return None
    kind_b, pid, nid, argc, err = HDR.unpack_from(msg)
    kind = kind_b.decode("ascii", "replace")
    if kind == "F" and len(msg) >= HDR.size + IDENT.size:
        dev, ino = IDENT.unpack_from(msg, HDR.size)
        parts = msg[HDR.size + IDENT.size:].split(b"\0")
        return Record("F", pid, nid, _dec(parts[0]), tuple(_dec(p) for p in parts[1:1 + argc]),
                      ident=(dev, ino))
    if kind == "N" and len(msg) >= HDR.size + DATA.size:
        nr, arch, _ip, *args = DATA.unpack_from(msg, HDR.size)
        return Record("N", pid, nid, nr=nr, arch=arch, args=tuple(args))
    return Record(kind, err=err)


class Responder:
    """One run's native responder thread. Python keeps using `listener_fd` for answers (NOT for
    RECV). close() stops the thread; the caller closes the listener fd afterwards."""

    def __init__(self, lib: Any, listener_fd: int) -> None:
        self._lib = lib
        self._py, self._c = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._py.setblocking(False)
        self._stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._h = lib.gb_new(listener_fd, self._c.fileno())
        if not self._h:
            self._close_fds()
            raise OSError("the native exec responder could not be created")
        self._qsize = int(lib.gb_queue_size())
        self._buf = ctypes.create_string_buffer(self._qsize)
        self.result: int | None = None
        self._thread = threading.Thread(target=self._serve, name="gb-unotify", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.result = int(self._lib.gb_serve(self._h, self._stop))

    def fileno(self) -> int:
        return self._py.fileno()

    def set_allow(self, entries: Any) -> None:
        """The fast-allow set: (path, st_dev, st_ino, st_ctime_ns) per entry."""
        blob = b"".join(f"{dev} {ino} {ctime} ".encode() + p.encode("utf-8", "surrogateescape")
                        + b"\0" for p, dev, ino, ctime in sorted(entries))
        if self._h:
            self._lib.gb_set_allow(self._h, blob, len(blob))

    def set_verify(self, map_fd: int, key: bytes, cgroup_id: int) -> None:
        """The in-kernel verifier's expectation map and key: without them nothing is
        continued natively."""
        if self._h:
            self._lib.gb_set_verify(self._h, map_fd, key, cgroup_id)

    def take(self) -> list[Record]:
        """The execs continued natively since the last take ('F' records, in order)."""
        if not self._h:
            return []
        n = int(self._lib.gb_take(self._h, self._buf, self._qsize))
        if not n:
            return []
        raw = self._buf.raw[:n]
        out: list[Record] = []
        off = 0
        while off + 4 <= n:
            ln = int.from_bytes(raw[off:off + 4], "little")
            rec = parse(raw[off + 4:off + 4 + ln])
            if rec is not None:
                out.append(rec)
            off += 4 + ln
        return out

    def read(self) -> list[Record]:
        """Messages on the socket ('N', 'W', 'E', 'X'), without blocking."""
        out: list[Record] = []
        while True:
            try:
                msg = self._py.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return out
            if not msg:
                out.append(Record("X", err=0))  # the thread is gone without a word
                return out
            rec = parse(msg)
            if rec is not None:
                out.append(rec)

    def counts(self) -> tuple[int, int, int]:
        """(continued natively, forwarded, nanoseconds spent on notifications)."""
        if not self._h:
            return 0, 0, 0
        return (int(self._lib.gb_stat(self._h, 0)), int(self._lib.gb_stat(self._h, 1)),
                int(self._lib.gb_stat(self._h, 2)))

    def missing(self) -> int:
        """Exec paths answered ENOENT natively (not fast-allowed and not there: PATH misses)."""
        return int(self._lib.gb_stat(self._h, 3)) if self._h else 0

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop answering (the thread ends); records can still be taken until close()."""
        if self._h:
            os.eventfd_write(self._stop, 1)
            self._thread.join(timeout=5)

    def close(self) -> None:
        if not self._h:
            return
        self.stop()
        if not self._thread.is_alive():  # never free what a stuck thread may still use
            self._lib.gb_free(self._h)
            self._h = None
            self._close_fds()

    def _close_fds(self) -> None:
        self._py.close()
        self._c.close()
        os.close(self._stop)
