"""The warm path's native helpers and their Python fallbacks, on the real kernel:

- sandbox.kernel.child.spawn through the native launcher (posix_spawn of
  .venv/bin/glassbreak-launch)
  and through the Python fork path (GLASSBREAK_NO_LAUNCHER=1, or no binary): same steps, same
  reports, same results;
- the native client installed as .venv/bin/glassbreak: it falls back to the Python CLI for
  anything it does not serve (checked in test_daemon.py for the daemon protocol).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox.kernel.child as child_mod
from sandbox.errors import CommandNotFound, RunnerError
from sandbox.kernel.child import launcher_path, spawn
from sandbox.kernel.seccomp import compile_filter
from sandbox.policy.profile import SeccompPolicy
from tests._sandbox_helpers import SPAWN_SLEEP_HELPER, Responder, alive
from tests.conftest import GLASSBREAK, REPO, VENV_BIN, is_root, require

pytestmark = pytest.mark.kernel
LAUNCHER = VENV_BIN / "glassbreak-launch"


@pytest.fixture(params=["launcher", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs on both paths; the other path's primitive is made to fail, so a test
    cannot pass on the wrong one."""
    require(is_root(), "needs root")
    if request.param == "launcher":
        require(LAUNCHER.exists(), f"{LAUNCHER} is built by `bash scripts/setup.sh`")
        monkeypatch.delenv("GLASSBREAK_NO_LAUNCHER", raising=False)
        monkeypatch.setenv("GLASSBREAK_LAUNCHER", str(LAUNCHER))
        assert launcher_path() == str(LAUNCHER)

        real_fork = os.fork

        def no_fork() -> int:  # os is shared: refuse only sandbox.kernel.child's fork
            if sys._getframe(1).f_globals.get("__name__") == "sandbox.kernel.child":
                raise AssertionError("the launcher path must not fork the Python process")
            return real_fork()

        monkeypatch.setattr(child_mod.os, "fork", no_fork)
    else:
        monkeypatch.setenv("GLASSBREAK_NO_LAUNCHER", "1")
        assert launcher_path() is None

        def no_spawn(*_a: object, **_k: object) -> int:
            raise AssertionError("the Python path must not use the launcher")

        monkeypatch.setattr(child_mod.os, "posix_spawn", no_spawn)
    yield request.param


def _run(argv: list[str], *, notify: bool = True, cgroup_procs: str | None = None,
         **kw: object) -> tuple[int, str]:
    r_out, w_out = os.pipe()
    f = compile_filter(SeccompPolicy(), exec_notify=notify)
    try:
        c = spawn(argv, executable=argv[0], cgroup_procs=cgroup_procs, bpf=f.bpf,
                  notify=notify, stdout=w_out, stderr=w_out, **kw)  # type: ignore[arg-type]
    finally:
        os.close(w_out)
    resp = Responder(c.listener_fd).start() if notify else None
    out = b""
    while chunk := os.read(r_out, 65536):
        out += chunk
    os.close(r_out)
    c.wait(5)
    code = c.exit_code()
    if resp is not None:
        resp.stop()
    c.close()
    assert code is not None
    return code, out.decode(errors="surrogateescape")


def test_stdio_env_cwd_nnp_seccomp_subreaper_closed_fds(path: str, tmp_path: Path) -> None:
    leak = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leak, True)  # must not reach the child on either path
    weird = os.fsdecode(b"caf\xe9 \xff")  # not UTF-8: the bytes must arrive exactly
    try:
        code, out = _run(
            ["/bin/sh", "-c", 'printf "%s\\n" "$GBTEST" "$1"; pwd; ls /proc/$$/fd; '
             "grep -E '^(NoNewPrivs|Seccomp):' /proc/$$/status; "
             "grep -E '^(SigBlk|SigIgn):' /proc/self/status", "sh", weird],
            env={"GBTEST": weird, "PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    finally:
        os.close(leak)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == weird and lines[1] == weird and lines[2] == str(tmp_path)
    assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out
    assert "SigBlk:\t0000000000000000" in out and "SigIgn:\t0000000000000000" in out
    fds = out.split(str(tmp_path))[1].split("NoNewPrivs")[0].split()
    assert fds == ["0", "1", "2"], out


def test_exit_code_and_command_not_found(path: str) -> None:
    assert _run(["/bin/sh", "-c", "exit 7"], env={}, cwd="/")[0] == 7
    with pytest.raises(CommandNotFound):
        spawn(["nosuchcmd"], executable="/nonexistent/nosuchcmd", env={}, cwd="/",
              cgroup_procs=None, bpf=None, notify=False)
    f = compile_filter(SeccompPolicy(), exec_notify=True)
    c = spawn(["nosuchcmd"], executable="/nonexistent/nosuchcmd", env={}, cwd="/",
              cgroup_procs=None, bpf=f.bpf, notify=True)
    resp = Responder(c.listener_fd).start()
    try:
        c.wait(5)
        assert c.exit_code() == 127 and isinstance(c.exec_error(), CommandNotFound)
    finally:
        resp.stop()
        c.close()


def test_failures_name_their_step(path: str, tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="chdir"):
        spawn(["true"], executable="/bin/true", env={}, cwd=str(tmp_path / "missing"),
              cgroup_procs=None, bpf=None, notify=False)
    with pytest.raises(RunnerError, match="seccomp"):
        spawn(["true"], executable="/bin/true", env={}, cwd="/", cgroup_procs=None,
              bpf=b"\xff" * 8, notify=True)
    with pytest.raises(RunnerError, match="cgroup"):
        spawn(["true"], executable="/bin/true", env={}, cwd="/",
              cgroup_procs=str(tmp_path / "cgroup.procs"), bpf=None, notify=False)


def test_drop_privileges(path: str) -> None:
    code, out = _run(["/bin/sh", "-c", "id -u; id -g; id -G"], env={"PATH": "/usr/bin:/bin"},
                     cwd="/", uid=65534, gid=65534, groups=[65534, 100])
    assert code == 0 and out.split() == ["65534", "65534", "65534", "100"], out


def test_enters_the_cgroup(path: str) -> None:
    from sandbox.kernel.cgroup import RunCgroup

    cg = RunCgroup.create(f"run_warmtest{os.getpid()}_{path}")
    try:
        code, out = _run(["/bin/sh", "-c", "cat /proc/self/cgroup; echo $PPID"], env={},
                         cwd="/", cgroup_procs=str(cg.procs_path))
        *cglines, ppid = out.split()
        v2 = [ln for ln in cglines if ln.startswith("0::")]
        assert code == 0 and v2 and v2[0].endswith("/" + cg.path.name), out
        assert int(ppid) == os.getpid()  # our child (waitpid, PDEATHSIG), not the launcher's
    finally:
        cg.kill()
        cg.wait_empty(timeout=2.0)
        cg.remove()


def test_pdeathsig(path: str) -> None:
    helper = subprocess.Popen([sys.executable, "-c", SPAWN_SLEEP_HELPER, str(REPO)],
                              stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ))
    try:
        assert helper.stdout is not None
        pid = int(helper.stdout.readline())
        exe = os.readlink(f"/proc/{pid}/exe")
        assert exe == "/usr/bin/sleep" or alive(pid)
        helper.kill()
        helper.wait(5)
        deadline = time.monotonic() + 1.0
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(pid), "the sandboxed child outlived its supervisor"
    finally:
        if helper.poll() is None:
            helper.kill()


def test_native_client_in_front_of_the_python_cli() -> None:
    native = VENV_BIN / "glassbreak-run"
    require(native.exists(), f"{native} is built by `bash scripts/setup.sh`")
    with open(GLASSBREAK, "rb") as fh:
        assert fh.read(4) == b"\x7fELF", "setup.sh installs the native client as glassbreak"
    env = dict(os.environ, GLASSBREAK_SOCKET="/nonexistent/gb.sock")
    entry = "import sys; sys.argv[0] = 'glassbreak'; from sandbox.cli.entry import main; main()"
    # everything it does not serve itself goes to the Python CLI, with its messages and codes
    for args in (["--help"], ["run", "--no-such-option", "--", "true"],
                 ["run", "--mode", "bogus", "--", "true"], ["profile", "show", "readonly"],
                 ["run", "-p", "readonly", "--", "sh", "-c", "echo in-process; exit 4"]):
        r = subprocess.run([GLASSBREAK, *args], capture_output=True, text=True, env=env,
                           timeout=60)
        py = subprocess.run([sys.executable, "-c", entry, *args], capture_output=True,
                            text=True, env=env, timeout=60)
        assert (r.returncode, r.stdout) == (py.returncode, py.stdout), args
        assert r.stderr.split("esc-")[0] == py.stderr.split("esc-")[0], args
    assert "Usage: glassbreak" in subprocess.run(
        [GLASSBREAK, "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
    # a missing Python says what happened and what to do
    r = subprocess.run([str(native), "--help"], capture_output=True, text=True, timeout=60,
                       env=dict(env, GLASSBREAK_PYTHON="/nonexistent/python3"))
    assert r.returncode == 125 and "cannot start the Python CLI" in r.stderr
    assert "hint:" in r.stderr
