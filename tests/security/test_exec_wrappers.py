"""Exec gate vs wrappers: a ruled command started through `sh -c`, `env`, `xargs`,
`find -exec`, `nice`, `timeout`, busybox applets or a Python subprocess is refused by the kernel
(seccomp user-notification -> EPERM), and the block is recorded with its context."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import require, run_cli

pytestmark = pytest.mark.kernel

PROFILE = """\
name: gatetest
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete, exec]
exec:
  allow: [sh, dash, bash, env, xargs, find, nice, timeout, "true", cat, echo, touch, busybox,
          ls, seq, sleep, setsid, printf, "/usr/bin/python3*"]
  default: block
"""


def write_profile(tmp_path: Path, text: str = PROFILE) -> str:
    p = tmp_path / "gatetest.yaml"
    p.write_text(text)
    return str(p)


def audit(state_dir: Path) -> list[dict[str, object]]:
    p = state_dir / "audit.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def gate(tmp_path: Path, state_dir: Path, *cmd: str, profile: str | None = None,
         timeout: float = 60) -> tuple[object, list[dict[str, object]]]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir)}
    r = run_cli("run", "--profile", profile or write_profile(tmp_path), "--", *cmd, env=env,
                timeout=timeout)
    return r, audit(state_dir)


def assert_blocked(events: list[dict[str, object]], layer: str, rule_part: str,
                   argv_tail: list[str], binary: str | None = None) -> dict[str, object]:
    blocks = [e for e in events if e["type"] == "blocked" and e["layer"] == layer
              and rule_part in str(e["rule_id"])]
    assert blocks, f"no {layer} block with rule {rule_part!r}: " + json.dumps(
        [e for e in events if e["type"] in ("blocked", "exec")], indent=1)[:3000]
    b = blocks[0]
    assert list(b["argv"])[-len(argv_tail):] == argv_tail, b  # type: ignore[call-overload]
    if binary is not None:
        assert b["binary"] == binary, b
    assert b["sha256"] and b["pid"] and b["profile"] == "gatetest"
    assert b["escalation_id"], "a block raises an escalation request"
    obs = [e for e in events if e["type"] == "exec" and e["decision"] != "allow"
           and e["pid"] == b["pid"]]
    assert obs and obs[0]["layer"] == layer, "the refused exec is in the trace too"
    return b


WRAPPERS = {
    "sh -c": ["sh", "-c", "kubectl delete pod x"],
    "env": ["env", "kubectl", "delete", "pod", "x"],
    "xargs": ["sh", "-c", "echo x | xargs kubectl delete pod"],
    "find -exec": ["find", "/etc/hostname", "-exec", "kubectl", "delete", "{}", "+"],
    "nice": ["nice", "-n", "5", "kubectl", "delete", "pod", "x"],
    "timeout": ["timeout", "5", "kubectl", "delete", "pod", "x"],
    "busybox env": ["busybox", "env", "kubectl", "delete", "pod", "x"],
    "busybox sh": ["busybox", "sh", "-c", "kubectl delete pod x"],
    "python subprocess": ["python3", "-c",
                          "import subprocess; subprocess.run(['kubectl', 'delete', 'pod', 'x'])"],
}


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_wrapper_cannot_smuggle_a_restricted_subcommand(name: str, tmp_path: Path,
                                                        state_dir: Path,
                                                        stub_kubectl: Path) -> None:
    argv = WRAPPERS[name]
    if argv[0] == "busybox":
        require(shutil.which("busybox") is not None, "busybox is not installed")
    r, events = gate(tmp_path, state_dir, *argv)
    assert "stub-kubectl" not in r.stdout, "the restricted command ran"  # type: ignore[attr-defined]
    assert r.returncode != 0  # type: ignore[attr-defined]
    tail = ["delete", "/etc/hostname"] if name == "find -exec" else ["delete", "pod", "x"]
    assert_blocked(events, "exec-gate", "restrictedCommands:delete", tail,
                   binary="/usr/local/bin/kubectl")
    # the wrapper itself was allowed and observed
    assert any(e["type"] == "exec" and e["decision"] == "allow" for e in events)


def test_allowed_subcommand_through_a_wrapper_runs(tmp_path: Path, state_dir: Path,
                                                   stub_kubectl: Path) -> None:
    r, events = gate(tmp_path, state_dir, "sh", "-c", "env kubectl get pods")
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    assert "stub-kubectl get pods" in r.stdout  # type: ignore[attr-defined]
    execs = [e for e in events if e["type"] == "exec"]
    assert any(e["argv"][1:] == ["get", "pods"] and e["decision"] == "allow"
               for e in execs), execs
    assert not [e for e in events if e["type"] == "blocked"]


def test_monitor_mode_runs_but_records_would_block(tmp_path: Path, state_dir: Path,
                                                   stub_kubectl: Path) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir)}
    r = run_cli("run", "--mode", "monitor", "--profile", write_profile(tmp_path), "--", "sh",
                "-c", "kubectl delete pod x", env=env)
    assert "stub-kubectl delete pod x" in r.stdout, r.stderr
    events = audit(state_dir)
    wb = [e for e in events if e["type"] == "exec" and e.get("would_block")]
    assert wb and wb[0]["argv"][-3:] == ["delete", "pod", "x"], events
    assert "restrictedCommands:delete" in str(wb[0]["rule_id"])
