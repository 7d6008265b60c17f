"""The eBPF exec tracer (bcc): fork / exec / exit of watched cgroups, and the exec hold.

One ExecTracer per process (compiling costs ~0.7 s) watches any number of runs, each identified
by its cgroup id (what bpf_get_current_cgroup_id() returns: the inode number of the cgroup dir).
Events come through one ring buffer and are sorted into per-cgroup queues, so several runs (and
several threads of a daemon) can share the tracer:

    tracer = ExecTracer()
    tracer.watch(cgid)                  # before the run's first exec
    tracer.set_fast_allow(cgid, paths)  # exact exec filenames continued without a hold
    sel.register(tracer.fileno(), ...)  # readable when the ring buffer has data
    sel.register(tracer.event_fd(cgid), ...)  # readable when another thread queued our events
    events = tracer.consume(cgid)       # ForkEvent | ExecEvent | ExitEvent | LostEvent
    tracer.unwatch(cgid)

A held ExecEvent (held=True) is a process stopped with SIGSTOP before its first instruction: the
consumer must release it (SIGCONT) or kill it. Lost events are counted per cgroup in the kernel
(and the unreportable exec is killed there); consume() reports them as LostEvent.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# all of glassbreak's C lives in native/ (the checkout `make setup` installs from)
BPF_SOURCE = Path(__file__).resolve().parents[2] / "native" / "bpf" / "exectrace.c"
FAST_PATH = 128
EV_FORK, EV_EXEC, EV_EXIT = 1, 2, 3
LOST_CHECK_INTERVAL = 0.02


class _Small(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("tgid", ctypes.c_uint32), ("aux", ctypes.c_uint32),
                ("cgid", ctypes.c_uint64), ("ts", ctypes.c_uint64),
                ("comm", ctypes.c_char * 16)]


class _Exec(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("tgid", ctypes.c_uint32), ("old_pid", ctypes.c_uint32),
                ("cgid", ctypes.c_uint64), ("ts", ctypes.c_uint64),
                ("comm", ctypes.c_char * 16), ("held", ctypes.c_uint32),
                ("truncated", ctypes.c_uint32), ("kcgid", ctypes.c_uint64),
                ("filename", ctypes.c_char * 256)]


@dataclass(frozen=True)
class ForkEvent:
    pid: int  # the new task (a thread id when a thread was created)
    ppid: int  # the tracepoint's parent pid
    cgroup_id: int
    ts: float
    comm: str = ""


@dataclass(frozen=True)
class ExecEvent:
    pid: int  # the process id after exec
    tgid: int
    filename: str  # the kernel's own copy of the exec'd path (not racy against user memory)
    held: bool  # SIGSTOP sent: release (SIGCONT) or kill
    cgroup_id: int
    ts: float
    old_pid: int = 0
    comm: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class ExitEvent:
    pid: int
    cgroup_id: int
    ts: float
    exit_code: int | None = None  # the tracepoint carries no status (waitpid has it)
    signal: int | None = None
    comm: str = ""


@dataclass(frozen=True)
class LostEvent:
    count: int
    cgroup_id: int


TraceEvent = ForkEvent | ExecEvent | ExitEvent | LostEvent


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class ExecTracer:
    """The loaded BPF program and its maps. Thread-safe; usable from a long-lived daemon."""

    def __init__(self, ringbuf_pages: int = 1024) -> None:
        from bcc import BPF  # lazy: bcc import + compile are the expensive part

        if ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        text = BPF_SOURCE.read_text()
        self._bpf = BPF(text=text.encode(), cflags=[f"-DRINGBUF_PAGES={ringbuf_pages}", "-w"])
        self._watched = self._bpf[b"watched"]
        self._fast = self._bpf[b"fast_allow"]
        self._ring = self._bpf[b"events"]
        self._ring.open_ring_buffer(self._on_event)
        self._lock = threading.RLock()
        self._queues: dict[int, deque[TraceEvent]] = {}
        self._efds: dict[int, int] = {}
        self._fast_paths: dict[int, set[str]] = {}
        self._lost_seen: dict[int, int] = {}
        self._lost_checked = 0.0
        self._touched: set[int] = set()
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: convert to wall time once
        self._mono_to_wall = time.time() - time.monotonic()
        self.unrouted = 0  # events for cgroups nobody watches any more (after unwatch)

    # -- watch list ---------------------------------------------------------------------------
    def watch(self, cgroup_id: int, hold: bool = True) -> None:
        with self._lock:
            leaf = self._watched.Leaf()
            old = self._watched.get(self._watched.Key(cgroup_id))
            leaf.lost = old.lost if old is not None else 0
            leaf.hold = 1 if hold else 0
            self._watched[self._watched.Key(cgroup_id)] = leaf
            self._queues.setdefault(cgroup_id, deque())
            self._lost_seen.setdefault(cgroup_id, leaf.lost)

    def unwatch(self, cgroup_id: int) -> None:
        with self._lock:
            try:
                del self._watched[self._watched.Key(cgroup_id)]
            except KeyError:
                pass
            self.set_fast_allow(cgroup_id, ())
            self._queues.pop(cgroup_id, None)
            self._lost_seen.pop(cgroup_id, None)
            self._fast_paths.pop(cgroup_id, None)
            efd = self._efds.pop(cgroup_id, None)
            if efd is not None:
                os.close(efd)

    def set_fast_allow(self, cgroup_id: int, paths: Any) -> None:
        """Exact exec filenames (as the kernel sees them) continued without a hold for this
        cgroup. Paths of FAST_PATH-1 bytes or more are ignored (never fast)."""
        new = {p for p in paths if 0 < len(p.encode()) < FAST_PATH - 1}
        with self._lock:
            old = self._fast_paths.get(cgroup_id, set())
            for p in old - new:
                try:
                    del self._fast[self._key(cgroup_id, p)]
                except KeyError:
                    pass
            one = ctypes.c_uint8(1)
            for p in new - old:
                self._fast[self._key(cgroup_id, p)] = one
            self._fast_paths[cgroup_id] = new

    def fast_allow(self, cgroup_id: int) -> set[str]:
        return set(self._fast_paths.get(cgroup_id, set()))

    def _key(self, cgroup_id: int, path: str) -> Any:
        k = self._fast.Key()
        k.cgid = cgroup_id
        k.path = path.encode()
        return k

    # -- events -------------------------------------------------------------------------------
    def fileno(self) -> int:
        """The ring buffer map fd: pollable, readable when events are waiting."""
        return int(self._ring.map_fd)

    def event_fd(self, cgroup_id: int) -> int:
        """An eventfd made readable when events for this cgroup were queued by someone else's
        poll (several consumers sharing the tracer)."""
        with self._lock:
            efd = self._efds.get(cgroup_id)
            if efd is None:
                efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._efds[cgroup_id] = efd
            return efd

    def _on_event(self, _ctx: Any, data: Any, size: int) -> int:
        kind = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32)).contents.value
        ev: TraceEvent
        if kind == EV_EXEC and size >= ctypes.sizeof(_Exec):
            e = ctypes.cast(data, ctypes.POINTER(_Exec)).contents
            ev = ExecEvent(pid=e.pid, tgid=e.tgid, filename=_dec(e.filename), held=bool(e.held),
                           cgroup_id=e.cgid, ts=self._mono_to_wall + e.ts / 1e9,
                           old_pid=e.old_pid, comm=_dec(e.comm), truncated=bool(e.truncated))
        elif kind in (EV_FORK, EV_EXIT) and size >= ctypes.sizeof(_Small):
            s = ctypes.cast(data, ctypes.POINTER(_Small)).contents
            ts = self._mono_to_wall + s.ts / 1e9
            if kind == EV_FORK:
                ev = ForkEvent(pid=s.pid, ppid=s.aux, cgroup_id=s.cgid, ts=ts, comm=_dec(s.comm))
            else:
                ev = ExitEvent(pid=s.pid, cgroup_id=s.cgid, ts=ts, comm=_dec(s.comm))
        else:
            return 0
        q = self._queues.get(ev.cgroup_id)
        if q is None:
            self.unrouted += 1
            if isinstance(ev, ExecEvent) and ev.held:
                _kill(ev.pid)  # held for a run that is gone: never leave it stopped
            return 0
        q.append(ev)
        self._touched.add(ev.cgroup_id)
        return 0

    def poll(self) -> None:
        """Drain the ring buffer into the per-cgroup queues (no syscall when it is empty)."""
        with self._lock:
            self._bpf.ring_buffer_consume()
            now = time.monotonic()
            if now - self._lost_checked >= LOST_CHECK_INTERVAL:
                self._check_lost()
                self._lost_checked = now
            touched, self._touched = self._touched, set()
            for cg in touched:
                efd = self._efds.get(cg)
                if efd is not None:
                    os.eventfd_write(efd, 1)

    def _check_lost(self) -> None:
        for cg, seen in list(self._lost_seen.items()):
            leaf = self._watched.get(self._watched.Key(cg))
            if leaf is None or leaf.lost == seen:
                continue
            self._lost_seen[cg] = leaf.lost
            q = self._queues.get(cg)
            if q is not None:
                q.append(LostEvent(count=int(leaf.lost - seen), cgroup_id=cg))
                self._touched.add(cg)

    def consume(self, cgroup_id: int | None = None, *, check_lost: bool = False
                ) -> list[TraceEvent]:
        """Poll, then return (and forget) the queued events of one cgroup (or of all)."""
        with self._lock:
            if check_lost:
                self._lost_checked = 0.0
            self.poll()
            if cgroup_id is not None:
                efd = self._efds.get(cgroup_id)
                if efd is not None:
                    try:
                        os.eventfd_read(efd)
                    except BlockingIOError:
                        pass
                q = self._queues.get(cgroup_id)
                if not q:
                    return []
                out = list(q)
                q.clear()
                return out
            allq: list[TraceEvent] = []
            for q in self._queues.values():
                allq.extend(q)
                q.clear()
            return allq

    def lost(self, cgroup_id: int) -> int:
        with self._lock:
            leaf = self._watched.get(self._watched.Key(cgroup_id))
            return int(leaf.lost) if leaf is not None else 0

    def close(self) -> None:
        with self._lock:
            for efd in self._efds.values():
                os.close(efd)
            self._efds.clear()
            self._bpf.cleanup()


@dataclass
class TraceView:
    """A held process as the kernel wrote it: the image that runs and its authoritative argv."""

    pid: int
    filename: str  # the exec'd name (kernel copy)
    binary: str | None = None  # what to judge: /proc/PID/exe, or the script for `#!` files
    argv: list[str] = field(default_factory=list)
    envp: list[str] = field(default_factory=list)
    cwd: str | None = None
    env_path: str | None = None
    exe: str | None = None
    script: bool = False
    fileless: str | None = None
    error: str | None = None


def _read(path: str, limit: int = 1 << 20) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = b""
        while len(out) < limit:
            chunk = os.read(fd, min(65536, limit - len(out)))
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(fd)


def _split0(data: bytes) -> list[str]:
    if data.endswith(b"\0"):
        data = data[:-1]
    return [_dec(x) for x in data.split(b"\0")] if data else []


def read_trace_view(pid: int, filename: str) -> TraceView:
    """Read /proc/PID/exe, cmdline, environ, cwd of a held (stopped) process. For a script
    (`#!` file whose interpreter is the running image) the script path and its argv are judged:
    the interpreter's cmdline is [interp, (arg), script, args...]."""
    v = TraceView(pid=pid, filename=filename)
    try:
        v.exe = os.readlink(f"/proc/{pid}/exe")
        v.cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = _split0(_read(f"/proc/{pid}/cmdline"))
        v.envp = _split0(_read(f"/proc/{pid}/environ"))
    except OSError as e:
        v.error = f"cannot read /proc/{pid} of the held exec: {e.strerror}"
        return v
    v.env_path = next((e[5:] for e in v.envp if e.startswith("PATH=")), None)
    v.binary, v.argv = v.exe, cmdline
    if v.exe.startswith("/memfd:") or v.exe.endswith(" (deleted)"):
        v.fileless = f"the running image is an anonymous or unlinked file ({v.exe})"
        return v
    if filename.startswith(("/dev/fd/", "/proc/")):
        v.fileless = f"exec through a file descriptor ({filename})"
        return v
    path = filename if filename.startswith("/") else os.path.join(v.cwd, filename)
    real = os.path.realpath(path)
    if real == v.exe:
        v.binary = os.path.normpath(path)  # the same image, under the name it was run by
    elif _interpreter_of(real) == v.exe:
        v.script = True
        v.binary = os.path.normpath(path)
        idx = next((i for i in range(1, min(len(cmdline), 4)) if cmdline[i] == filename), None)
        v.argv = [filename] + (cmdline[idx + 1:] if idx is not None else [])
    return v


def _interpreter_of(path: str) -> str | None:
    """The realpath of a `#!` file's interpreter, or None when `path` is not a script."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    parts = head[2:].split(b"\n", 1)[0].strip().split(None, 1)
    return os.path.realpath(_dec(parts[0])) if parts else None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def cgroup_id_of(path: str | os.PathLike[str]) -> int:
    """The cgroup id of a cgroup v2 directory, as bpf_get_current_cgroup_id() returns it."""
    return os.stat(path).st_ino
