"""A run's cwd is never a directory the caller could not enter itself.

The daemon enters the run's cwd as root (the launcher chdir()s before it drops privileges), so
the cwd must come from the kernel: the caller's own cwd (/proc/PID/cwd of the process that
connected) or a directory fd the caller opened ("cwd_fd"). Attack: a child connects and exits,
leaving the socket to its parent; /proc/PID/cwd is then unreadable, and a claimed cwd under a
root-only directory must not be believed (it was: `cat f` read a file nobody cannot reach)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._trust import NOBODY, Daemon, start_daemon, workdir

pytestmark = pytest.mark.kernel

PROBE = r"""
import array, json, os, socket, sys
sock_path, claimed, how = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if how == "orphaned":  # a child connects and exits: SO_PEERCRED names a dead process
    pid = os.fork()
    if pid == 0:
        s.connect(sock_path)
        os._exit(0)
    os.waitpid(pid, 0)
else:
    s.connect(sock_path)
body = {"argv": ["cat", "f"], "profile": "readonly", "mode": "enforce", "degraded": [],
        "output": "json", "cwd": claimed, "env": {"PATH": "/usr/bin:/bin"}}
s.sendmsg([json.dumps(body).encode() + b"\n"],
          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]).tobytes())])
buf = b""
while chunk := s.recv(4096):
    buf += chunk
print(buf.decode(), end="")
"""


@pytest.fixture(scope="module")
def dm() -> Iterator[Daemon]:
    daemon = start_daemon(workdir("gb-trust-cwd-"), None)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def secret(dm: Daemon) -> Path:
    """A 0755 directory with a readable file, under a 0700 root directory."""
    top = dm.sock.parent / "root-only"
    sub = top / "sub"
    sub.mkdir(parents=True, exist_ok=True)
    top.chmod(0o700)
    sub.chmod(0o755)
    (sub / "f").write_text("secret-content\n")
    (sub / "f").chmod(0o644)
    return sub


@pytest.mark.parametrize("how", ["orphaned", "direct"])
def test_a_claimed_cwd_the_caller_cannot_enter_is_refused(dm: Daemon, secret: Path,
                                                          how: str) -> None:
    r = subprocess.run([*NOBODY, sys.executable, "-c", PROBE, str(dm.sock), str(secret), how],
                       capture_output=True, text=True, timeout=60, cwd="/tmp",
                       env={"PATH": "/usr/bin:/bin"})
    assert "secret-content" not in r.stdout + r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    if how == "orphaned":  # the kernel's view is gone: refused, nothing ran
        assert final["exit_code"] == 125, r
        assert "could not read the caller's working directory" in r.stderr
    else:  # alive: the claim is not the caller's cwd, so its real cwd (/tmp) is used
        assert final["exit_code"] == 1, r  # cat: f: No such file or directory
    assert os.path.exists(secret / "f")
