"""sandbox.kernel.ebpf against the real kernel: fork/exec/exit events of a watched cgroup, the
SIGSTOP hold before the first instruction, the fast-allow map, per-cgroup routing, and
loss -> kill."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import is_root, require

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def tracer() -> Iterator[object]:
    require(is_root(), "eBPF needs root")
    try:
        from sandbox.kernel.ebpf import ExecTracer

        t = ExecTracer()
    except Exception as e:  # noqa: BLE001
        require(False, f"the eBPF tracer cannot start here: {e}")
        raise
    yield t
    t.close()


@pytest.fixture
def cg() -> Iterator[tuple[Path, int]]:
    from sandbox.kernel.cgroup import cgroup2_mount

    p = cgroup2_mount() / f"gb-test-ebpf-{os.getpid()}-{time.monotonic_ns()}"
    p.mkdir()
    try:
        yield p, os.stat(p).st_ino
    finally:
        try:
            (p / "cgroup.kill").write_text("1")
        except OSError:
            pass
        for _ in range(100):
            try:
                p.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def _start(cgdir: Path, argv: list[str]) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(w)
        (cgdir / "cgroup.procs").write_text("0")
        os.read(r, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execv(argv[0], argv)
    os.close(r)
    return pid, w


def _drive(tracer, cgid: int, pid: int, release: bool = True, timeout: float = 10):  # type: ignore
    evs = []
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        for ev in tracer.consume(cgid):
            evs.append(ev)
            if getattr(ev, "held", False):
                os.kill(ev.pid, signal.SIGCONT if release else signal.SIGKILL)
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            status = st
            break
        time.sleep(0.005)
    time.sleep(0.02)
    evs += tracer.consume(cgid, check_lost=True)
    assert status is not None, "the traced child hung"
    return evs, status


def test_fork_exec_exit_and_hold(tracer, cg) -> None:  # type: ignore[no-untyped-def]
    from sandbox.kernel.ebpf import ExecEvent, ExitEvent, ForkEvent

    cgdir, cgid = cg
    tracer.watch(cgid)
    try:
        tracer.set_fast_allow(cgid, ["/usr/bin/true"])
        pid, w = _start(cgdir, ["/bin/sh", "-c", "/usr/bin/true; /bin/echo hi; exit 3"])
        os.write(w, b"x")
        evs, st = _drive(tracer, cgid, pid)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(st) == 3
    execs = [e for e in evs if isinstance(e, ExecEvent)]
    assert [(e.filename, e.held) for e in execs] == [
        ("/bin/sh", True), ("/usr/bin/true", False), ("/bin/echo", True)]
    forks = [e for e in evs if isinstance(e, ForkEvent)]
    assert len(forks) == 2 and all(f.ppid == pid for f in forks)
    exits = {e.pid for e in evs if isinstance(e, ExitEvent)}
    assert pid in exits and {f.pid for f in forks} <= exits
    assert all(e.cgroup_id == cgid for e in evs)


def test_held_image_never_runs_when_killed(tracer, cg, tmp_path: Path) -> None:  # type: ignore
    cgdir, cgid = cg
    flag = tmp_path / "ran"
    tracer.watch(cgid)
    try:
        pid, w = _start(cgdir, ["/usr/bin/touch", str(flag)])
        os.write(w, b"x")
        evs, st = _drive(tracer, cgid, pid, release=False)
    finally:
        tracer.unwatch(cgid)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
    assert not flag.exists(), "the held image ran before it was judged"


def test_other_cgroups_are_not_traced(tracer, cg) -> None:  # type: ignore[no-untyped-def]
    cgdir, cgid = cg
    tracer.watch(cgid)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child, NOT in the watched cgroup
            os.execv("/bin/true", ["/bin/true"])
        os.waitpid(pid, 0)
        time.sleep(0.02)
        assert not [e for e in tracer.consume(cgid, check_lost=True)
                    if getattr(e, "pid", None) == pid]
    finally:
        tracer.unwatch(cgid)


@pytest.mark.slow
def test_ring_buffer_loss_kills_the_exec_and_is_reported(cg) -> None:  # type: ignore
    from sandbox.kernel.ebpf import ExecTracer, LostEvent

    cgdir, cgid = cg
    small = ExecTracer(ringbuf_pages=1)  # 4 KiB: a dozen events fill it
    try:
        small.watch(cgid, hold=False)
        pid, w = _start(cgdir, ["/bin/sh", "-c", "for i in $(seq 60); do /bin/true; done; exit 0"])
        os.write(w, b"x")
        os.waitpid(pid, 0)  # nobody consumes: the ring fills up
        evs = small.consume(cgid, check_lost=True)
        lost = [e for e in evs if isinstance(e, LostEvent)]
        assert lost and lost[0].count > 0 and small.lost(cgid) > 0
    finally:
        small.unwatch(cgid)
        small.close()
