"""Issue 13: the exec gate, the in-kernel verification and the pre-check accept every argv and
environment the kernel accepts. The only cap is the kernel's own (argv + envp strings and
pointers within 3/4 of the 8 MiB stack limit, each string within MAX_ARG_STRLEN): past it the
exec fails with E2BIG, as it does bare. Non-root, through the daemon, under a profile that
allows `sh`, `seq`, `xargs`, `echo`, `find`, `ls`, `wc`; each result compared with bare."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.security._attack import NOBODY, Daemon, blocks, daemon_with

pytestmark = pytest.mark.kernel

PROFILE = """\
name: xargs
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: [sh, dash, seq, xargs, echo, find, ls, wc, "/usr/bin/python3*"]
  default: block
"""

BIG_EXEC = r"""
import os, resource, sys
# the kernel's cap is min(6 MiB, RLIMIT_STACK / 4): raise the soft stack limit to the hard one
resource.setrlimit(resource.RLIMIT_STACK, (resource.getrlimit(resource.RLIMIT_STACK)[1],) * 2)
n, size = int(sys.argv[1]), int(sys.argv[2])
args = ["echo"] + [f"{i:0{size}d}" for i in range(n)]
try:
    os.execv("/bin/echo", args)
except OSError as e:
    print("EXEC-FAILED", e.errno, flush=True)
"""


@pytest.fixture(scope="module")
def dm() -> Iterator[Daemon]:
    yield from daemon_with({"xargs": PROFILE})


def bare(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=120, cwd="/")


@pytest.mark.parametrize("cmd", [
    "seq 1 30000 | xargs echo | wc -l",
    "seq 1 30000 | xargs echo | wc -c",
    "find /usr -maxdepth 3 | xargs ls -d | wc -l",
])
def test_xargs_pipelines_match_bare(dm: Daemon, cmd: str) -> None:
    want = bare(cmd)
    got = dm.run("xargs", "sh", "-c", cmd)
    assert got.returncode == want.returncode == 0, got.stderr
    assert got.stdout == want.stdout, (got.stdout, want.stdout, got.stderr[-2000:])
    assert "BLOCKED" not in got.stderr, got.stderr[-2000:]


@pytest.mark.parametrize("n,size", [(30000, 60), (70000, 70)])
def test_one_exec_with_megabytes_of_argv_runs(dm: Daemon, n: int, size: int) -> None:
    """2 MB and 5.3 MB of argv in one exec (the second close to the kernel's 6 MiB)."""
    (dm.home / "big.py").write_text(BIG_EXEC)
    (dm.home / "big.py").chmod(0o644)
    before = len(dm.audit())
    r = dm.run("xargs", "/usr/bin/python3", str(dm.home / "big.py"), str(n), str(size))
    assert r.returncode == 0, r.stderr[-2000:]
    words = r.stdout.split()
    assert len(words) == n and words[-1] == f"{n - 1:0{size}d}", r.stdout[:200]
    events = dm.audit()[before:]
    assert not blocks(events), blocks(events)[:1]
    echo = [e for e in events if e["type"] == "exec" and e["argv"][0] == "echo"]  # type: ignore
    assert echo and len(echo[0]["argv"]) == n + 1  # type: ignore[arg-type]


def test_past_the_kernels_own_cap_is_e2big_as_bare(dm: Daemon) -> None:
    (dm.home / "big.py").write_text(BIG_EXEC)
    (dm.home / "big.py").chmod(0o644)
    want = subprocess.run([*NOBODY, "/usr/bin/python3", str(dm.home / "big.py"), "100000", "70"],
                          capture_output=True, text=True, timeout=60)
    assert "EXEC-FAILED 7" in want.stdout  # E2BIG bare
    before = len(dm.audit())
    r = dm.run("xargs", "/usr/bin/python3", str(dm.home / "big.py"), "100000", "70")
    assert "EXEC-FAILED 7" in r.stdout, r.stdout[:300] + r.stderr[-2000:]
    assert not blocks(dm.audit()[before:]), "E2BIG is the kernel's answer, not a block"


def test_a_blocked_large_argv_is_shown_with_its_first_arguments_and_count(
        dm: Daemon, stub_kubectl: object) -> None:
    before = len(dm.audit())
    r = dm.run("xargs", "sh", "-c", "seq 1 5000 | xargs kubectl delete pod")
    assert "stub-kubectl" not in r.stdout
    line = next(x for x in r.stderr.splitlines() if "BLOCKED" in x)
    assert "argv: kubectl delete pod 1 2 3" in line, line[:500]
    assert "5003 arguments" in line, line[-300:]
    assert len(line) < 2000, "the message shows the first arguments, not all of them"
    b = blocks(dm.audit()[before:], "exec-gate", "safeBins.kubectl.restrictedCommands:delete")
    assert b and len(b[0]["argv"]) == 5003  # type: ignore[arg-type]
