"""The native exec-gate responder (native/gbresp.c via sandbox.kernel.unotify_native) against
the real kernel, and the exec gate with and without it (same decisions, same recorded events).
The child runs in a cgroup the in-kernel verifier enforces: an exec the responder continued
runs only if the expectation it wrote (identity + SipHash in C) is exactly what the kernel saw."""

from __future__ import annotations

import errno
import json
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.kernel import unotify_native
from sandbox.kernel.execplan import PlanError, TaskView, plan_exec
from sandbox.kernel.unotify import Listener, Notif, read_exec
from sandbox.policy.profile import SeccompPolicy
from tests.conftest import is_root, require, run_cli
from tests.integration.test_unotify import _wait

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _native_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLASSBREAK_NO_NATIVE", raising=False)  # these tests choose themselves
    monkeypatch.delenv("GLASSBREAK_NATIVE_LIB", raising=False)
    unotify_native.reset()


@pytest.fixture(scope="module")
def tracer() -> Iterator[Any]:
    require(is_root(), "eBPF needs root")
    from sandbox.kernel.ebpf import ExecTracer

    t = ExecTracer()
    yield t
    t.close()


@pytest.fixture
def cg(tracer: Any) -> Iterator[tuple[Path, int]]:
    """A cgroup the verifier enforces: every exec in it needs an expectation."""
    from sandbox.kernel.cgroup import cgroup2_mount

    p = cgroup2_mount() / f"gb-test-native-{os.getpid()}-{time.monotonic_ns()}"
    p.mkdir()
    cgid = os.stat(p).st_ino
    tracer.watch(cgid, "enforce")
    try:
        yield p, cgid
    finally:
        tracer.unwatch(cgid)
        (p / "cgroup.kill").write_text("1")
        for _ in range(100):
            try:
                p.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def _spawn(argv: list[str], cgdir: Path):  # type: ignore[no-untyped-def]
    from sandbox.kernel.child import spawn
    from sandbox.kernel.seccomp import compile_filter

    filt = compile_filter(SeccompPolicy(), exec_notify=True)
    child = spawn(argv, executable=argv[0], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                  cgroup_procs=str(cgdir / "cgroup.procs"), bpf=filt.bpf, notify=True,
                  stdout=os.open(os.devnull, os.O_WRONLY),
                  stderr=os.open(os.devnull, os.O_WRONLY))
    assert child.listener_fd is not None
    return child


def _entries(*paths: str) -> list[tuple[str, int, int, int]]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((p, st.st_dev, st.st_ino, st.st_ctime_ns))
    return out


def _continue(tracer: Any, cgid: int, lst: Listener, n: Notif) -> None:
    """What the Python judge does for an allowed exec: the expectation, then CONTINUE."""
    req = read_exec(lst, n)
    try:
        with TaskView(n.pid) as view:
            plan = plan_exec(view, req.dirfd, req.path, req.argv, req.envp, req.flags)
            plan.close()
    except PlanError as e:
        lst.respond_errno(n.id, e.errno)
        return
    tracer.expect(n.pid, plan.st_dev, plan.st_ino, tracer.hash_args(plan.argv, plan.envp), cgid)
    lst.respond_continue(n.id)


def _lib():  # type: ignore[no-untyped-def]
    unotify_native.reset()
    lib = unotify_native.load()
    require(lib is not None, f"the native responder is not built ({unotify_native.lib_path()}):"
            " run scripts/setup.sh")
    return lib


def _serve_until_exit(resp: unotify_native.Responder, lst: Listener, pid: int,
                      deny: set[bytes], tracer: Any, cgid: int
                      ) -> tuple[list[unotify_native.Record], list[bytes], int]:
    """Answer forwarded notifications in Python (EPERM for paths in `deny`) until `pid` exits:
    (native F records, forwarded paths, exit code)."""
    fast: list[unotify_native.Record] = []
    forwarded: list[bytes] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        select.select([resp.fileno()], [], [], 0.05)
        for rec in resp.read():
            if rec.kind == "N":
                n = Notif(rec.id, rec.pid, rec.nr, rec.arch, rec.args)
                req = read_exec(lst, n)
                forwarded.append(req.path)
                if req.path in deny:
                    lst.respond_errno(rec.id, errno.EPERM)
                else:
                    _continue(tracer, cgid, lst, n)
            else:
                assert rec.kind in ("E", "W"), rec
        fast += resp.take()
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            fast += resp.take()
            return fast, forwarded, os.waitstatus_to_exitcode(st)
    os.kill(pid, 9)
    raise AssertionError("the child hung")


def test_native_continues_allowed_paths_and_forwards_the_rest(tracer: Any, cg: Any) -> None:
    lib = _lib()
    cgdir, cgid = cg
    child = _spawn(["/bin/sh", "-c", "/bin/true a1 'b 2'; /usr/bin/env true; /bin/true x; "
                    "LD_PRELOAD=/nonexistent.so /bin/true inj; /bin/echo hi || exit 9"], cgdir)
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        resp.set_verify(tracer.expect_map_fd, tracer.key, cgid)
        resp.set_allow(_entries("/bin/true", "/usr/bin/true"))
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, {b"/bin/echo"}, tracer,
                                                  cgid)
        counts = resp.counts()
    finally:
        resp.close()
        lst.close()
    assert code == 9, "the exec Python refused failed in the child (EPERM)"
    # /bin/sh (not in the set), env (not in the set), its execvp of true (a relative
    # name: env tries PATH entries, /usr/bin/true is in the set), the LD_PRELOAD one, echo
    assert b"/bin/sh" in forwarded and b"/usr/bin/env" in forwarded and b"/bin/echo" in forwarded
    assert b"/bin/true" in forwarded, "an injection variable is never continued natively"
    assert [list(r.argv) for r in fast if r.path == "/bin/true"] == [["/bin/true", "a1", "b 2"],
                                                                     ["/bin/true", "x"]]
    st = os.stat("/bin/true")
    assert all(r.kind == "F" and r.pid > 0 and r.id and r.ident == (st.st_dev, st.st_ino)
               for r in fast)
    assert counts[0] == len(fast) >= 2 and counts[1] >= 4
    # every exec ran verified: the native expectations matched what the kernel copied
    time.sleep(0.05)
    verdicts = [e.verdict for e in tracer.consume(cgid, check_lost=True)
                if type(e).__name__ == "ExecEvent"]
    assert verdicts and set(verdicts) == {"ok"}, verdicts


def test_native_answers_path_misses_enoent(tracer: Any, cg: Any) -> None:
    """execvp walking PATH: a directory without the program is answered ENOENT natively (the
    kernel's own answer; nothing runs), the program is still found further along, a missing
    absolute path is 'not found', and an existing file outside the set still goes to Python."""
    lib = _lib()
    cgdir, cgid = cg
    child = _spawn(["/bin/sh", "-c", "PATH=/nonexistent-gb-a:/nonexistent-gb-b:/bin; "
                    "/usr/bin/env true x; /nonexistent-gb-c/prog; [ $? = 127 ] || exit 7; "
                    "/bin/echo hi; exit 5"],
                   cgdir)
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        resp.set_verify(tracer.expect_map_fd, tracer.key, cgid)
        resp.set_allow(_entries("/bin/true"))
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, set(), tracer, cgid)
        missing = resp.missing()
    finally:
        resp.close()
        lst.close()
    assert code == 5, code  # true found, the absolute miss was 127, echo ran (Python)
    assert not [p for p in forwarded if p.startswith(b"/nonexistent-gb")], forwarded
    assert b"/bin/echo" in forwarded and b"/usr/bin/env" in forwarded
    assert missing == 3, missing  # env's two PATH directories for `true`, the absolute path
    assert [list(r.argv) for r in fast] == [["true", "x"]]


def test_native_with_an_empty_set_forwards_everything(tracer: Any, cg: Any) -> None:
    lib = _lib()
    cgdir, cgid = cg
    child = _spawn(["/bin/sh", "-c", "/bin/true; exit 3"], cgdir)
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        resp.set_verify(tracer.expect_map_fd, tracer.key, cgid)
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, set(), tracer, cgid)
    finally:
        resp.close()
        lst.close()
    assert code == 3 and fast == [] and forwarded == [b"/bin/sh", b"/bin/true"]


def test_without_a_verifier_nothing_is_continued_natively(tracer: Any, cg: Any) -> None:
    lib = _lib()
    cgdir, cgid = cg
    child = _spawn(["/bin/sh", "-c", "/bin/true; exit 4"], cgdir)
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        resp.set_allow(_entries("/bin/true"))
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, set(), tracer, cgid)
    finally:
        resp.close()
        lst.close()
    assert code == 4 and fast == [] and forwarded == [b"/bin/sh", b"/bin/true"]


def test_another_file_under_the_same_path_is_forwarded(tracer: Any, cg: Any,
                                                       tmp_path: Path) -> None:
    """The entry names the file it was learned from: a path that now names another file (a
    replaced binary; a chroot, in the caller's root) goes to Python."""
    import shutil

    lib = _lib()
    cgdir, cgid = cg
    exe = tmp_path / "tool"
    shutil.copy2("/bin/true", exe)
    learned = _entries(str(exe))
    exe.unlink()
    shutil.copy2("/bin/true", exe)  # same path, same content, another inode
    child = _spawn(["/bin/sh", "-c", f"{exe}; exit 5"], cgdir)
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        resp.set_verify(tracer.expect_map_fd, tracer.key, cgid)
        resp.set_allow(learned)
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, set(), tracer, cgid)
    finally:
        resp.close()
        lst.close()
    assert code == 5 and fast == [] and forwarded == [b"/bin/sh", str(exe).encode()]


def test_close_stops_the_thread_and_a_dead_thread_reads_as_fatal(cg: Any) -> None:
    lib = _lib()
    child = _spawn(["/bin/sh", "-c", "exit 0"], cg[0])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    os.close(resp._c.detach())  # the thread's socket end gone: nothing it sends arrives
    try:
        recs: list[unotify_native.Record] = []
        deadline = time.monotonic() + 5
        while not recs and time.monotonic() < deadline:
            select.select([resp.fileno()], [], [], 0.1)
            recs = resp.read()
        assert recs and recs[-1].kind == "X", "EOF from the responder fails the run closed"
    finally:
        resp._c = __import__("socket").socket()  # keep close() simple
        resp.close()
        os.kill(child.pid, 9)
        _wait(child.pid)
        lst.close()
    assert not resp.alive()


PROFILE = """\
name: nativetest
extends: base
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: [sh, dash, "true", env, seq]
  default: block
"""


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_gate_records_the_same_with_and_without_native(tmp_path: Path, native: bool) -> None:
    if native:
        _lib()
    prof = tmp_path / "p.yaml"
    prof.write_text(PROFILE)
    state = tmp_path / "state"
    env = {"PATH": "/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state),
           "GLASSBREAK_NO_DAEMON": "1"}
    if not native:
        env["GLASSBREAK_NATIVE_LIB"] = str(tmp_path / "missing.so")  # the fallback path
    script = ("for i in 1 2 3 4 5 6 7 8; do /bin/true n$i; done; "
              "LD_PRELOAD=/x.so /bin/true inj; /bin/cat /dev/null; echo done")
    r = run_cli("run", "--profile", str(prof), "--", "sh", "-c", script, env=env)
    assert "done" in r.stdout, r.stderr
    events = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]
    execs = [e for e in events if e["type"] == "exec"]
    trues = [e["argv"] for e in execs if e["argv"][:1] == ["/bin/true"]
             and e["decision"] == "allow"]
    assert [a[1] for a in trues if a[1].startswith("n")] == [f"n{i}" for i in range(1, 9)], \
        "every natively continued exec is in the trace with its argv"
    blocked = {(e["rule_id"], e["layer"], tuple(e["argv"])) for e in events
               if e["type"] == "blocked"}
    assert ("env.injection:LD_PRELOAD", "exec-gate", ("/bin/true", "inj")) in blocked
    assert any(rule.startswith("exec.") and argv == ("/bin/cat", "/dev/null")
               for rule, _, argv in blocked), blocked


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_native_answers_the_common_case_in_process(tmp_path: Path, native: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """In the supervisor: with the library, plain execs of a fast path never reach Python's
    notification handler; without it (missing library) Python answers every one."""
    if native:
        _lib()
    else:
        monkeypatch.setenv("GLASSBREAK_NATIVE_LIB", str(tmp_path / "missing.so"))
    require(os.geteuid() == 0, "the runner needs root")
    from sandbox.run import execgate
    from sandbox.run.supervisor import RunRequest, Supervisor

    stats: list[execgate.GateStats] = []
    orig = execgate.ExecGate.close

    def close(self: execgate.ExecGate) -> None:
        orig(self)
        stats.append(self.stats)

    monkeypatch.setattr(execgate.ExecGate, "close", close)
    prof = tmp_path / "p.yaml"
    prof.write_text(PROFILE.replace("nativetest", f"nativetest{int(native)}"))
    monkeypatch.setenv("GLASSBREAK_STATE_DIR", str(tmp_path / "state"))
    events: list[object] = []
    r = Supervisor().run(RunRequest(argv=["sh", "-c", "for i in $(seq 30); do /bin/true; done"],
                                    profile=str(prof)), events.append)
    assert r.exit_code == 0
    st = stats[-1]
    assert st.execs >= 31 and st.blocked == 0
    if native:
        assert st.native >= 25 and st.notifications <= st.execs - 25, st
    else:
        assert st.native == 0 and st.notifications >= 31, st
