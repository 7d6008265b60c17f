"""Issue 9, attack 4: anyone approved as anyone (`escalations approve ID --as sre-oncall` by an
unprivileged user against a shared Redis), and the decision was not audited.

A real root daemon on a real redis-server; callers through `setpriv`. The approver is proven:
root may say --as; a non-root user is its `approvers:` binding, or the approver whose token
it holds; naming someone else is refused and audited with the real caller. A decision whose
audit record cannot be written does not happen (fail closed, store unchanged)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer, run_cli, start_redis
from tests.security._trust import (
    APPROVER_UID,
    NOBODY,
    Daemon,
    as_uid,
    gb,
    last_json,
    of,
    start_daemon,
    workdir,
)

pytestmark = [pytest.mark.kernel, pytest.mark.redis]

TOKEN = "sre-oncall-token-" + os.urandom(6).hex()
CONFIG = {
    "agents": {"ops-bot": {"users": ["nobody"], "profiles": ["k8s-readonly"]}},
    "approvers": {"sre-oncall": {"users": [APPROVER_UID],
                                 "tokenSha256": hashlib.sha256(TOKEN.encode()).hexdigest()},
                  "security": {"users": ["root"]}},
}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    srv = start_redis(workdir("gb-trust-redis-"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def dm(redis: RedisServer) -> Iterator[Daemon]:
    d = start_daemon(workdir("gb-trust-decide-"), CONFIG, GLASSBREAK_STORE=redis.url)
    try:
        yield d
    finally:
        d.stop()


def client(dm: Daemon) -> dict[str, str]:
    # the attacker's environment names the shared store, as in the issue
    return dm.client_env(GLASSBREAK_STORE=dm.env["GLASSBREAK_STORE"])


def root_env(dm: Daemon) -> dict[str, str]:
    return dict(dm.env, GLASSBREAK_NO_DAEMON="1")


def raise_escalation(dm: Daemon, pod: str) -> str:
    r = gb("run", "-o", "json", "--", "kubectl", "-n", "prod", "delete", "pod", pod,
           env=dm.client_env(), prefix=NOBODY)
    assert r.returncode == 126, r.stderr
    esc = last_json(r.stderr)["escalation_id"]
    assert esc
    return str(esc)


def show(dm: Daemon, esc: str) -> dict[str, Any]:
    r = gb("escalations", "show", esc, "-o", "json", env=root_env(dm))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def delete(dm: Daemon, pod: str) -> int:
    r = gb("run", "--", "kubectl", "-n", "prod", "delete", "pod", pod, env=dm.client_env(),
           prefix=NOBODY)
    return r.returncode


def revoke(dm: Daemon, grant_id: str) -> None:
    """End a profile grant so that the next test starts strict."""
    r = gb("grants", "revoke", grant_id, "--as", "sre-oncall", env=root_env(dm))
    assert r.returncode == 0, r.stderr


def test_non_root_cannot_approve_as_someone_else(dm: Daemon, stub_kubectl: Path) -> None:
    esc = raise_escalation(dm, "as-someone")
    for who in (NOBODY, as_uid(APPROVER_UID)):
        target = "security" if who != NOBODY else "sre-oncall"
        r = gb("escalations", "approve", esc, "--as", target, env=client(dm), prefix=who)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert f"--as {target} refused" in r.stderr and "only root may decide as" in r.stderr
    assert show(dm, esc)["state"] == "pending"
    assert delete(dm, "as-someone") == 126  # still strict
    refused = of(dm.audit(), "decision_refused", escalation_id=esc, by="sre-oncall")
    assert refused and "uid 65534 (nobody)" in refused[-1]["caller"]
    assert "--as sre-oncall refused" in refused[-1]["why"]
    hist = [t for t in show(dm, esc)["history"] if t["kind"] == "refused"]
    assert len(hist) == 2


def test_token_proves_the_approver(dm: Daemon, stub_kubectl: Path) -> None:
    esc = raise_escalation(dm, "by-token")
    tok = workdir("gb-trust-token-") / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o644)
    bad = tok.with_name("bad")
    bad.write_text("not-the-token")
    bad.chmod(0o644)
    r = gb("escalations", "approve", esc, "--token-file", str(bad), env=client(dm),
           prefix=NOBODY)
    assert r.returncode != 0 and "token is not known" in r.stderr
    r = gb("escalations", "approve", esc, "--token-file", str(tok), "--as", "security",
           env=client(dm), prefix=NOBODY)
    assert r.returncode != 0 and "cannot decide as security" in r.stderr
    r = gb("escalations", "approve", esc, "--token-file", str(tok), env=client(dm),
           prefix=NOBODY)
    assert r.returncode == 0 and "approved by sre-oncall" in r.stdout, r.stderr
    decided = of(dm.audit(), "escalation_decided", escalation_id=esc)[-1]
    assert decided["by"] == "sre-oncall" and "approver token of sre-oncall" in decided["authn"]
    assert "uid 65534 (nobody)" in decided["authn"] and decided["grant_id"]
    assert delete(dm, "by-token") == 0
    revoke(dm, decided["grant_id"])
    # the environment variable works the same
    esc2 = raise_escalation(dm, "by-token-env")
    r = gb("escalations", "deny", esc2, "--reason", "not now", env=dict(
        client(dm), GLASSBREAK_APPROVER_TOKEN=TOKEN), prefix=NOBODY)
    assert r.returncode == 0 and "denied by sre-oncall" in r.stdout, r.stderr


def test_bound_unix_user_approves_and_revokes(dm: Daemon, stub_kubectl: Path) -> None:
    esc = raise_escalation(dm, "by-binding")
    r = gb("escalations", "approve", esc, "-o", "json", env=client(dm),
           prefix=as_uid(APPROVER_UID))
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["state"] == "approved" and rec["decided_by"] == "sre-oncall"
    decided = of(dm.audit(), "escalation_decided", escalation_id=esc)[-1]
    assert f"approvers.sre-oncall lists uid {APPROVER_UID}" in decided["authn"]
    assert delete(dm, "by-binding") == 0
    # nobody may not revoke it (not an approver), the approver may
    r = gb("grants", "revoke", rec["grant_id"], env=client(dm), prefix=NOBODY)
    assert r.returncode != 0 and "no approver" in r.stderr
    r = gb("grants", "revoke", rec["grant_id"], "--reason", "done", env=client(dm),
           prefix=as_uid(APPROVER_UID))
    assert r.returncode == 0 and "revoked by sre-oncall" in r.stdout, r.stderr
    ended = of(dm.audit(), "grant_ended", grant_id=rec["grant_id"])[-1]
    assert ended["by"] == "sre-oncall" and f"uid {APPROVER_UID}" in ended["authn"]
    assert delete(dm, "by-binding") == 126


def test_root_may_decide_as_anyone(dm: Daemon, stub_kubectl: Path) -> None:
    esc = raise_escalation(dm, "by-root")
    r = gb("escalations", "approve", esc, "--as", "sre-oncall", env=root_env(dm))
    assert r.returncode == 0 and "approved by sre-oncall" in r.stdout, r.stderr
    decided = of(dm.audit(), "escalation_decided", escalation_id=esc)[-1]
    assert decided["authn"].startswith("root (operator) --as")
    assert delete(dm, "by-root") == 0
    revoke(dm, decided["grant_id"])
    # without --as, root is the approver its binding names (security, an owner via base)
    esc2 = raise_escalation(dm, "by-root-2")
    r = gb("escalations", "approve", esc2, "-o", "json", env=root_env(dm))
    assert r.returncode == 0 and json.loads(r.stdout)["decided_by"] == "security", r.stderr
    revoke(dm, json.loads(r.stdout)["grant_id"])


def test_no_daemon_no_non_root_decision(dm: Daemon, stub_kubectl: Path) -> None:
    esc = raise_escalation(dm, "no-daemon")
    env = dict(client(dm), GLASSBREAK_SOCKET="/nonexistent/gb.sock")
    r = gb("escalations", "approve", esc, env=env, prefix=as_uid(APPROVER_UID))
    assert r.returncode != 0 and "go through the glassbreak daemon" in r.stderr
    assert "Traceback" not in r.stderr and show(dm, esc)["state"] == "pending"


# -- audit first, fail closed ------------------------------------------------------------------

@pytest.fixture
def pending(tmp_path: Path) -> tuple[dict[str, str], str, Path]:
    from escalation.backends import open_store
    from escalation.service import EscalationService
    from tests.escalation.helpers import block_ctx

    state = tmp_path / "state"
    state.mkdir()
    svc = EscalationService(open_store(f"sqlite:///{state / 'state.db'}"), emit=lambda e: None)
    rec = svc.raise_block(block_ctx(), inline_budget_s=0)
    env = {"GLASSBREAK_STATE_DIR": str(state), "GLASSBREAK_NO_DAEMON": "1"}
    return env, rec.id, state


@pytest.mark.parametrize("how", ["full-disk", "not-a-file"])
def test_decision_fails_closed_when_the_audit_log_cannot_be_written(
        pending: tuple[dict[str, str], str, Path], how: str) -> None:
    env, esc, state = pending
    audit = state / "audit.jsonl"
    audit.unlink(missing_ok=True)
    if how == "full-disk":
        audit.symlink_to("/dev/full")  # opens, every write fails with ENOSPC
    else:
        audit.mkdir()  # cannot be opened for writing, even by root
    r = run_cli("escalations", "approve", esc, "--as", "alice", env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "cannot be written" in r.stderr and "nothing was decided" in r.stderr
    from escalation.backends import open_store

    store = open_store(f"sqlite:///{state / 'state.db'}")
    assert store.get_escalation(esc).state == "pending"  # type: ignore[union-attr]
    assert store.list_grants(include_ended=True) == []
    # the log works again: the same decision goes through, and is recorded
    audit.unlink() if how == "full-disk" else audit.rmdir()
    r = run_cli("escalations", "approve", esc, "--as", "alice", env=env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [e["type"] for e in lines][0] == "escalation_decided"
    assert lines[0]["by"] == "alice" and lines[0]["grant_id"]


def test_store_failure_after_the_audit_record_is_followed_up(tmp_path: Path) -> None:
    from escalation.backends import open_store
    from escalation.service import EscalationService
    from sandbox.errors import StoreError
    from tests.escalation.helpers import Recorder, block_ctx, make_config

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    events = Recorder()
    svc = EscalationService(store, emit=events.append, config=make_config())
    rec = svc.raise_block(block_ctx(), inline_budget_s=0)

    def broken(*a: object, **k: object) -> None:
        raise StoreError("the store went away")

    store.put_grant = broken  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        svc.decide(rec.id, approve=True, by="alice")
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["escalation_decided", "decision_refused"]
    assert "did NOT take effect" in events[-1].why
    assert store.get_escalation(rec.id).state == "pending"  # type: ignore[union-attr]
