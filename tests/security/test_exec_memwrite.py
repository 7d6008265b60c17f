"""Issue 10 #3: argv rewritten after the verdict. The parent execs the allowed
`kubectl explain pod x`, then writes `delete` over argv[1] in the new image's memory
(/proc/C/mem, read-write; arg_start is field 48 of /proc/C/stat) before C's main reads it;
LD_DEBUG=all widens the window. Only same-uid ptrace access is needed (non-root, through the
daemon).

The in-kernel verification binds what the kernel copied at exec; writes into the new image
AFTER exec are the remaining window. ptrace and process_vm_writev are refused by the seccomp
baseline (tested here); writes to /proc/*/mem are closed by the Landlock layer (/proc is not
writable inside runs)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._attack import Daemon, attacker, daemon_with, result_line, world_dir

pytestmark = pytest.mark.kernel

N = 200

PY_WRITEV = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = os.fork()
if pid == 0:
    import time; time.sleep(2); os._exit(0)
buf = ctypes.create_string_buffer(b"delete\0", 8)
local = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 8)
remote = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 8)
r = libc.syscall(311, pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
print("WRITEV", 0 if r >= 0 else ctypes.get_errno())
r = libc.syscall(101, 0x4206, pid, 0, 0)   # PTRACE_SEIZE
print("PTRACE", 0 if r >= 0 else ctypes.get_errno())
os.kill(pid, 9); os.waitpid(pid, 0)
"""


def profile(exe: str) -> str:
    return f"""\
name: memw
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: ["{exe}", "/usr/bin/python3*"]
  default: block
"""


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Daemon, Path]]:
    bindir = world_dir("gb-memw-bin-")
    exe = attacker("memwrite", bindir)
    (bindir / "writev.py").write_text(PY_WRITEV)
    (bindir / "writev.py").chmod(0o644)
    yield from ((dm, exe) for dm in daemon_with({"memw": profile(str(exe))}))


def test_positive_control_the_allowed_form_runs(setup: tuple[Daemon, Path],
                                                stub_kubectl: Path) -> None:
    dm, exe = setup
    r = dm.run("memw", str(exe), "5", str(stub_kubectl), "control")
    assert r.stdout.count("stub-kubectl explain pod x") == 5, r.stdout + r.stderr


def test_ptrace_and_process_vm_writev_are_refused(setup: tuple[Daemon, Path]) -> None:
    dm, exe = setup
    r = dm.run("memw", "/usr/bin/python3", str(exe.parent / "writev.py"))
    assert f"WRITEV {errno.EPERM}" in r.stdout and f"PTRACE {errno.EPERM}" in r.stdout, \
        r.stdout + r.stderr


@pytest.mark.timeout(300)
def test_argv_rewritten_through_proc_mem_after_exec_never_runs(setup: tuple[Daemon, Path],
                                                               stub_kubectl: Path) -> None:
    dm, exe = setup
    r = dm.run("memw", str(exe), str(N), str(stub_kubectl), timeout=300)
    assert "RESULT" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    res = result_line(r.stdout)
    escapes = [x for x in r.stdout.splitlines() if x.startswith("stub-kubectl delete")]
    assert not escapes, f"`kubectl delete` ran {len(escapes)} time(s) in {N}: {res}"
    assert res["opened"] == 0, f"/proc/C/mem opened read-write: {res}"
