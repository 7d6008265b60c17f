"""The native exec-gate responder (native/gbresp.c via sandbox.kernel.unotify_native) against
the real kernel, and the exec gate with and without it (same decisions, same recorded events)."""

from __future__ import annotations

import errno
import json
import os
import select
import time
from pathlib import Path

import pytest

from sandbox.kernel import unotify_native
from sandbox.kernel.unotify import Listener, Notif, read_exec
from tests.conftest import require, run_cli
from tests.integration.test_unotify import _spawn, _wait

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _native_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLASSBREAK_NO_NATIVE", raising=False)  # these tests choose themselves
    monkeypatch.delenv("GLASSBREAK_NATIVE_LIB", raising=False)
    unotify_native.reset()


def _lib():  # type: ignore[no-untyped-def]
    unotify_native.reset()
    lib = unotify_native.load()
    require(lib is not None, f"the native responder is not built ({unotify_native.lib_path()}):"
            " run scripts/setup.sh")
    return lib


def _serve_until_exit(resp: unotify_native.Responder, lst: Listener, pid: int,
                      deny: set[str]) -> tuple[list[unotify_native.Record], list[str], int]:
    """Answer forwarded notifications in Python (EPERM for paths in `deny`) until `pid` exits:
    (native F records, forwarded paths, exit code)."""
    fast: list[unotify_native.Record] = []
    forwarded: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        select.select([resp.fileno()], [], [], 0.05)
        for rec in resp.read():
            if rec.kind == "N":
                req = read_exec(lst, Notif(rec.id, rec.pid, rec.nr, rec.arch, rec.args))
                forwarded.append(req.path)
                if req.path in deny:
                    lst.respond_errno(rec.id, errno.EPERM)
                else:
                    lst.respond_continue(rec.id)
            else:
                assert rec.kind in ("E", "W"), rec
        fast += resp.take()
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            fast += resp.take()
            return fast, forwarded, os.waitstatus_to_exitcode(st)
    os.kill(pid, 9)
    raise AssertionError("the child hung")


def test_native_continues_allowed_paths_and_forwards_the_rest() -> None:
    lib = _lib()
    child = _spawn(["/bin/sh", "-c", "/bin/true a1 'b 2'; /usr/bin/env true; /bin/true x; "
                    "LD_PRELOAD=/nonexistent.so /bin/true inj; /bin/echo hi || exit 9"])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        resp.set_allow({"/bin/true", "/usr/bin/true"})
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, deny={"/bin/echo"})
        counts = resp.counts()
    finally:
        resp.close()
        lst.close()
    assert code == 9, "the exec Python refused failed in the child (EPERM)"
    # /bin/sh (not in the set), env (not in the set), its execvp of true (a relative
    # name: env tries PATH entries, /usr/bin/true is in the set), the LD_PRELOAD one, echo
    assert "/bin/sh" in forwarded and "/usr/bin/env" in forwarded and "/bin/echo" in forwarded
    assert "/bin/true" in forwarded, "an injection variable is never continued natively"
    assert [list(r.argv) for r in fast if r.path == "/bin/true"] == [["/bin/true", "a1", "b 2"],
                                                                     ["/bin/true", "x"]]
    assert all(r.kind == "F" and r.pid > 0 and r.id for r in fast)
    assert counts[0] == len(fast) >= 2 and counts[1] >= 4


def test_native_with_an_empty_set_forwards_everything() -> None:
    lib = _lib()
    child = _spawn(["/bin/sh", "-c", "/bin/true; exit 3"])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    resp = unotify_native.Responder(lib, lst.fd)
    try:
        fast, forwarded, code = _serve_until_exit(resp, lst, child.pid, deny=set())
    finally:
        resp.close()
        lst.close()
    assert code == 3 and fast == [] and forwarded == ["/bin/sh", "/bin/true"]


def test_close_stops_the_thread_and_a_dead_thread_reads_as_fatal() -> None:
    lib = _lib()
    child = _spawn(["/bin/sh", "-c", "exit 0"])
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
