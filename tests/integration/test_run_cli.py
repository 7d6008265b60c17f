"""The runner end to end, through the real `glassbreak` console script, real kernel.

Issue 2's "Done means": with a stub kubectl, the allowed command runs; spellings of blocked
commands exit 126 with one clear line; a syscall denied by the profile fails inside the child with
the profile's errno; every block is recorded (audit log + escalation request)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.kernel


@pytest.fixture
def env(stub_kubectl: Path, state_dir: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir)}


def _audit(state_dir: Path) -> list[dict[str, object]]:
    p = state_dir / "audit.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def test_allowed_kubectl_runs(env: dict[str, str], state_dir: Path) -> None:
    r = run_cli("run", "--profile", "k8s-readonly", "--", "kubectl", "get", "pods", "-n", "prod",
                env=env)
    assert r.returncode == 0, r.stderr
    assert "stub-kubectl get pods -n prod" in r.stdout
    res = [e for e in _audit(state_dir) if e["type"] == "run_result"]
    assert res and res[-1]["exit_code"] == 0 and res[-1]["decision"] == "allow"


@pytest.mark.parametrize("argv,rule_part", [
    (["kubectl", "-n", "prod", "delete", "pod", "x"], "restrictedCommands:delete"),
    # kubectl reads argv as cobra/pflag (issue 10): `--forc` is no abbreviation there, but
    # `_` is `-`, and this routes to delete
    (["kubectl", "get", "pods", "--grace_period=0"], "forbiddenFlags:--grace-period"),
    (["kubectl", "-An", "delete", "prod", "--all-namespaces=false", "pod", "x"],
     "restrictedCommands:delete"),
    (["kubectl", "get", "pods", "--bogus"], "--bogus"),
])
def test_blocked_kubectl_spellings(env: dict[str, str], state_dir: Path, argv: list[str],
                                   rule_part: str) -> None:
    r = run_cli("run", "--profile", "k8s-readonly", "--", *argv, env=env)
    assert r.returncode == 126, (r.returncode, r.stdout, r.stderr)
    assert "stub-kubectl" not in r.stdout  # nothing ran
    lines = [ln for ln in r.stderr.splitlines() if "BLOCKED" in ln]
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert "[pre-check]" in line and "profile=k8s-readonly" in line and "rule=" in line
    assert rule_part in line or rule_part in r.stderr
    assert "to ask:" in line
    blocked = [e for e in _audit(state_dir) if e["type"] == "blocked"]
    assert blocked and blocked[-1]["argv"] == argv and blocked[-1]["layer"] == "pre-check"
    assert blocked[-1]["escalation_id"], "every block is recorded as an escalation request"


def test_json_output_last_line_is_result(env: dict[str, str]) -> None:
    r = run_cli("run", "--output", "json", "--profile", "k8s-readonly", "--", "kubectl", "-n",
                "prod", "delete", "pod", "x", env=env)
    assert r.returncode == 126
    assert r.stdout == ""  # glassbreak never writes into the command's stdout
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.strip()]
    assert lines[-1]["type"] == "run_result"
    assert lines[-1]["decision"] == "block" and lines[-1]["exit_code"] == 126
    assert lines[-1]["escalation_id"]
    assert any(x["type"] == "blocked" for x in lines)


def test_seccomp_errno_inside_child(env: dict[str, str], tmp_path: Path) -> None:
    prof = tmp_path / "nomkdir.yaml"
    prof.write_text(
        "name: nomkdir\nextends: base\nseccomp:\n  rules:\n"
        "    - {action: 'errno:EACCES', syscalls: [mkdir, mkdirat], reason: no new dirs}\n"
        "exec:\n  allow: [/usr/bin/mkdir]\n"
    )
    target = tmp_path / "newdir"
    r = run_cli("run", "--profile", str(prof), "--", "mkdir", str(target), env=env)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr  # EACCES, the profile's errno, not EPERM
    assert not target.exists()


def test_command_not_found_is_127(env: dict[str, str]) -> None:
    r = run_cli("run", "--profile", "readonly", "--", "no-such-command-xyz", env=env)
    assert r.returncode == 127, r.stderr
    assert "not found" in r.stderr.lower()
    assert "Traceback" not in r.stderr


def test_bad_profile_is_125_with_file_line(env: dict[str, str], tmp_path: Path) -> None:
    prof = tmp_path / "bad.yaml"
    prof.write_text("name: bad\nsafeBins:\n  ls:\n    forbidenFlags: [-R]\n")
    r = run_cli("run", "--profile", str(prof), "--", "ls", env=env)
    assert r.returncode == 125, r.stderr
    assert "bad.yaml:4" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_prints_decision_and_runs_nothing(env: dict[str, str]) -> None:
    r = run_cli("check", "--profile", "k8s-readonly", "--", "kubectl", "get", "pods",
                "--grace_period=0", env=env)
    assert r.returncode == 126
    assert "BLOCK" in r.stdout and "--grace-period" in r.stdout
    ok = run_cli("check", "--profile", "k8s-readonly", "--", "kubectl", "get", "pods", env=env)
    assert ok.returncode == 0 and "ALLOW" in ok.stdout


def test_exit_code_and_signal_pass_through(env: dict[str, str]) -> None:
    r = run_cli("run", "--profile", "readonly", "--", "sh", "-c", "exit 7", env=env)
    assert r.returncode == 7, r.stderr
    r = run_cli("run", "--profile", "readonly", "--", "sh", "-c", "kill -TERM $$", env=env)
    assert r.returncode == 128 + 15, r.stderr


def test_trace_shows_tree(env: dict[str, str]) -> None:
    r = run_cli("run", "--output", "json", "--profile", "readonly", "--", "sh", "-c",
                "ls / >/dev/null; cat /dev/null", env=env)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stderr.splitlines()[-1])["run_id"]
    t = run_cli("trace", run_id, env=env)
    assert t.returncode == 0, t.stderr
    assert "ls /" in t.stdout and "cat /dev/null" in t.stdout
    tj = json.loads(run_cli("trace", run_id, "--output", "json", env=env).stdout)
    assert tj["run_id"] == run_id and tj["tree"]


def test_no_traceback_for_usage_error(env: dict[str, str]) -> None:
    r = run_cli("run", "--profile", "readonly", "--wait=notaduration", "--", "ls", env=env)
    assert r.returncode == 125 or r.returncode == 2
    assert "Traceback" not in r.stderr


def test_env_unused_marker() -> None:
    assert os.path.exists("/bin/sh")


def test_missing_ebpf_refuses_125_unless_degraded(env: dict[str, str], state_dir: Path,
                                                  tmp_path: Path) -> None:
    """A broken bcc (shadowed by a module that fails to import) is a missing kernel feature:
    the run refuses with 125 and a doctor hint; --degraded ebpf runs and says so in the log."""
    fake = tmp_path / "fakebcc" / "bcc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libbcc is not installed (test)')\n")
    broken = {**env, "PYTHONPATH": str(fake.parent)}
    r = run_cli("run", "--profile", "readonly", "--", "/bin/true", env=broken)
    assert r.returncode == 125, r.stderr
    assert "eBPF" in r.stderr and "glassbreak doctor" in r.stderr
    assert "Traceback" not in r.stderr
    # the network layer's socket hooks are bcc programs too: without bcc they refuse as well
    r = run_cli("run", "--profile", "readonly", "--degraded", "ebpf", "--", "/bin/true",
                env=broken)
    assert r.returncode == 125 and "network layer" in r.stderr, r.stderr
    r = run_cli("run", "--profile", "readonly", "--degraded", "ebpf", "--degraded", "network",
                "--", "/bin/true", env=broken)
    assert r.returncode == 0, r.stderr
    assert "warning: ebpf" in r.stderr and "warning: network" in r.stderr
    started = [e for e in _audit(state_dir) if e["type"] == "run_started"]
    assert started[-1]["degraded"] == ["ebpf", "network"]
    assert "ebpf" not in started[-1]["layers"] and "network" not in started[-1]["layers"]
    assert any(e["type"] == "degraded" and e["what"] == "ebpf" for e in _audit(state_dir))


def test_monitor_mode_runs_and_records_would_block(env: dict[str, str], state_dir: Path) -> None:
    r = run_cli("run", "--mode", "monitor", "--profile", "k8s-readonly", "--", "kubectl", "-n",
                "prod", "delete", "pod", "x", env=env)
    assert r.returncode == 0, r.stderr
    assert "stub-kubectl -n prod delete pod x" in r.stdout
    assert "WOULD BLOCK" in r.stderr
    b = [e for e in _audit(state_dir) if e["type"] == "blocked"]
    assert b and b[0]["enforced"] is False and b[0]["layer"] == "pre-check"
    assert b[0]["escalation_id"] is None  # monitor mode raises no escalation


def test_run_keeps_the_callers_cwd_while_the_bpf_program_compiles(env: dict[str, str],
                                                                  state_dir: Path,
                                                                  tmp_path: Path) -> None:
    """bcc's compile chdir()s the whole process for a while; a cold run compiles in a thread
    while the profile loads. The command must still run in the caller's cwd, relative profile
    paths must resolve there, and escalations must record it (it is part of a command grant's
    key). Before the fix 5 runs in 12 got the kernel headers dir instead."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "p.yaml").write_text("name: p\nextends: base\nexec:\n  allow: [/usr/bin/pwd]\n")
    for _ in range(5):
        r = run_cli("run", "-o", "json", "--profile", "p.yaml", "--", "pwd", env=env,
                    cwd=str(work))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(work)
    started = [e for e in _audit(state_dir) if e["type"] == "run_started"]
    assert len(started) == 5 and all(e["cwd"] == str(work) for e in started)
