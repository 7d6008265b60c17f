"""Secrets in argv, through the real runner and kernel (issue 12, defect 6 and the identity
engineer's note): the audit log keeps argv redacted like the escalation record (`blocked`, and
every other event that carries argv), and a command-scope grant for a command with a secret
in its argv still lets exactly that command run (the grant's own argv is the redacted record's;
what binds it is its signed command key)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.kernel

SECRET = "s3cr3t-Value-0123456789abcdef"
URL_PASSWORD = "hunter2-pw"
CMD = ["kubectl", "-n", "prod", "delete", "pod", "web-1", f"--token={SECRET}",
       f"--server=https://ops:{URL_PASSWORD}@k8s.example:6443"]


@pytest.fixture
def env(stub_kubectl: Path, state_dir: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir),
            "GLASSBREAK_AGENT": "bot-1"}


def _last(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return json.loads(r.stderr.strip().splitlines()[-1])


def test_secret_argv_redacted_in_audit_and_command_grant_still_runs(
        env: dict[str, str], state_dir: Path) -> None:
    r = run_cli("run", "-o", "json", "-p", "k8s-readonly", "--", *CMD, env=env)
    assert r.returncode == 126, r.stderr
    esc = str(_last(r)["escalation_id"])
    shown = json.loads(run_cli("escalations", "show", esc, "-o", "json", env=env).stdout)
    assert shown["argv"][-2:] == ["--token=[redacted]",
                                  "--server=https://ops:[redacted]@k8s.example:6443"]
    audit = (state_dir / "audit.jsonl").read_text()
    blocked = [json.loads(x) for x in audit.splitlines() if '"type":"blocked"' in x]
    assert blocked and blocked[-1]["argv"][-2:] == shown["argv"][-2:]
    assert SECRET not in audit and URL_PASSWORD not in audit

    ok = run_cli("escalations", "approve", esc, "--as", "sre-oncall", "--scope", "command",
                 "--once", env=env)
    assert ok.returncode == 0, ok.stderr
    g = json.loads(run_cli("grants", "list", "-o", "json", env=env).stdout)[0]
    assert g["argv"][-2] == "--token=[redacted]"  # the store never held the secret
    r = run_cli("run", "-o", "json", "-p", "k8s-readonly", "--", *CMD, env=env)
    assert r.returncode == 0, r.stderr  # exactly this command, secret and all, runs once
    assert f"--token={SECRET}" in r.stdout  # the program got its real argv
    again = run_cli("run", "-p", "k8s-readonly", "--", *CMD, env=env)
    assert again.returncode == 126  # one-shot: consumed
    audit = (state_dir / "audit.jsonl").read_text()
    assert SECRET not in audit and URL_PASSWORD not in audit  # exec, run_started too
    assert '"type":"grant_used"' in audit
    db = b"".join(p.read_bytes() for p in state_dir.iterdir() if p.name.startswith("state.db"))
    assert SECRET.encode() not in db and URL_PASSWORD.encode() not in db
