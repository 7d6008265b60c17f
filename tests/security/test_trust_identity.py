"""Issue 9, attacks 1 and 4b: a caller cannot choose its own policy or claim another agent.

Through the real daemon (root) with non-root callers (`setpriv`), and as root in process:
  - a relaxed profile by name, or a profile file, is refused for a non-root caller (125), the
    refusal is in the audit log with its context; its own bound profile runs (control);
  - `--agent` only picks among the caller's own bindings; another agent's name (and so its
    grants) is refused; without `agents:` a caller is the agent named after its user;
  - root in process is the operator and may choose; a config a non-root user can write is
    refused."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._trust import (
    APPROVER_UID,
    NOBODY,
    Daemon,
    gb,
    last_json,
    of,
    start_daemon,
    workdir,
)

pytestmark = pytest.mark.kernel

TOKEN = "sre-oncall-token-identity"
OTHER_UID = 64990
CONFIG = {
    "agents": {"ops-bot": {"users": ["nobody"], "profiles": ["k8s-readonly", "readonly"]},
               "other-bot": {"users": [OTHER_UID], "profiles": ["k8s-readonly"]}},
    "approvers": {"sre-oncall": {"users": [APPROVER_UID],
                                 "tokenSha256": hashlib.sha256(TOKEN.encode()).hexdigest()}},
}
DELETE = ["kubectl", "-n", "prod", "delete", "pod"]


@pytest.fixture(scope="module")
def bound() -> Iterator[Daemon]:
    dm = start_daemon(workdir("gb-trust-bound-"), CONFIG)
    try:
        yield dm
    finally:
        dm.stop()


@pytest.fixture(scope="module")
def embedded() -> Iterator[Daemon]:
    dm = start_daemon(workdir("gb-trust-embedded-"), None)
    try:
        yield dm
    finally:
        dm.stop()


def root_env(dm: Daemon, **extra: str) -> dict[str, str]:
    """Root in process on the daemon's own state, store and config (the operator)."""
    return dict(dm.env, GLASSBREAK_NO_DAEMON="1", **extra)


@pytest.mark.parametrize("which", ["bound", "embedded"])
def test_relaxed_profile_by_name_refused(which: str, request: pytest.FixtureRequest,
                                         stub_kubectl: Path) -> None:
    dm: Daemon = request.getfixturevalue(which)
    argv = [*DELETE, f"relaxed-{which}"]
    r = gb("run", "-p", "k8s-ops-escalated", "--", *argv, env=dm.client_env(), prefix=NOBODY)
    assert r.returncode == 125, r.stderr
    assert "stub-kubectl" not in r.stdout
    assert "relaxed profile" in r.stderr and "strict profile k8s-readonly" in r.stderr
    refused = of(dm.audit(), "run_refused", uid=65534, profile="k8s-ops-escalated")
    assert refused and refused[-1]["argv"] == argv and refused[-1]["via"] == "daemon"
    assert refused[-1]["cwd"] == "/" and "relaxed profile" in refused[-1]["why"]
    # control: the strict profile runs the read, and blocks the delete (126, an escalation)
    ok = gb("run", "-p", "k8s-readonly", "--", "kubectl", "get", "pods", env=dm.client_env(),
            prefix=NOBODY)
    assert ok.returncode == 0 and ok.stdout == "stub-kubectl get pods\n", ok.stderr
    blocked = gb("run", "-p", "k8s-readonly", "--", *argv, env=dm.client_env(), prefix=NOBODY)
    assert blocked.returncode == 126 and "stub-kubectl" not in blocked.stdout


@pytest.mark.parametrize("which", ["bound", "embedded"])
def test_profile_file_refused_for_non_root(which: str, request: pytest.FixtureRequest,
                                           tmp_path: Path) -> None:
    dm: Daemon = request.getfixturevalue(which)
    mine = workdir("gb-trust-mine-")
    prof = mine / "mine.yaml"
    prof.write_text("name: mine\nexec:\n  default: allow\n")
    os.chown(mine, 65534, 65534)
    os.chown(prof, 65534, 65534)
    for p in (str(prof), "./mine.yaml", "mine.yaml"):
        r = gb("run", "-p", p, "--", "sh", "-c", "echo pwned", env=dm.client_env(),
               prefix=NOBODY, cwd=str(mine))
        assert r.returncode == 125, (p, r.stderr)
        assert "pwned" not in r.stdout and "only root may run under a profile file" in r.stderr
    refused = of(dm.audit(), "run_refused", uid=65534, profile=str(prof))
    assert refused and refused[-1]["argv"] == ["sh", "-c", "echo pwned"]
    # control: `check` still tries a file (nothing runs)
    c = gb("check", "-p", str(prof), "--", "sh", "-c", "echo pwned", env=dm.client_env(),
           prefix=NOBODY)
    assert c.returncode == 0 and c.stdout.startswith("ALLOW"), c.stderr


def test_another_agents_name_refused(bound: Daemon) -> None:
    r = gb("run", "--agent", "other-bot", "-p", "readonly", "--", "/bin/echo", "hi",
           env=bound.client_env(), prefix=NOBODY)
    assert r.returncode == 125 and r.stdout == ""
    assert "--agent other-bot refused" in r.stderr and "bound to agent(s) ops-bot" in r.stderr
    assert str(bound.env["GLASSBREAK_CONFIG"]) in r.stderr  # names where the binding lives
    refused = of(bound.audit(), "run_refused", uid=65534, agent="other-bot")
    assert refused and refused[-1]["argv"] == ["/bin/echo", "hi"]
    # a profile outside the binding is refused too
    r = gb("run", "-p", "k8s-ops-escalated", "--agent", "ops-bot", "--", "/bin/true",
           env=bound.client_env(), prefix=NOBODY)
    assert r.returncode == 125
    # control: its own binding, named or by default
    for extra in (["--agent", "ops-bot", "-p", "readonly"], []):
        ok = gb("run", "-o", "json", *extra, "--", "sh", "-c", "echo hi",
                env=bound.client_env(), prefix=NOBODY)
        assert ok.returncode == 0 and ok.stdout == "hi\n", ok.stderr
    started = of(bound.audit(), "run_started", uid=65534)[-1]
    assert started["agent"] == "ops-bot" and started["user"] == "nobody"
    assert started["profile"] == "k8s-readonly"  # the binding's first profile: the default
    assert "agents.ops-bot lists uid 65534 (nobody)" in started["agent_source"]


def test_claimed_agent_cannot_use_its_grant(bound: Daemon, stub_kubectl: Path) -> None:
    argv = [*DELETE, "claimed"]
    # other-bot (uid 64990) is blocked, an approver grants it: other-bot's runs are relaxed
    other = ("setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups")
    r = gb("run", "-o", "json", "--", *argv, env=bound.client_env(), prefix=other)
    assert r.returncode == 126, r.stderr
    esc = last_json(r.stderr)["escalation_id"]
    ok = gb("escalations", "approve", esc, "--as", "sre-oncall", env=root_env(bound))
    assert ok.returncode == 0, ok.stderr
    r = gb("run", "--", *argv, env=bound.client_env(), prefix=other)
    assert r.returncode == 0 and "stub-kubectl delete" in r.stdout.replace("-n prod ", ""), \
        r.stderr
    # nobody claims to be other-bot: refused; as itself the grant is not its own
    r = gb("run", "--agent", "other-bot", "--", *argv, env=bound.client_env(), prefix=NOBODY)
    assert r.returncode == 125 and "stub-kubectl" not in r.stdout
    r = gb("run", "--", *argv, env=bound.client_env(), prefix=NOBODY)
    assert r.returncode == 126 and "stub-kubectl" not in r.stdout


def test_root_in_process_is_the_operator(bound: Daemon, stub_kubectl: Path) -> None:
    r = gb("run", "-p", "k8s-ops-escalated", "--agent", "anyone", "--", *DELETE, "root",
           env=root_env(bound))
    assert r.returncode == 0 and r.stdout.startswith("stub-kubectl"), r.stderr
    d = workdir("gb-trust-rootfile-")
    (d / "rootfile.yaml").write_text("name: rootfile\nexec:\n  default: allow\n")
    r = gb("run", "-p", str(d / "rootfile.yaml"), "--", "/bin/echo", "mine", env=root_env(bound))
    assert r.returncode == 0 and r.stdout == "mine\n", r.stderr
    started = of(bound.audit(), "run_started", profile="rootfile")[-1]
    assert started["uid"] == 0 and "operator" in started["agent_source"]


def test_embedded_default_caller_is_its_unix_user(embedded: Daemon) -> None:
    ok = gb("run", "--", "/bin/echo", "hi", env=embedded.client_env(), prefix=NOBODY)
    assert ok.returncode == 0, ok.stderr
    started = of(embedded.audit(), "run_started", uid=65534)[-1]
    assert started["agent"] == "nobody" and started["profile"] == "readonly"
    r = gb("run", "--agent", "ops-bot", "--", "/bin/echo", "hi", env=embedded.client_env(),
           prefix=NOBODY)
    assert r.returncode == 125 and "your runs are agent 'nobody'" in r.stderr


def test_config_writable_by_others_refused(tmp_path: Path) -> None:
    d = workdir("gb-trust-cfg-")
    cfg = d / "config.yaml"
    cfg.write_text(json.dumps(CONFIG))
    state = d / "state"
    env = dict(os.environ, GLASSBREAK_NO_DAEMON="1", GLASSBREAK_CONFIG=str(cfg),
               GLASSBREAK_STATE_DIR=str(state))
    cfg.chmod(0o644)
    ok = gb("run", "--", "/bin/echo", "hi", env=env)
    assert ok.returncode == 0, ok.stderr
    for spoil in ("chmod", "chown", "dir"):
        cfg.chmod(0o666 if spoil == "chmod" else 0o644)
        os.chown(cfg, 65534 if spoil == "chown" else 0, 0)
        d.chmod(0o777 if spoil == "dir" else 0o755)
        r = gb("run", "--", "/bin/echo", "hi", env=env)
        assert r.returncode == 125 and r.stdout == "", (spoil, r.stderr)
        assert f"refusing the glassbreak config {cfg}" in r.stderr and "Traceback" not in r.stderr
    refused = [e for e in (json.loads(x) for x in (state / "audit.jsonl").read_text()
                           .splitlines()) if e["type"] == "run_refused"]
    assert len(refused) == 3 and all("not root" in e["why"] or "writable" in e["why"]
                                     for e in refused)


def test_cwd_sandbox_package_is_never_imported(tmp_path: Path) -> None:
    """The CLI behind the native client ran `python3 -c ...`, which puts the cwd first on
    sys.path: root running glassbreak in an agent's workspace ran the agent's `sandbox/`."""
    pkg = tmp_path / "sandbox" / "cli"
    pkg.mkdir(parents=True)
    for f in (tmp_path / "sandbox" / "__init__.py", pkg / "__init__.py"):
        f.write_text("print('PWNED-FROM-CWD')\n")
    (pkg / "entry.py").write_text("def main():\n    print('PWNED-FROM-CWD')\n")
    env = dict(os.environ, GLASSBREAK_NO_DAEMON="1")
    r = gb("check", "--", "ls", env=env, cwd=str(tmp_path))
    assert "PWNED" not in r.stdout + r.stderr
    assert r.returncode == 0 and r.stdout.startswith("ALLOW"), r.stderr


def test_daemon_sees_binding_edits_at_the_next_run() -> None:
    """Removing a binding takes effect at once, without restarting the daemon."""
    d = workdir("gb-trust-edit-")
    dm = start_daemon(d, {"agents": {"ops-bot": {"users": ["nobody"],
                                                  "profiles": ["readonly"]}}})
    try:
        ok = gb("run", "--", "/bin/echo", "hi", env=dm.client_env(), prefix=NOBODY)
        assert ok.returncode == 0, ok.stderr
        cfg = Path(dm.env["GLASSBREAK_CONFIG"])
        cfg.write_text(json.dumps({"agents": {"ops-bot": {"users": [12345],
                                                          "profiles": ["readonly"]}}}))
        r = gb("run", "--", "/bin/echo", "hi", env=dm.client_env(), prefix=NOBODY)
        assert r.returncode == 125 and "bound to no agent" in r.stderr
    finally:
        dm.stop()
