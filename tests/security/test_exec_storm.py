"""Exec gate under load and against escapes: an exec storm is traced completely (one
ExecObserved per exec, no loss), double fork + setsid leaves nothing behind, and a SIGKILLed
supervisor takes the whole tree (and its pending exec) with it within a second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import GLASSBREAK, run_cli

pytestmark = pytest.mark.kernel

PROFILE = """\
name: gatetest
extends: base
owners: [sec-team]
exec:
  allow: [sh, dash, "true", sleep, setsid, echo, cat, touch]
  default: block
"""


def _env(state_dir: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir)}


def _profile(tmp_path: Path) -> str:
    p = tmp_path / "gatetest.yaml"
    p.write_text(PROFILE)
    return str(p)


def _events(state_dir: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (state_dir / "audit.jsonl").read_text().splitlines()]


def _pids_with(marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


@pytest.mark.slow
def test_exec_storm_every_exec_observed(tmp_path: Path, state_dir: Path) -> None:
    n = 2000
    t0 = time.monotonic()
    r = run_cli("run", "--profile", _profile(tmp_path), "--", "sh", "-c",
                f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done; echo storm-done",
                env=_env(state_dir), timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 0 and "storm-done" in r.stdout, r.stderr
    ev = _events(state_dir)
    assert not [e for e in ev if e["type"] == "events_lost"]
    trues = [e for e in ev if e["type"] == "exec" and e["argv"] == ["/bin/true"]]
    assert len(trues) == n, f"{len(trues)} ExecObserved for {n} execs"
    assert all(e["decision"] == "allow" and e["binary"] for e in trues)
    assert len({e["pid"] for e in trues}) == n
    res = [e for e in ev if e["type"] == "run_result"][-1]
    print(f"exec storm: {n} execs in {took:.2f}s")
    assert res["exit_code"] == 0


def test_double_fork_and_setsid_do_not_outlive_the_run(tmp_path: Path, state_dir: Path) -> None:
    marker = f"31{os.getpid() % 1000:03d}.5"
    script = (f"setsid sh -c 'sleep {marker} &' ; (sh -c 'sleep {marker} &' &) ; "
              f"sleep 0.3; echo parent-exits")
    r = run_cli("run", "--profile", _profile(tmp_path), "--", "sh", "-c", script,
                env=_env(state_dir), timeout=60)
    assert "parent-exits" in r.stdout, r.stderr
    deadline = time.monotonic() + 2
    while _pids_with(f"sleep\0{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_with(f"sleep\0{marker}"), "a daemonized process outlived the run"
    ev = _events(state_dir)
    sleeps = [e for e in ev if e["type"] == "exec" and e["argv"] == ["sleep", marker]]
    assert len(sleeps) == 2, "both escapees were traced"


def test_supervisor_sigkill_kills_the_tree_and_the_pending_exec(tmp_path: Path,
                                                                state_dir: Path) -> None:
    marker = f"32{os.getpid() % 1000:03d}.5"
    flag = tmp_path / "exec-ran"
    # the child loops: exec attempts keep coming while the supervisor is stopped
    script = (f"sleep {marker} & echo started; "
              f"while true; do touch {flag}; done")
    p = subprocess.Popen([GLASSBREAK, "run", "--profile", _profile(tmp_path), "--", "sh", "-c",
                          script], env={**os.environ, **_env(state_dir)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == b"started"
        deadline = time.monotonic() + 5
        while not _pids_with(f"sleep\0{marker}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _pids_with(f"sleep\0{marker}")
        os.kill(p.pid, signal.SIGSTOP)  # the next exec in the tree is left pending
        time.sleep(0.3)
        flag.unlink(missing_ok=True)
        os.kill(p.pid, signal.SIGKILL)
        t0 = time.monotonic()
        while _pids_with(f"sleep\0{marker}") and time.monotonic() - t0 < 3:
            time.sleep(0.02)
        gone_after = time.monotonic() - t0
        assert not _pids_with(f"sleep\0{marker}"), "the tree outlived its supervisor"
        assert gone_after < 1.0, f"the tree took {gone_after:.2f}s to die"
        time.sleep(0.2)
        assert not flag.exists(), "an exec ran after the supervisor died"
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
