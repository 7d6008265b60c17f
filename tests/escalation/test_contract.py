"""One contract suite, run against both stores (SQLite file, real redis-server)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from escalation.models import Grant
from escalation.service import EscalationService
from escalation.store import command_key
from sandbox.errors import EscalationError
from sandbox.policy.profile import AutoApprove
from tests.escalation.helpers import Recorder, block_ctx

pytestmark = pytest.mark.redis


def test_raise_records_full_context_redacted(svc: EscalationService, events: Recorder) -> None:
    rec = svc.raise_block(block_ctx())
    assert rec.state == "pending" and rec.count == 1 and rec.id.startswith("esc-")
    got = svc.get(rec.id)
    assert got is not None
    assert got.argv == ["kubectl", "-n", "prod", "delete", "pod", "x"]
    assert got.env["GITHUB_TOKEN"] == "[redacted]" and got.env["PATH"] == "/usr/bin"
    assert got.owners == ["alice", "bob"] and got.agent_reason == "pod is stuck"
    assert got.layer == "pre-check" and got.rule_id == "safeBins.kubectl.restricted"
    assert got.binary_sha256 == "cd" * 32 and got.ancestry and got.recent_execs
    assert got.history[0].kind == "raised" and got.history[0].by == "agent-7"
    assert got.expires_at - got.created_at == pytest.approx(1800, abs=1)
    ev = events.of("escalation_raised")
    assert ev and ev[0].escalation_id == rec.id and ev[0].rule_id == rec.rule_id


def test_same_block_attaches_no_storm(svc: EscalationService, events: Recorder) -> None:
    a = svc.raise_block(block_ctx(run_id="r1"))
    b = svc.raise_block(block_ctx(run_id="r2"))
    c = svc.raise_block(block_ctx(cwd="/elsewhere"))
    assert b.id == a.id and b.count == 2 and b.run_ids == ["r1", "r2"]
    assert c.id != a.id
    assert [e.count for e in events.of("escalation_raised")] == [1, 2, 1]


def test_owner_approves_profile_grant(svc: EscalationService, events: Recorder) -> None:
    rec = svc.raise_block(block_ctx())
    done = svc.decide(rec.id, approve=True, by="alice", reason="ok", ttl_s=60)
    assert done.state == "approved" and done.decided_by == "alice" and done.grant_id
    assert [t.kind for t in done.history] == ["raised", "approved"]
    g = svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["anything"], cwd="/")
    assert g is not None and g.id == done.grant_id and g.scope == "profile"
    assert g.relaxed_profile == "k8s-ops" and g.approver == "alice"
    assert g.expires_at == pytest.approx(time.time() + 60, abs=2)
    assert svc.grant_status(g.id) == "active"
    assert svc.active_grant(agent="other", profile="k8s-readonly", argv=["x"], cwd="/") is None
    assert events.of("escalation_decided")[0].by == "alice"


@pytest.mark.parametrize("by,msg", [
    ("mallory", "not an owner"), ("agent-7", "requesting agent"), ("", "required")])
def test_refused_deciders_are_recorded(svc: EscalationService, events: Recorder, by: str,
                                       msg: str) -> None:
    ctx = block_ctx(owners=["alice", "agent-7"]) if by == "agent-7" else block_ctx()
    rec = svc.raise_block(ctx)
    with pytest.raises(EscalationError, match=msg):
        svc.decide(rec.id, approve=True, by=by)
    after = svc.get(rec.id)
    assert after is not None and after.state == "pending"
    assert after.history[-1].kind == "refused" and msg in (after.history[-1].why or "")
    refused = events.of("decision_refused")
    assert refused and refused[-1].escalation_id == rec.id and msg in refused[-1].why


def test_ttl_cap_deny_reason_and_no_double_decision(svc: EscalationService) -> None:
    rec = svc.raise_block(block_ctx(max_ttl=600))
    with pytest.raises(EscalationError, match="maxTtl"):
        svc.decide(rec.id, approve=True, by="alice", ttl_s=601)
    with pytest.raises(EscalationError, match="reason"):
        svc.decide(rec.id, approve=False, by="bob")
    d = svc.decide(rec.id, approve=False, by="bob", reason="not during the freeze")
    assert d.state == "denied" and d.grant_id is None
    with pytest.raises(EscalationError, match="already denied"):
        svc.decide(rec.id, approve=True, by="alice")
    assert svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["x"], cwd="/") is None


def test_pending_expires_into_denied(svc: EscalationService, events: Recorder) -> None:
    rec = svc.raise_block(block_ctx(pending_ttl=1))
    time.sleep(1.1)
    got = svc.get(rec.id)
    assert got is not None and got.state == "expired" and got.display_state == "denied (expired)"
    assert got.history[-1].by == "system:expiry"
    assert events.of("escalation_decided")[-1].state == "expired"
    with pytest.raises(EscalationError, match="already denied \\(expired\\)"):
        svc.decide(rec.id, approve=True, by="alice")
    # the same block again opens a fresh request
    assert svc.raise_block(block_ctx(pending_ttl=1)).id != rec.id


def test_grant_ttl_expiry(svc: EscalationService) -> None:
    rec = svc.raise_block(block_ctx())
    d = svc.decide(rec.id, approve=True, by="alice", ttl_s=1)
    assert svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["x"], cwd="/")
    time.sleep(1.2)
    assert svc.grant_status(d.grant_id or "") == "expired"
    assert svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["x"], cwd="/") is None


def test_one_shot_command_grant(svc: EscalationService) -> None:
    ctx = block_ctx(relaxed_profile=None)
    rec = svc.raise_block(ctx)
    d = svc.decide(rec.id, approve=True, by="alice", scope="command", one_shot=True)
    kw: dict[str, Any] = dict(agent="agent-7", profile="k8s-readonly", argv=ctx.argv,
                              cwd=ctx.cwd)
    assert svc.active_grant(**kw, binary_sha256="ee" * 32) is None  # other binary content
    assert svc.active_grant(**kw, binary_sha256="cd" * 32, ) is not None
    assert svc.active_grant(**kw, binary_sha256="cd" * 32) is None  # consumed
    g = svc.get_grant(d.grant_id or "")
    assert g is not None and g.consumed_at is not None
    assert g.cmd_key == command_key(ctx.argv, ctx.cwd, "cd" * 32)


def test_profile_scope_needs_relaxed_profile(svc: EscalationService) -> None:
    rec = svc.raise_block(block_ctx(relaxed_profile=None))
    with pytest.raises(EscalationError, match="relaxedProfile"):
        svc.decide(rec.id, approve=True, by="alice", scope="profile")
    assert svc.decide(rec.id, approve=True, by="alice").state == "approved"  # command scope


def test_revoke_and_broadcast(svc: EscalationService, events: Recorder) -> None:
    seen: list[tuple[str, float]] = []
    stop = svc.subscribe_revocations(lambda gid: seen.append((gid, time.monotonic())))
    try:
        rec = svc.raise_block(block_ctx())
        d = svc.decide(rec.id, approve=True, by="alice")
        gid = d.grant_id or ""
        with pytest.raises(EscalationError, match="may not revoke"):
            svc.revoke(gid, by="mallory")
        t0 = time.monotonic()
        g = svc.revoke(gid, by="bob", why="incident over")
        assert g.revoked_by == "bob" and svc.grant_status(gid) == "revoked"
        assert svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["x"],
                                cwd="/") is None
        deadline = time.monotonic() + 1.0
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen and seen[0][0] == gid and seen[0][1] - t0 < 1.0
        assert events.of("grant_ended")[-1].grant_id == gid
        assert svc.get(rec.id).history[-1].kind == "revoked"  # type: ignore[union-attr]
        assert gid in [x.id for x in svc.list_grants(include_ended=True)]
        assert gid not in [x.id for x in svc.list_grants()]
    finally:
        stop()


def test_auto_approve_with_rate_limit(svc: EscalationService, events: Recorder) -> None:
    rule = AutoApprove(commands=["kubectl -n * rollout restart *"], maxPerHour=2, ttl="2m")
    recs = [svc.raise_block(block_ctx(argv=["kubectl", "-n", "dev", "rollout", "restart",
                                            f"deploy/a{i}"], auto_approve=[rule]))
            for i in range(3)]
    assert [r.state for r in recs] == ["approved", "approved", "pending"]
    assert recs[0].decided_by == "auto:autoApprove[0]"
    g = svc.get_grant(recs[0].grant_id or "")
    assert isinstance(g, Grant) and g.scope == "command"
    assert g.expires_at - g.created_at == pytest.approx(120, abs=1)
    assert "rate limit" in (recs[2].history[-1].why or "")
    other = svc.raise_block(block_ctx(auto_approve=[rule]))  # not matching: stays pending
    assert other.state == "pending"


def test_nonces_and_counters(store) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    assert store.remember_nonce("n1", 60, now) and not store.remember_nonce("n1", 60, now)
    assert [store.bump_counter("k", 60, now) for _ in range(3)] == [1, 2, 3]


def test_unreachable_webhook_is_retried_and_visible(svc: EscalationService,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port
    from tests.escalation.helpers import hook

    monkeypatch.setenv("GB_TEST_WEBHOOK_SECRET", "s")
    rec = svc.raise_block(block_ctx(webhooks=[hook(f"http://127.0.0.1:{free_port()}/x")]))
    assert rec.delivery_status == "retrying"
    assert rec.deliveries[0].attempts == 1 and "Connect" in (rec.deliveries[0].last_error or "")
