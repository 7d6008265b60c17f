"""The in-kernel exec verification in each run mode, through the real runner:

- monitor: the kernel kills nothing; a difference between what the gate judged and what the
  kernel copied is recorded as a would-be block (enforced: false);
- --degraded exec-gate: no notifications, so no expectations: the kernel reports every exec
  with its identity and the supervisor judges the process after the fact (weaker: it has
  already started), killing it on a block;
- a run's own exec events carry the judged argv and the kernel's verdict counters reach the
  result (the in-kernel time per exec)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.security._attack import attacker, audit, blocks, result_line, world_dir

pytestmark = pytest.mark.kernel

PROFILE = """\
name: modes
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: [sh, dash, "true", echo, "{exe}"]
  default: block
"""


def _run(tmp_path: Path, state: Path, *argv: str, extra: tuple[str, ...] = (),
         exe: str = "/nonexistent") -> tuple[object, list[dict[str, object]]]:
    prof = tmp_path / "modes.yaml"
    prof.write_text(PROFILE.format(exe=exe))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state)}
    r = run_cli("run", *extra, "--profile", str(prof), "--", *argv, env=env, timeout=120)
    return r, audit(state)


def test_monitor_mode_records_kernel_mismatches_and_kills_nothing(
        tmp_path: Path, state_dir: Path, stub_kubectl: Path) -> None:
    exe = attacker("execrace", world_dir("gb-modes-"), "-lpthread")
    r, events = _run(tmp_path, state_dir, str(exe), "race", "60", str(stub_kubectl),
                     extra=("--mode", "monitor"), exe=str(exe))
    res = result_line(r.stdout)  # type: ignore[attr-defined]
    assert res["killed"] == 0 and res["eperm"] == 0, res  # nothing enforced
    changed = blocks(events, "exec-trace", "exec.argv-changed")
    assert changed, "no race in 60 tries: " + json.dumps(res)
    assert all(b["enforced"] is False and "not killed (monitor mode)" in str(b["reason"])
               for b in changed), changed[:1]
    assert not [e for e in events if e["type"] == "blocked" and e["enforced"]]


def test_degraded_exec_gate_judges_after_the_fact(tmp_path: Path, state_dir: Path,
                                                  stub_kubectl: Path) -> None:
    r, events = _run(tmp_path, state_dir, "sh", "-c",
                     "kubectl get pods; kubectl delete pod x; echo done",
                     extra=("--degraded", "exec-gate"))
    assert "stub-kubectl get pods" in r.stdout  # type: ignore[attr-defined]
    assert "done" in r.stdout  # type: ignore[attr-defined]
    b = blocks(events, "exec-trace", "safeBins.kubectl.restrictedCommands:delete")
    assert b and b[0]["enforced"] and b[0]["argv"][-3:] == ["delete", "pod", "x"], b  # type: ignore
    started = next(e for e in events if e["type"] == "run_started")
    assert started["degraded"] == ["exec-gate"]


def test_exec_events_carry_the_judged_argv_and_the_kernel_counts(tmp_path: Path,
                                                                 state_dir: Path) -> None:
    from sandbox.run import layers
    from sandbox.run.supervisor import RunRequest, Supervisor

    prof = tmp_path / "modes.yaml"
    prof.write_text(PROFILE.format(exe="/nonexistent"))
    found: list[layers.LayerResult] = []
    orig = layers.ExecGateLayer.finish

    def finish(self: layers.ExecGateLayer, run: object, result: layers.LayerResult) -> None:
        orig(self, run, result)  # type: ignore[arg-type]
        found.append(result)

    mp = pytest.MonkeyPatch()
    mp.setattr(layers.ExecGateLayer, "finish", finish)
    mp.setenv("GLASSBREAK_STATE_DIR", str(state_dir))
    try:
        res = Supervisor().run(RunRequest(argv=["sh", "-c", "for i in 1 2 3; do /bin/true x$i; "
                                                "done"], profile=str(prof)), lambda ev: None)
    finally:
        mp.undo()
    assert res.exit_code == 0
    kernel = found[-1].extra["kernel"]
    assert kernel["execs"] == 4 and kernel["kills"] == 0 and kernel["lost"] == 0, kernel
    assert 0 < kernel["ns"] / kernel["execs"] < 1_000_000, kernel  # µs per exec, not ms
    execs = [e for e in audit(state_dir) if e["type"] == "exec"]
    assert [e["argv"] for e in execs[1:]] == [["/bin/true", f"x{i}"] for i in (1, 2, 3)]
