"""sandbox.kernel.ebpf against the real kernel: fork/exec/exit events of a watched cgroup, and
the in-kernel verification of every exec at sched_process_exec: the image (device + inode) and
a keyed hash of the argv + envp the kernel copied, against the expectation written for the
exec'ing thread. Proof that a killed image never ran: `marker` (tests/security/csrc), a static
binary whose first instruction writes "START" to stdout."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import is_root, require
from tests.security._attack import attacker

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def tracer() -> Iterator[Any]:
    require(is_root(), "eBPF needs root")
    try:
        from sandbox.kernel.ebpf import ExecTracer

        t = ExecTracer()
    except Exception as e:  # noqa: BLE001
        require(False, f"the eBPF tracer cannot start here: {e}")
        raise
    yield t
    t.close()


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("marker")
    return attacker("marker", d, "-nostdlib", "-fno-stack-protector", "-O1")


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


ENV = {"A": "b"}


def _run(tracer: Any, cgdir: Path, cgid: int, argv: list[str], out: Path, *,
         expect: Any = "exact", env: dict[str, str] | None = None) -> tuple[int, list[Any]]:
    """Fork a child into the cgroup; write an expectation for it (`expect`: "exact", None, or a
    function (pid) -> None that writes its own), release it to execve; (status, events)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(w)
            (cgdir / "cgroup.procs").write_text("0")
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.read(r, 1)
            os.execve(argv[0], argv, ENV if env is None else env)
        finally:
            os._exit(127)
    os.close(r)
    if expect == "exact":
        st = os.stat(argv[0])
        envb = [f"{k}={v}".encode() for k, v in (ENV if env is None else env).items()]
        tracer.expect(pid, st.st_dev, st.st_ino,
                      tracer.hash_args([a.encode() for a in argv], envb), cgid)
    elif callable(expect):
        expect(pid)
    os.write(w, b"x")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    time.sleep(0.03)
    return status, tracer.consume(cgid, check_lost=True)


def _execs(evs: list[Any]) -> list[Any]:
    from sandbox.kernel.ebpf import ExecEvent

    return [e for e in evs if isinstance(e, ExecEvent)]


def test_expected_exec_runs_and_is_reported(tracer, cg, marker, tmp_path) -> None:  # type: ignore
    cgdir, cgid = cg
    tracer.watch(cgid, "enforce")
    try:
        out = tmp_path / "out"
        status, evs = _run(tracer, cgdir, cgid, [str(marker), "a", "b c"], out)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out.read_text().splitlines()[2:] == [str(marker), "a", "b c"]
    (ev,) = _execs(evs)
    st = os.stat(marker)
    assert ev.ok and not ev.killed and ev.filename == str(marker)
    assert ev.seen == (st.st_dev, st.st_ino) == ev.expected
    assert ev.cgroup_id == cgid and 0 < ev.ns < 1_000_000_000


@pytest.mark.parametrize("case", ["missing", "identity", "argv", "env", "cgroup"])
def test_mismatch_is_killed_before_the_first_instruction(tracer, cg, marker, tmp_path,  # type: ignore
                                                         case: str) -> None:
    cgdir, cgid = cg
    other = tmp_path / "other"
    shutil.copy2(marker, other)
    argv = [str(marker), "get"]

    def expect(pid: int) -> None:
        st = os.stat(other if case == "identity" else marker)
        args = [str(marker), "delete" if case == "argv" else "get"]
        envb = [b"A=c" if case == "env" else b"A=b"]
        tracer.expect(pid, st.st_dev, st.st_ino,
                      tracer.hash_args([a.encode() for a in args], envb),
                      cgid + 1 if case == "cgroup" else cgid)

    tracer.watch(cgid, "enforce")
    try:
        out = tmp_path / "out"
        status, evs = _run(tracer, cgdir, cgid, argv, out,
                           expect=None if case == "missing" else expect)
    finally:
        tracer.unwatch(cgid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert out.read_text() == "", "the image ran at least one instruction"
    (ev,) = _execs(evs)
    want = {"missing": "no-expectation", "identity": "identity", "argv": "hash",
            "env": "hash", "cgroup": "cgroup"}[case]
    assert ev.verdict == want and ev.killed and not ev.kill_failed
    assert ev.kernel_argv() == argv  # what the kernel copied, for the audit


def test_without_struct_offsets_every_exec_is_killed(tracer, cg, marker, tmp_path) -> None:  # type: ignore
    """The offsets from BTF are written before the verifier is attached; should they be
    missing, nothing is verified: every exec fails closed (kernel-read)."""
    cgdir, cgid = cg
    omap = tracer._bpf[b"offsets"]
    saved = omap[omap.Key(0)]
    blank = omap.Leaf()
    omap[omap.Key(0)] = blank
    tracer.watch(cgid, "enforce")
    try:
        status, evs = _run(tracer, cgdir, cgid, [str(marker)], tmp_path / "out")
    finally:
        omap[omap.Key(0)] = saved
        tracer.unwatch(cgid)
    assert os.WIFSIGNALED(status) and (tmp_path / "out").read_text() == ""
    assert [e.verdict for e in _execs(evs)] == ["kernel-read"]


def test_monitor_reports_and_kills_nothing(tracer, cg, marker, tmp_path) -> None:  # type: ignore
    cgdir, cgid = cg
    tracer.watch(cgid, "monitor")
    try:
        status, evs = _run(tracer, cgdir, cgid, [str(marker)], tmp_path / "out", expect=None)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 0
    (ev,) = _execs(evs)
    assert ev.verdict == "no-expectation" and not ev.killed and not ev.kill_failed


def test_trace_mode_reports_identity_without_expectations(tracer, cg, marker, tmp_path  # type: ignore
                                                          ) -> None:
    cgdir, cgid = cg
    tracer.watch(cgid, "trace")
    try:
        status, evs = _run(tracer, cgdir, cgid, [str(marker)], tmp_path / "out", expect=None)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 0
    (ev,) = _execs(evs)
    st = os.stat(marker)
    assert ev.ok and ev.seen == (st.st_dev, st.st_ino)


def test_fork_exec_exit_events(tracer, cg, tmp_path) -> None:  # type: ignore
    from sandbox.kernel.ebpf import ExitEvent, ForkEvent

    cgdir, cgid = cg
    tracer.watch(cgid, "trace")
    try:
        status, evs = _run(tracer, cgdir, cgid,
                           ["/bin/sh", "-c", "/bin/true; /bin/echo hi; exit 3"], tmp_path / "o")
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 3
    assert [e.filename for e in _execs(evs)] == ["/bin/sh", "/bin/true", "/bin/echo"]
    forks = [e for e in evs if isinstance(e, ForkEvent)]
    assert len(forks) == 2
    exits = {e.pid for e in evs if isinstance(e, ExitEvent)}
    assert {f.pid for f in forks} <= exits
    assert all(e.cgroup_id == cgid for e in evs)


def test_the_key_is_the_thread_that_called_execve(tracer, cg, marker, tmp_path) -> None:  # type: ignore
    """A non-leader thread execs: the expectation is keyed by its tid (old_pid), not the tgid."""
    cgdir, cgid = cg
    for key_by in ("tid", "tgid"):
        out = tmp_path / f"out-{key_by}"
        r, w = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                (cgdir / "cgroup.procs").write_text("0")
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)

                def thread() -> None:
                    os.write(w2, str(threading.get_native_id()).encode())
                    os.read(r, 1)
                    os.execve(str(marker), [str(marker)], {})

                threading.Thread(target=thread).start()
                time.sleep(30)
            finally:
                os._exit(127)
        tid = int(os.read(r2, 32))
        st = os.stat(marker)
        tracer.watch(cgid, "enforce")
        try:
            tracer.expect(tid if key_by == "tid" else pid, st.st_dev, st.st_ino,
                          tracer.hash_args([str(marker).encode()], []), cgid)
            os.write(w, b"x")
            _, status = os.waitpid(pid, 0)
        finally:
            tracer.unwatch(cgid)
        for fd in (r, w, r2, w2):
            os.close(fd)
        if key_by == "tid":
            assert os.waitstatus_to_exitcode(status) == 0 and out.read_text()
        else:
            assert os.WIFSIGNALED(status) and out.read_text() == ""


def test_script_argv_as_the_kernel_lays_it_out(tracer, cg, marker, tmp_path) -> None:  # type: ignore
    """Nested `#!` scripts: the plan (sandbox.kernel.execplan) predicts the argv and identity the
    kernel verifies; the marker prints the argv it got."""
    from sandbox.kernel.execplan import AT_FDCWD, TaskView, plan_exec

    cgdir, cgid = cg
    s2 = tmp_path / "s2"
    s2.write_text(f"#!{marker} -y\n")
    s1 = tmp_path / "s1"
    s1.write_text(f"#!{s2} a1  b1\n")
    for s in (s1, s2):
        s.chmod(0o755)

    def expect(pid: int) -> None:
        with TaskView(pid) as view:
            plan = plan_exec(view, AT_FDCWD, str(s1).encode(), [b"x", b"z"], [b"A=b"])
            plan.close()
        tracer.expect(pid, plan.st_dev, plan.st_ino, tracer.hash_args(plan.argv, plan.envp),
                      cgid)
        assert plan.argv == [str(marker).encode(), b"-y", str(s2).encode(), b"a1  b1",
                             str(s1).encode(), b"z"]

    tracer.watch(cgid, "enforce")
    try:
        out = tmp_path / "out"
        status, evs = _run(tracer, cgdir, cgid, [str(s1), "z"], out, expect=expect)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 0, evs
    assert out.read_text().splitlines()[2:] == [str(marker), "-y", str(s2), "a1  b1", str(s1),
                                                "z"]


EDGE_LINES = {  # shebang lines the kernel parses in surprising ways (fs/binfmt_script.c)
    "spaces-tabs": b"#! \t%s \t a  b \t\n",
    "no-newline": b"#!%s",
    "no-newline-trailing-space": b"#!%s   ",
    "tab-only-arg": b"#!%s\t\t\n",
    "long-arg-truncated": b"#!%s " + b"y" * 400,
    "nul-in-arg": b"#!%s ab\0cd\n",
    "nul-before-newline": b"#!%s \0\n",
    "nul-right-after-name": b"#!%s\0 x\n",
    "crlf-arg": b"#!%s -e\r\n",
}


@pytest.mark.parametrize("name", list(EDGE_LINES))
def test_shebang_parsing_matches_the_kernel(tracer, cg, marker, tmp_path, name: str  # type: ignore
                                            ) -> None:
    from sandbox.kernel.execplan import AT_FDCWD, TaskView, plan_exec

    cgdir, cgid = cg
    s = tmp_path / "s"
    s.write_bytes(EDGE_LINES[name] % str(marker).encode())
    s.chmod(0o755)
    planned: list[bytes] = []

    def expect(pid: int) -> None:
        with TaskView(pid) as view:
            plan = plan_exec(view, AT_FDCWD, str(s).encode(), [str(s).encode(), b"q"], [b"A=b"])
            plan.close()
        planned.extend(plan.argv)
        tracer.expect(pid, plan.st_dev, plan.st_ino, tracer.hash_args(plan.argv, plan.envp),
                      cgid)

    tracer.watch(cgid, "enforce")
    try:
        out = tmp_path / "out"
        status, evs = _run(tracer, cgdir, cgid, [str(s), "q"], out, expect=expect)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 0, (name, planned, _execs(evs))
    assert out.read_bytes().split(b"\n")[2:-1] == planned


def test_relative_interpreter_is_resolved_from_the_tasks_cwd(tracer, cg, marker,  # type: ignore
                                                             tmp_path) -> None:
    """`#!./m` names ./m in the exec'ing task's cwd (not the script's directory, not ours)."""
    from sandbox.kernel.execplan import AT_FDCWD, TaskView, plan_exec

    cgdir, cgid = cg
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(marker, work / "m")
    s = tmp_path / "s"
    s.write_text("#!./m\n")
    s.chmod(0o755)

    def expect(pid: int) -> None:
        with TaskView(pid) as view:
            plan = plan_exec(view, AT_FDCWD, str(s).encode(), [str(s).encode()], [])
            plan.close()
        st = os.stat(work / "m")
        assert (plan.st_dev, plan.st_ino) == (st.st_dev, st.st_ino)
        tracer.expect(pid, plan.st_dev, plan.st_ino, tracer.hash_args(plan.argv, plan.envp),
                      cgid)

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(w)
            (cgdir / "cgroup.procs").write_text("0")
            os.chdir(work)
            os.dup2(os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644), 1)
            os.read(r, 1)
            os.execve(str(s), [str(s)], {})
        finally:
            os._exit(127)
    os.close(r)
    tracer.watch(cgid, "enforce")
    try:
        time.sleep(0.05)  # the child's chdir
        expect(pid)
        os.write(w, b"x")
        _, status = os.waitpid(pid, 0)
    finally:
        tracer.unwatch(cgid)
        os.close(w)
    assert os.waitstatus_to_exitcode(status) == 0


def test_megabytes_of_argv_are_hashed(tracer, cg, marker, tmp_path) -> None:  # type: ignore
    cgdir, cgid = cg
    argv = [str(marker)] + [f"{i:060d}" for i in range(30000)]  # 1.8 MB
    tracer.watch(cgid, "enforce")
    try:
        out = tmp_path / "out"
        status, evs = _run(tracer, cgdir, cgid, argv, out)
        bad = argv[:-1] + ["x" * 60]

        def wrong(pid: int) -> None:
            st = os.stat(marker)
            tracer.expect(pid, st.st_dev, st.st_ino,
                          tracer.hash_args([a.encode() for a in bad], [b"A=b"]), cgid)

        status2, evs2 = _run(tracer, cgdir, cgid, argv, tmp_path / "out2", expect=wrong)
    finally:
        tracer.unwatch(cgid)
    assert os.waitstatus_to_exitcode(status) == 0 and _execs(evs)[0].ok
    assert os.WIFSIGNALED(status2) and _execs(evs2)[0].verdict == "hash"
    assert (tmp_path / "out2").read_text() == ""


def test_other_cgroups_are_not_traced(tracer, cg) -> None:  # type: ignore[no-untyped-def]
    cgdir, cgid = cg
    tracer.watch(cgid, "enforce")
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child, NOT in the watched cgroup
            os.execv("/bin/true", ["/bin/true"])
        _, st = os.waitpid(pid, 0)
        time.sleep(0.02)
        assert os.waitstatus_to_exitcode(st) == 0
        assert not [e for e in tracer.consume(cgid, check_lost=True)
                    if getattr(e, "pid", None) == pid]
    finally:
        tracer.unwatch(cgid)


def test_exited_threads_drop_their_expectations(tracer, cg, tmp_path) -> None:  # type: ignore
    cgdir, cgid = cg
    tracer.watch(cgid, "trace")
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            (cgdir / "cgroup.procs").write_text("0")
            os.read(r, 1)
            os._exit(0)
        tracer.expect(pid, 1, 2, 3, cgid)
        assert tracer.expectation(pid) is not None
        os.write(w, b"x")
        os.waitpid(pid, 0)
        assert tracer.expectation(pid) is None
    finally:
        tracer.unwatch(cgid)


@pytest.mark.slow
def test_ring_buffer_loss_is_reported(cg) -> None:  # type: ignore
    from sandbox.kernel.ebpf import ExecTracer, LostEvent

    cgdir, cgid = cg
    small = ExecTracer(ringbuf_pages=1)  # 4 KiB: a few events fill it
    try:
        small.watch(cgid, "trace")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            (cgdir / "cgroup.procs").write_text("0")
            os.execv("/bin/sh", ["/bin/sh", "-c", "for i in $(seq 60); do /bin/true; done"])
        os.waitpid(pid, 0)  # nobody consumes: the ring fills up
        evs = small.consume(cgid, check_lost=True)
        lost = [e for e in evs if isinstance(e, LostEvent)]
        assert lost and lost[0].count > 0 and small.lost(cgid) > 0
    finally:
        small.unwatch(cgid)
        small.close()
