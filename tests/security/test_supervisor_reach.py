"""Issue 10: the supervisor and the daemon are out of reach of every run, root runs included: no
fd theft (pidfd_getfd), no kcmp / process_madvise / get_robust_list on them, no ptrace /
process_vm_* (seccomp baseline: refused, and the refusal is recorded); no /proc/PID/mem, no
/proc/PID/fd, no signals (Landlock's ptrace and signal scopes: the Landlock layer).

The attacker runs inside a run, finds the supervisor (its parent, or the daemon's pid given on
the command line) and tries every way in; it prints one JSON line of errnos (0 = it worked)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import is_root, require, run_cli
from tests.security._attack import audit, blocks, daemon_with, world_dir

pytestmark = pytest.mark.kernel

REACH = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
sup = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
res = {"sup": sup}
def call(nr, *a):
    r = libc.syscall(nr, *[ctypes.c_long(x) for x in a])
    return 0 if r >= 0 else ctypes.get_errno()
try:
    os.close(os.open(f"/proc/{sup}/mem", os.O_RDWR)); res["mem"] = 0
except OSError as e:
    res["mem"] = e.errno
try:
    pidfd = os.pidfd_open(sup)
except OSError as e:
    pidfd, res["pidfd_getfd"] = -1, e.errno
for fd in range(64) if pidfd >= 0 else ():
    r = libc.syscall(438, pidfd, fd, 0)          # pidfd_getfd
    if r >= 0:
        res["pidfd_getfd"] = 0; break
    res["pidfd_getfd"] = ctypes.get_errno()
    if res["pidfd_getfd"] in (errno.EPERM, errno.EACCES, errno.ESRCH):
        break
res["kcmp"] = call(312, sup, os.getpid(), 0, 0, 0)   # kcmp(KCMP_FILE, fd 0, fd 0)
iov = (ctypes.c_uint64 * 2)(0x10000, 4096)
res["process_madvise"] = call(440, pidfd, ctypes.addressof(iov), 1, 20, 0) if pidfd >= 0 \
    else -1                                             # MADV_COLD
res["ptrace"] = call(101, 0x4206, sup, 0, 0)          # PTRACE_SEIZE
head, size = ctypes.c_uint64(0), ctypes.c_uint64(0)
res["get_robust_list"] = call(274, sup, ctypes.addressof(head), ctypes.addressof(size))
buf = ctypes.create_string_buffer(8)
local = (ctypes.c_uint64 * 2)(ctypes.addressof(buf), 8)
remote = (ctypes.c_uint64 * 2)(0x10000, 8)
res["process_vm_readv"] = call(310, sup, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
try:
    os.kill(sup, 0); res["kill"] = 0
except OSError as e:
    res["kill"] = e.errno
res["procfd"] = errno.ENOENT
for fd in range(3, 128):
    try:
        os.close(os.open(f"/proc/{sup}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)); res["procfd"] = 0
        break
    except OSError as e:
        if e.errno != errno.ENOENT:
            res["procfd"] = e.errno
print("RESULT " + json.dumps(res), flush=True)
"""

PROFILE = """\
name: reach
extends: base
owners: [sec-team]
exec:
  allow: ["/usr/bin/python3*"]
  default: block
"""


def _result(out: str) -> dict[str, int]:
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[7:]))


@pytest.fixture(scope="module")
def root_run(tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[dict[str, int], list[dict[str, object]]]:
    """The attacker as root, in a run of the in-process supervisor (its parent)."""
    require(is_root(), "a root run needs root")
    d = tmp_path_factory.mktemp("reach")
    (d / "state").mkdir()
    (d / "reach.py").write_text(REACH)
    (d / "reach.yaml").write_text(PROFILE)
    r = run_cli("run", "--profile", str(d / "reach.yaml"), "--", "/usr/bin/python3",
                str(d / "reach.py"), env={"GLASSBREAK_STATE_DIR": str(d / "state")})
    assert "RESULT" in r.stdout, r.stdout + r.stderr
    events = audit(d / "state")
    started = next(e for e in events if e["type"] == "run_started")
    res = _result(r.stdout)
    assert res["sup"] == started["pid"], "the attacker found the supervisor"
    return res, events


@pytest.fixture(scope="module")
def nobody_run() -> Iterator[dict[str, int]]:
    """The attacker as `nobody`, through the daemon (given the daemon's pid)."""
    home = world_dir("gb-reach-")
    (home / "reach.py").write_text(REACH)
    os.chmod(home / "reach.py", 0o644)
    for dm in daemon_with({"reach": PROFILE}):
        r = dm.run("reach", "/usr/bin/python3", str(home / "reach.py"), str(dm.pid))
        assert "RESULT" in r.stdout, r.stdout + r.stderr
        yield _result(r.stdout)


@pytest.mark.parametrize("call,rule", [("pidfd_getfd", "seccomp.no-foreign-process"),
                                       ("kcmp", "seccomp.no-foreign-process"),
                                       ("process_madvise", "seccomp.no-foreign-process"),
                                       ("get_robust_list", "seccomp.no-foreign-pages")])
def test_root_run_cannot_take_fds_or_probe_the_supervisor(root_run, call: str,  # type: ignore
                                                          rule: str) -> None:
    res, events = root_run
    assert res[call] == errno.EPERM, res
    b = [e for e in blocks(events, "seccomp", rule) if call in str(e["reason"])]
    assert b, json.dumps(blocks(events), indent=1)[:3000]
    assert b[0]["verdict"] == "deny" and b[0]["pid"] and b[0]["binary"]
    assert "reach.py" in " ".join(b[0]["argv"])  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["ptrace", "process_vm_readv"])
def test_root_run_cannot_debug_the_supervisor(root_run, call: str) -> None:  # type: ignore
    res, _ = root_run
    assert res[call] == errno.EPERM, res


def test_root_run_cannot_open_the_supervisors_memory(root_run) -> None:  # type: ignore
    res, _ = root_run
    assert res["mem"] in (errno.EACCES, errno.EPERM), res


def test_root_run_cannot_signal_the_supervisor(root_run) -> None:  # type: ignore
    res, _ = root_run
    assert res["kill"] == errno.EPERM, res


def test_root_run_cannot_open_the_supervisors_fds_through_proc(root_run) -> None:  # type: ignore
    res, _ = root_run
    assert res["procfd"] in (errno.EACCES, errno.EPERM), res


@pytest.mark.parametrize("call", ["mem", "pidfd_getfd", "kcmp", "ptrace", "process_vm_readv",
                                  "kill", "procfd"])
def test_non_root_run_cannot_reach_the_daemon(nobody_run: dict[str, int], call: str) -> None:
    assert nobody_run[call] in (errno.EACCES, errno.EPERM), nobody_run


def test_the_daemon_pid_was_the_target(nobody_run: dict[str, int]) -> None:
    assert nobody_run["sup"] != os.getpid() and Path(f"/proc/{nobody_run['sup']}").exists()
