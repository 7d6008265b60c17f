"""cgroup v2 leaf per run: nothing started by a run outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from sandbox.kernel import cgroup as cgmod
from sandbox.kernel.cgroup import RunCgroup, cgroup2_mount, cleanup_stale
from tests._sandbox_helpers import alive, run_sandboxed
from tests.conftest import REPO, is_root, require

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root() -> None:
    require(is_root(), "needs root")
    try:
        cgroup2_mount()
    except Exception as e:  # noqa: BLE001
        require(False, f"cgroup v2: {e}")


@pytest.fixture
def cg():
    c = RunCgroup.create("test_" + uuid.uuid4().hex[:10])
    yield c
    c.close()



DAEMON = ("(setsid sh -c 'sleep 300 & echo $! > {pidfile}; wait' </dev/null >/dev/null 2>&1 &) ;"
          " while [ ! -s {pidfile} ]; do sleep 0.01; done; echo started")


def test_cgroup_id_procs_and_mount(cg):
    assert cg.path.parent == cgroup2_mount() / "glassbreak"
    assert cg.id == os.stat(cg.path).st_ino and cg.id > 0
    assert cg.procs_path.endswith("cgroup.procs")
    assert cg.pids() == [] and not cg.populated()


def test_kill_ends_a_double_forked_setsid_daemon(cg, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    r = run_sandboxed(["/bin/sh", "-c", DAEMON.format(pidfile=pidfile)], bpf=None,
                      cgroup_procs=cg.procs_path)
    assert "started" in r.out
    daemon = int(pidfile.read_text())
    assert alive(daemon), "the daemon should still run after its parent exited"
    assert daemon in cg.pids() and cg.populated()
    with open(f"/proc/{daemon}/cgroup") as f:
        assert f"/glassbreak/{cg.path.name}" in f.read()
    cg.kill()
    assert cg.wait_empty(2.0)
    assert not alive(daemon)
    assert cg.remove() and not cg.path.exists()


def test_cleanup_stale_removes_leaves_of_dead_supervisors():
    c = RunCgroup.create("stale_" + uuid.uuid4().hex[:10])
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with open(c.procs_path, "w") as f:
            f.write(str(proc.pid))
        os.setxattr(c.path, cgmod.OWNER_XATTR, b"999999999:1")  # a supervisor that is gone
        mine = RunCgroup.create("live_" + uuid.uuid4().hex[:10])
        removed = cleanup_stale()
        assert c.path.name in removed and not c.path.exists()
        assert mine.path.exists(), "a live supervisor's leaf must be kept"
        assert proc.wait(2) == -9
        mine.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        c.close()


HELPER = r"""
import os, sys, time
sys.path[:0] = [sys.argv[1]]
from sandbox.kernel.cgroup import RunCgroup
from sandbox.kernel.child import spawn
cg = RunCgroup.create(sys.argv[2])
c = spawn(["/bin/sh", "-c", sys.argv[3]], executable="/bin/sh", env={"PATH": "/usr/bin:/bin"},
          cwd="/", cgroup_procs=cg.procs_path, bpf=None, notify=False, stdout=2)
print("ready", flush=True)
time.sleep(60)
"""


def test_supervisor_sigkill_ends_the_whole_tree(tmp_path):
    pidfile = tmp_path / "daemon.pid"
    name = "wd_" + uuid.uuid4().hex[:10]
    helper = subprocess.Popen([sys.executable, "-c", HELPER, str(REPO), name,
                               DAEMON.format(pidfile=pidfile) + "; sleep 60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None
        assert helper.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 5
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        daemon = int(pidfile.read_text())
        assert alive(daemon)
        helper.kill()
        helper.wait(5)
        deadline = time.monotonic() + 1.0
        while alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(daemon), "a daemonized process outlived its SIGKILLed supervisor"
        path = cgroup2_mount() / "glassbreak" / name
        deadline = time.monotonic() + 2.0
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not path.exists(), "the watchdog should remove the dead run's leaf"
    finally:
        if helper.poll() is None:
            helper.kill()
        leftover = cgroup2_mount() / "glassbreak" / name
        if leftover.exists():
            RunCgroup(leftover, 0).close()
