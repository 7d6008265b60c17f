"""sandbox.kernel.child.spawn on the real kernel: order of steps, listener hand-over, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox.errors import CommandNotFound, RunnerError
from sandbox.kernel.child import spawn
from sandbox.kernel.seccomp import compile_filter
from sandbox.policy.profile import SeccompPolicy
from tests._sandbox_helpers import Responder, run_sandboxed
from tests.conftest import REPO, is_root, require

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root() -> None:
    require(is_root(), "needs root")


def test_stdio_env_cwd_nnp_seccomp_and_closed_fds(tmp_path):
    f = compile_filter(SeccompPolicy(), exec_notify=True)
    leak = os.open("/dev/null", os.O_RDONLY)  # inheritable on purpose: must not reach the child
    os.set_inheritable(leak, True)
    try:
        r = run_sandboxed(["/bin/sh", "-c", "echo $GBTEST; pwd; ls /proc/$$/fd; "
                           "grep -E '^(NoNewPrivs|Seccomp):' /proc/$$/status"],
                          bpf=f.bpf, notify=True, env={"GBTEST": "hello", "PATH": "/usr/bin:/bin"},
                          cwd=str(tmp_path))
    finally:
        os.close(leak)
    lines = r.out.split()
    assert lines[0] == "hello" and lines[1] == str(tmp_path)
    assert "NoNewPrivs:\t1" in r.out.replace(" ", "\t") or "NoNewPrivs: 1" in r.out
    assert "Seccomp:\t2" in r.out
    fds = r.out.split(str(tmp_path))[1].split("NoNewPrivs")[0].split()
    assert fds == ["0", "1", "2"], r.out  # the shell holds only stdio: no listener, no leaks


def test_listener_not_held_by_the_sandboxed_program():
    f = compile_filter(SeccompPolicy(), exec_notify=True)
    child = spawn(["sleep", "5"], executable="/bin/sleep", env={}, cwd="/", cgroup_procs=None,
                  bpf=f.bpf, notify=True)
    assert child.listener_fd is not None
    assert os.readlink(f"/proc/self/fd/{child.listener_fd}") == "anon_inode:seccomp notify"
    resp = Responder(child.listener_fd).start()
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{child.pid}/exe") != "/usr/bin/sleep":
            assert time.monotonic() < deadline
            time.sleep(0.005)
        targets = [os.readlink(f"/proc/{child.pid}/fd/{n}")
                   for n in os.listdir(f"/proc/{child.pid}/fd")]
        assert not any("seccomp" in t for t in targets), targets
    finally:
        child.send_signal(signal.SIGKILL)
        assert child.wait(5) is not None
        resp.stop()
        child.close()


def test_command_not_found():
    with pytest.raises(CommandNotFound) as e:
        spawn(["nosuchcmd"], executable="/nonexistent/nosuchcmd", env={}, cwd="/",
              cgroup_procs=None, bpf=None, notify=False)
    assert e.value.exit_code == 127 and "nosuchcmd" in e.value.message
    # with the exec gate, spawn returns before exec: the failure comes from exec_error()
    f = compile_filter(SeccompPolicy(), exec_notify=True)
    child = spawn(["nosuchcmd"], executable="/nonexistent/nosuchcmd", env={}, cwd="/",
                  cgroup_procs=None, bpf=f.bpf, notify=True)
    resp = Responder(child.listener_fd).start()
    try:
        child.wait(5)
        assert child.exit_code() == 127
        assert isinstance(child.exec_error(), CommandNotFound)
    finally:
        resp.stop()
        child.close()


def test_failures_before_exec_are_reported_with_the_step(tmp_path):
    with pytest.raises(RunnerError, match="chdir"):
        spawn(["true"], executable="/bin/true", env={}, cwd=str(tmp_path / "missing"),
              cgroup_procs=None, bpf=None, notify=False)
    with pytest.raises(RunnerError, match="seccomp"):  # a program the kernel refuses
        spawn(["true"], executable="/bin/true", env={}, cwd="/", cgroup_procs=None,
              bpf=b"\xff" * 8, notify=True)
    with pytest.raises(RunnerError, match="cgroup"):
        spawn(["true"], executable="/bin/true", env={}, cwd="/",
              cgroup_procs=str(tmp_path / "cgroup.procs"), bpf=None, notify=False)


def test_drop_privileges(tmp_path):
    r_out, w_out = os.pipe()
    child = spawn(["/bin/sh", "-c", "id -u; id -g; id -G"], executable="/bin/sh",
                  env={"PATH": "/usr/bin:/bin"}, cwd="/", cgroup_procs=None, bpf=None,
                  notify=False, stdout=w_out, uid=65534, gid=65534, groups=[65534])
    os.close(w_out)
    out = b""
    while chunk := os.read(r_out, 4096):
        out += chunk
    os.close(r_out)
    child.wait(5)
    child.close()
    assert out.decode().split() == ["65534", "65534", "65534"]





def test_module_has_no_heavy_imports():
    out = subprocess.run([sys.executable, "-c", "import sys; import sandbox.kernel.child, "
                          "sandbox.kernel.seccomp, sandbox.kernel.cgroup, sandbox.kernel.kmsg; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                          "('httpx','redis','bcc','uvicorn','pydantic','pyseccomp')))"],
                         capture_output=True, text=True, cwd=str(Path(REPO)))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("launcher", ["python", "native"])
def test_signals_ignored_by_the_supervisor_are_not_inherited(launcher: str) -> None:
    """Even glibc's reserved signals (32, 33), which signal() cannot reset, start at SIG_DFL in
    the sandboxed child (an ignored signal survives exec)."""
    import subprocess
    import sys

    code = r'''
import ctypes, os
libc = ctypes.CDLL(None)
ign = ctypes.create_string_buffer(64)
ctypes.memmove(ign, ctypes.byref(ctypes.c_ulong(1)), 8)  # SIG_IGN
for s in (1, 10, 32, 33):
    assert libc.syscall(13, s, ign, None, 8) == 0
from sandbox.kernel.child import spawn
r, w = os.pipe()
c = spawn(["/bin/grep", "SigIgn", "/proc/self/status"], executable="/bin/grep", env={}, cwd="/",
          cgroup_procs=None, bpf=None, notify=False, stdout=w)
os.close(w)
print(os.read(r, 200).decode().strip())
os.waitpid(c.pid, 0)
'''
    env = dict(os.environ)
    if launcher == "python":
        env["GLASSBREAK_NO_LAUNCHER"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SigIgn:\t0000000000000000", out.stdout
