"""The eBPF exec tracer and verifier (bcc; the program is native/bpf/exectrace.c).
Why this module is long: one loaded BPF object. ExecTracer (~260 lines) owns the program, its maps
and the per-run watch table under one lock, and the event layouts beside it mirror
native/bpf/exectrace.c and change with it.

One ExecTracer per process (compiling costs ~0.7-1.4 s) watches any number of runs, each
identified by its cgroup id (what bpf_get_current_cgroup_id() returns: the inode number of the
cgroup dir). It reports fork / exec / exit of watched cgroups and VERIFIES every exec in the
kernel, at sched_process_exec, before the new image's first instruction:

    tracer = ExecTracer()
    tracer.watch(cgid, "enforce")        # before the run's first exec ("monitor", "trace")
    # the exec gate, for a seccomp notification of thread TID, BEFORE answering CONTINUE:
    tracer.expect(TID, st_dev, st_ino, tracer.hash_args(kernel_argv, envp), cgid)
    sel.register(tracer.fileno(), ...)   # readable when the ring buffer has data
    sel.register(tracer.event_fd(cgid), ...)  # readable when another thread queued our events
    events = tracer.consume(cgid)        # ForkEvent | ExecEvent | ExitEvent | LostEvent
    tracer.unwatch(cgid)

An exec whose image (device + inode of mm->exe_file) or argv + envp bytes (keyed SipHash-2-4)
differ from the expectation of the thread that called execve, or that has none, is killed by
the kernel (enforce) and reported (ExecEvent.verdict != "ok"). Watch modes: "enforce" kills,
"monitor" only reports, "trace" (no exec gate: --degraded exec-gate) expects nothing and
reports every exec with its identity for userspace to judge after the fact.

Fail closed: a report the ring buffer cannot take kills the exec and counts as lost; a kill the
kernel could not send (ExecEvent.kill_failed), lost events, and runs of the verifier the kernel
skipped (recursion_misses) are reported as LostEvent: the consumer ends the run.

Pid semantics: the expectation key is the caller's thread id as the kernel's initial pid
namespace numbers it (the tracepoint's old_pid); seccomp_notif.pid is numbered in the
supervisor's namespace, so the supervisor must live in the initial pid namespace (checked).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# all of glassbreak's C lives in native/ (the checkout `make setup` installs from)
BPF_SOURCE = Path(__file__).resolve().parents[2] / "native" / "bpf" / "exectrace.c"
EV_FORK, EV_EXEC, EV_EXIT = 1, 2, 3
LOST_CHECK_INTERVAL = 0.02
PROG_TYPE_RAW_TRACEPOINT = 17
W_KILL, W_TRACE = 1, 2
REASONS = {0: "ok", 1: "no-expectation", 2: "identity", 3: "hash", 4: "kernel-read",
           5: "user-read", 6: "layout", 7: "cgroup"}
ARGS_PREFIX = 512
WatchMode = Literal["enforce", "monitor", "trace"]


class _Small(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("tgid", ctypes.c_uint32), ("aux", ctypes.c_uint32),
                ("cgid", ctypes.c_uint64), ("ts", ctypes.c_uint64),
                ("comm", ctypes.c_char * 16)]


class _Exec(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("tgid", ctypes.c_uint32), ("old_pid", ctypes.c_uint32),
                ("cgid", ctypes.c_uint64), ("ts", ctypes.c_uint64),
                ("comm", ctypes.c_char * 16), ("reason", ctypes.c_uint32),
                ("sig_ret", ctypes.c_int32), ("have_exp", ctypes.c_uint32),
                ("flags", ctypes.c_uint32),
                ("exp_kdev", ctypes.c_uint64), ("exp_ino", ctypes.c_uint64),
                ("exp_hash", ctypes.c_uint64), ("kdev", ctypes.c_uint64),
                ("ino", ctypes.c_uint64), ("hash", ctypes.c_uint64),
                ("arg_len", ctypes.c_uint64), ("env_len", ctypes.c_uint64),
                ("ns", ctypes.c_uint64), ("filename", ctypes.c_char * 256),
                ("args", ctypes.c_uint8 * ARGS_PREFIX)]


_EXEC_HEAD = ctypes.sizeof(_Exec) - ARGS_PREFIX


def kdev_from_st_dev(st_dev: int) -> int:
    """stat()'s st_dev -> the kernel's internal dev_t (super_block.s_dev): MKDEV(major, minor)
    = major << 20 | minor."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def st_dev_from_kdev(kdev: int) -> int:
    """The kernel's dev_t -> stat()'s st_dev (new_encode_dev, what os.makedev builds)."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


@dataclass(frozen=True)
class ForkEvent:
    pid: int  # the new task (a thread id when a thread was created)
    ppid: int  # the tracepoint's parent pid
    cgroup_id: int
    ts: float
    comm: str = ""


@dataclass(frozen=True)
class ExecEvent:
    """One exec, as the kernel verified it at sched_process_exec."""

    pid: int  # the process id after exec
    old_pid: int  # the thread that called execve (the expectation's key)
    filename: str  # bprm->filename: the name the kernel opened (its own copy)
    cgroup_id: int
    ts: float
    verdict: str = "ok"  # ok | no-expectation | identity | hash | kernel-read | user-read |
    #                      layout | cgroup
    killed: bool = False  # SIGKILL queued before the image's first instruction
    kill_failed: bool = False  # a mismatch the kernel was told to kill but could not
    seen: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the image that runs
    expected: tuple[int, int] | None = None
    hash_seen: int = 0
    hash_expected: int = 0
    arg_len: int = 0
    env_len: int = 0
    ns: int = 0  # time the verdict took in the kernel
    args: bytes = b""  # mismatches and trace mode: the first bytes of the argv the kernel copied
    comm: str = ""
    tgid: int = 0

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    @property
    def args_truncated(self) -> bool:
        return self.arg_len > len(self.args)

    def kernel_argv(self) -> list[str]:
        """The first arguments the kernel copied (mismatches and trace mode; the last may be
        cut: see `args_truncated`)."""
        data = self.args[: self.arg_len]
        if data.endswith(b"\0"):
            data = data[:-1]
        return [_dec(x) for x in data.split(b"\0")] if data else []


@dataclass(frozen=True)
class ExitEvent:
    pid: int
    cgroup_id: int
    ts: float
    comm: str = ""


@dataclass(frozen=True)
class LostEvent:
    count: int
    cgroup_id: int
    source: str = "ring buffer"  # ring buffer | kill failed | verifier skipped


TraceEvent = ForkEvent | ExecEvent | ExitEvent | LostEvent


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def in_initial_pid_namespace() -> bool:
    """seccomp notifications number tids in our namespace, the tracepoint in the initial one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return len(line.split()) == 2
    except OSError:
        pass
    return False


class ExecTracer:
    """The loaded BPF programs and their maps. Thread-safe; usable from a long-lived daemon."""

    def __init__(self, ringbuf_pages: int = 1024) -> None:
        from bcc import BPF  # lazy: bcc import + compile are the expensive part

        from sandbox.kernel import bpfload, btf

        if ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        if not in_initial_pid_namespace():
            raise RuntimeError("the supervisor is not in the initial pid namespace: seccomp "
                               "notifications and sched_process_exec would number threads "
                               "differently (run the daemon with the host's pid namespace)")
        # the struct offsets come from BTF (~0.2 s in Python) while clang compiles (~1 s, the
        # GIL released): they go into a map before the verifier is loaded and attached
        offs: dict[str, Any] = {}

        def read_btf() -> None:
            try:
                offs["v"] = btf.exec_offsets()
            except Exception as e:  # noqa: BLE001 - raised below, in the caller's thread
                offs["e"] = e

        reader = threading.Thread(target=read_btf, name="gb-btf", daemon=True)
        reader.start()
        try:
            self._bpf = BPF(text=BPF_SOURCE.read_bytes(),
                            cflags=[f"-DRINGBUF_PAGES={ringbuf_pages}", "-w"])
        finally:
            reader.join()
        if "e" in offs:
            self._bpf.cleanup()
            raise offs["e"]
        omap = self._bpf[b"offsets"]
        leaf = omap.Leaf()
        for macro, value in offs["v"].items():
            setattr(leaf, macro.removeprefix("OFF_").lower(), value)
        leaf.ready = 1
        omap[omap.Key(0)] = leaf
        self._fn, self.insn_count = bpfload.load_with_callback(
            self._bpf, "gb_exec", "gb_chunk", PROG_TYPE_RAW_TRACEPOINT)
        self._watched = self._bpf[b"watched"]
        self._expect = self._bpf[b"expect"]
        self.key = secrets.token_bytes(16)
        keymap = self._bpf[b"sipkey"]
        leaf = keymap.Leaf()
        leaf.k0 = int.from_bytes(self.key[:8], "little")
        leaf.k1 = int.from_bytes(self.key[8:], "little")
        keymap[keymap.Key(0)] = leaf
        self._ring = self._bpf[b"events"]
        self._ring.open_ring_buffer(self._on_event)
        self._lock = threading.RLock()
        self._queues: dict[int, deque[TraceEvent]] = {}
        self._efds: dict[int, int] = {}
        self._lost_seen: dict[int, int] = {}
        self._lost_checked = 0.0
        self._misses = self.recursion_misses()
        self._touched: set[int] = set()
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: convert to wall time once
        self._mono_to_wall = time.time() - time.monotonic()
        self.unrouted = 0  # events for cgroups nobody watches any more (after unwatch)
        self._bpf.attach_raw_tracepoint(tp=b"sched_process_exec", fn_name=b"gb_exec")

    # -- watch list ---------------------------------------------------------------------------
    def watch(self, cgroup_id: int, mode: WatchMode = "enforce") -> None:
        with self._lock:
            leaf = self._watched.Leaf()
            leaf.flags = {"enforce": W_KILL, "monitor": 0, "trace": W_TRACE}[mode]
            leaf.lost = leaf.execs = leaf.kills = leaf.ns = 0
            self._watched[self._watched.Key(cgroup_id)] = leaf
            self._queues.setdefault(cgroup_id, deque())
            self._lost_seen.setdefault(cgroup_id, 0)

    def unwatch(self, cgroup_id: int) -> None:
        with self._lock:
            try:
                del self._watched[self._watched.Key(cgroup_id)]
            except KeyError:
                pass
            self._queues.pop(cgroup_id, None)
            self._lost_seen.pop(cgroup_id, None)
            efd = self._efds.pop(cgroup_id, None)
            if efd is not None:
                os.close(efd)

    def counters(self, cgroup_id: int) -> dict[str, int]:
        """execs verified, kills, lost reports, ns spent in the kernel for this cgroup."""
        leaf = self._watched.get(self._watched.Key(cgroup_id))
        if leaf is None:
            return {}
        return {"execs": int(leaf.execs), "kills": int(leaf.kills), "lost": int(leaf.lost),
                "ns": int(leaf.ns)}

    # -- expectations -------------------------------------------------------------------------
    @property
    def expect_map_fd(self) -> int:
        return int(self._expect.map_fd)

    def hash_args(self, argv: Sequence[bytes], envp: Sequence[bytes]) -> int:
        from sandbox.kernel.siphash import hash_args

        return hash_args(self.key, argv, envp)

    def expect(self, tid: int, st_dev: int, st_ino: int, hash_: int, cgroup_id: int) -> None:
        """The next exec of thread `tid` must run the file (st_dev, st_ino) with argv + envp
        hashing to `hash_`, in cgroup `cgroup_id`. Write it BEFORE answering CONTINUE."""
        leaf = self._expect.Leaf()
        leaf.kdev = kdev_from_st_dev(st_dev)
        leaf.ino = st_ino
        leaf.hash = hash_
        leaf.cgid = cgroup_id
        self._expect[self._expect.Key(tid)] = leaf

    def unexpect(self, tid: int) -> None:
        try:
            del self._expect[self._expect.Key(tid)]
        except KeyError:
            pass

    def expectation(self, tid: int) -> tuple[int, int, int, int] | None:
        """(st_dev, st_ino, hash, cgroup id) pending for `tid` (tests)."""
        leaf = self._expect.get(self._expect.Key(tid))
        if leaf is None:
            return None
        return st_dev_from_kdev(leaf.kdev), int(leaf.ino), int(leaf.hash), int(leaf.cgid)

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
        if kind == EV_EXEC and size >= _EXEC_HEAD:
            buf = (ctypes.c_uint8 * ctypes.sizeof(_Exec))()
            ctypes.memmove(buf, data, min(size, ctypes.sizeof(_Exec)))
            e = _Exec.from_buffer(buf)
            ev = self._exec(e, size > _EXEC_HEAD)
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
            return 0
        q.append(ev)
        if isinstance(ev, ExecEvent) and ev.kill_failed:
            q.append(LostEvent(1, ev.cgroup_id, "kill failed"))
        self._touched.add(ev.cgroup_id)
        return 0

    def _exec(self, e: _Exec, with_args: bool) -> ExecEvent:
        reason = REASONS.get(e.reason, f"reason-{e.reason}")
        tried = reason != "ok" and bool(e.flags & W_KILL)
        return ExecEvent(
            pid=e.pid, old_pid=e.old_pid, filename=_dec(e.filename), cgroup_id=e.cgid,
            ts=self._mono_to_wall + e.ts / 1e9, verdict=reason,
            killed=tried and e.sig_ret == 0, kill_failed=tried and e.sig_ret != 0,
            seen=(st_dev_from_kdev(e.kdev), int(e.ino)),
            expected=(st_dev_from_kdev(e.exp_kdev), int(e.exp_ino)) if e.have_exp else None,
            hash_seen=int(e.hash), hash_expected=int(e.exp_hash), arg_len=int(e.arg_len),
            env_len=int(e.env_len), ns=int(e.ns),
            args=bytes(e.args)[: min(int(e.arg_len), ARGS_PREFIX)] if with_args else b"",
            comm=_dec(e.comm), tgid=e.tgid)

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
        misses = self.recursion_misses()
        skipped = misses - self._misses
        self._misses = misses
        for cg, seen in list(self._lost_seen.items()):
            q = self._queues.get(cg)
            if q is None:
                continue
            if skipped > 0:  # the program is global: every watched run may be affected
                q.append(LostEvent(count=skipped, cgroup_id=cg, source="verifier skipped"))
                self._touched.add(cg)
            leaf = self._watched.get(self._watched.Key(cg))
            if leaf is None or leaf.lost == seen:
                continue
            self._lost_seen[cg] = leaf.lost
            q.append(LostEvent(count=int(leaf.lost - seen), cgroup_id=cg))
            self._touched.add(cg)

    def recursion_misses(self) -> int:
        """Runs of the exec verifier the kernel skipped (each an exec that ran unverified)."""
        try:
            for line in Path(f"/proc/self/fdinfo/{self._fn.fd}").read_text().splitlines():
                k, _, v = line.partition(":")
                if k == "recursion_misses":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

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


def cgroup_id_of(path: str | os.PathLike[str]) -> int:
    """The cgroup id of a cgroup v2 directory, as bpf_get_current_cgroup_id() returns it."""
    return os.stat(path).st_ino
