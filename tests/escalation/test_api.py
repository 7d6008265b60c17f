"""The approval API as a real `glassbreak serve` process, spoken to over real HTTP."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from escalation.backends import open_store
from escalation.service import EscalationService
from escalation.signing import signature, slack_signature
from sandbox.audit import read_events
from tests.conftest import GLASSBREAK, free_port
from tests.escalation.helpers import SECRET, Receiver, block_ctx, hook, make_config

DECISION_SECRET = "decide-secret-42"
SLACK_SECRET = "slack-secret-42"


class Server:
    def __init__(self, base: str, state: Path, store_url: str) -> None:
        self.base, self.state, self.store_url = base, state, store_url
        self.svc = EscalationService(open_store(store_url), emit=lambda e: None,
                                     config=make_config())

    def raise_one(self, **kw: Any) -> str:
        kw.setdefault("cwd", f"/srv/{uuid.uuid4().hex[:8]}")  # a fresh request every time
        return self.svc.raise_block(block_ctx(**kw)).id

    def refusals(self) -> list[dict[str, Any]]:
        return [e for e in read_events(self.state / "audit.jsonl")
                if e["type"] == "decision_refused"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the module; every test works on its own escalations."""
    tmp_path = tmp_path_factory.mktemp("serve")
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({
        "approverTokens": {"alice": {"tokenSha256": hashlib.sha256(b"alice-token").hexdigest()},
                           "bob": {"tokenEnv": "BOB_TOKEN"}},
        "slackUsers": {"U0ALICE": "alice"}}))
    store_url = f"sqlite:///{state / 'state.db'}"
    port = free_port()
    env = {"GLASSBREAK_STATE_DIR": str(state), "GLASSBREAK_STORE": store_url,
           "GLASSBREAK_CONFIG": str(cfg), "GLASSBREAK_DECISION_SECRET": DECISION_SECRET,
           "GLASSBREAK_SLACK_SIGNING_SECRET": SLACK_SECRET, "BOB_TOKEN": "bob-token",
           "GB_TEST_WEBHOOK_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([GLASSBREAK, "serve", "--no-socket", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "glassbreak serve did not come up"
            time.sleep(0.1)
        yield Server(base, state, store_url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def signed(server: Server, esc_id: str, payload: dict[str, Any], *, secret: str = DECISION_SECRET,
           ts: int | None = None, nonce: str | None = None, tamper: bool = False
           ) -> httpx.Response:
    body = json.dumps({"escalation_id": esc_id, **payload}).encode()
    ts = ts if ts is not None else int(time.time())
    headers = {"X-Glassbreak-Timestamp": str(ts),
               "X-Glassbreak-Delivery": nonce or uuid.uuid4().hex,
               "X-Glassbreak-Signature": signature(secret, ts, body),
               "Content-Type": "application/json"}
    if tamper:
        body = body.replace(b'"ttl": "1m"', b'"ttl": "9m"')
    return httpx.post(f"{server.base}/api/escalations/{esc_id}/decision", content=body,
                      headers=headers, timeout=10)


READER = {"Authorization": "Bearer alice-token"}  # reads need an approver token or a session


def test_openapi_and_listing(server: Server) -> None:
    spec = httpx.get(server.base + "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/api/escalations/{esc_id}/decision" in \
        spec["paths"]
    esc = server.raise_one()
    assert esc in [e["id"] for e in httpx.get(server.base + "/api/escalations",
                                              headers=READER).json()]
    assert httpx.get(f"{server.base}/api/escalations/{esc}",
                     headers=READER).json()["state"] == "pending"
    assert httpx.get(f"{server.base}/api/escalations/nope", headers=READER).status_code == 404
    assert httpx.get(f"{server.base}/api/escalations/{esc}").status_code == 401


def test_signed_approval_by_owner(server: Server) -> None:
    esc = server.raise_one()
    r = signed(server, esc, {"decision": "approve", "approver": "alice", "ttl": "1m",
                             "reason": "stuck pod"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "approved" and r.json()["decided_by"] == "alice"
    g = server.svc.get_grant(r.json()["grant_id"])
    assert g is not None and g.approver == "alice" and g.escalation_id == esc
    assert g.expires_at - g.created_at == pytest.approx(60, abs=1)


@pytest.mark.parametrize("case,status,why", [
    ("non-owner", 403, "not an owner"),
    ("agent", 403, "requesting agent"),
    ("forged", 401, "signature does not match"),
    ("stale", 401, "stale decision"),
    ("tampered", 401, "signature does not match"),
    ("other-escalation", 401, "different escalations"),
    ("unsigned", 401, "unsigned decision"),
    ("ttl-over-max", 403, "maxTtl"),
])
def test_bad_decisions_refused_and_recorded(server: Server, case: str, status: int,
                                            why: str) -> None:
    esc = server.raise_one(owners=["alice", "agent-7"] if case == "agent" else ["alice"])
    other = server.raise_one(cwd="/other")
    p = {"decision": "approve", "approver": "alice", "ttl": "1m"}
    if case == "non-owner":
        r = signed(server, esc, {**p, "approver": "mallory"})
    elif case == "agent":
        r = signed(server, esc, {**p, "approver": "agent-7"})
    elif case == "forged":
        r = signed(server, esc, p, secret="guessed")
    elif case == "stale":
        r = signed(server, esc, p, ts=int(time.time()) - 400)
    elif case == "tampered":
        r = signed(server, esc, p, tamper=True)
    elif case == "other-escalation":
        body = json.dumps({"escalation_id": other, **p}).encode()
        ts = int(time.time())
        r = httpx.post(f"{server.base}/api/escalations/{esc}/decision", content=body, headers={
            "X-Glassbreak-Timestamp": str(ts), "X-Glassbreak-Delivery": uuid.uuid4().hex,
            "X-Glassbreak-Signature": signature(DECISION_SECRET, ts, body)})
    elif case == "unsigned":
        r = httpx.post(f"{server.base}/api/escalations/{esc}/decision",
                       json={"escalation_id": esc, **p})
    else:
        r = signed(server, esc, {**p, "ttl": "2h"})
    assert r.status_code == status, r.text
    assert why in r.json()["error"]
    assert server.svc.get(esc).state == "pending"  # type: ignore[union-attr]
    assert server.svc.get(other).state == "pending"  # type: ignore[union-attr]
    refused = server.refusals()
    assert refused and why in refused[-1]["why"] and refused[-1]["escalation_id"] == esc
    hist = server.svc.get(esc).history  # type: ignore[union-attr]
    if case in ("forged", "stale", "tampered", "unsigned"):
        # nobody was authenticated: the audit log only, never the request's record (anyone
        # could otherwise grow it, issue 12)
        assert [t.kind for t in hist] == ["raised"]
        assert refused[-1]["caller"] == "client 127.0.0.1"
    else:
        assert hist[-1].kind == "refused" and why in (hist[-1].why or "")


def test_replay_refused(server: Server) -> None:
    esc = server.raise_one()
    nonce = uuid.uuid4().hex
    ts = int(time.time())
    first = signed(server, esc, {"decision": "deny", "approver": "alice", "reason": "no"},
                   ts=ts, nonce=nonce)
    assert first.status_code == 200
    again = signed(server, esc, {"decision": "deny", "approver": "alice", "reason": "no"},
                   ts=ts, nonce=nonce)
    assert again.status_code == 409 and "replayed" in again.json()["error"]
    assert "replayed" in server.refusals()[-1]["why"]


def test_bearer_tokens(server: Server) -> None:
    esc = server.raise_one()
    bad = httpx.post(f"{server.base}/api/escalations/{esc}/decision",
                     json={"escalation_id": esc, "decision": "approve"},
                     headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and "unknown approver token" in bad.json()["error"]
    spoof = httpx.post(f"{server.base}/api/escalations/{esc}/decision",
                       json={"escalation_id": esc, "decision": "approve", "approver": "alice"},
                       headers={"Authorization": "Bearer bob-token"})
    assert spoof.status_code == 403
    ok = httpx.post(f"{server.base}/api/escalations/{esc}/decision",
                    json={"escalation_id": esc, "decision": "approve"},
                    headers={"Authorization": "Bearer alice-token"})
    assert ok.status_code == 200 and ok.json()["decided_by"] == "alice"


def test_get_never_decides_and_the_old_token_form_is_gone(server: Server) -> None:
    """GET /escalations/ID is the console's request page (sign-in first); the old confirmation
    form that took an approver name and token in its fields answers 410 and records nothing
    (its `approver` field forged history, issue 12; the console replaced it)."""
    esc = server.raise_one()
    page = httpx.get(f"{server.base}/escalations/{esc}?action=approve&approver=alice")
    assert page.status_code == 401 and 'action="/signin"' in page.text
    assert server.svc.get(esc).state == "pending"  # type: ignore[union-attr]
    r = httpx.post(f"{server.base}/escalations/{esc}/confirm", content=urlencode(
        {"action": "approve", "approver": "alice", "token": "alice-token"}),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 410
    assert server.svc.get(esc).state == "pending"  # type: ignore[union-attr]


def test_slack_callback(server: Server) -> None:
    esc = server.raise_one()
    payload = {"type": "block_actions", "user": {"id": "U0ALICE", "username": "al"},
               "actions": [{"action_id": "glassbreak_approve", "value": esc}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))

    def post(sig: str, b: bytes = body) -> httpx.Response:
        return httpx.post(server.base + "/slack/actions", content=b, headers={
            "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig,
            "Content-Type": "application/x-www-form-urlencoded"})

    assert post(slack_signature("nope", ts, body)).status_code == 401
    assert server.svc.get(esc).state == "pending"  # type: ignore[union-attr]
    r = post(slack_signature(SLACK_SECRET, ts, body))
    assert r.status_code == 200 and "approved by alice" in r.json()["text"]
    assert server.svc.get(esc).decided_by == "alice"  # type: ignore[union-attr]
    assert post(slack_signature(SLACK_SECRET, ts, body)).status_code == 401  # replay


def test_revoke_over_api(server: Server) -> None:
    esc = server.raise_one()
    gid = server.svc.decide(esc, approve=True, by="alice").grant_id
    assert gid in [g["id"] for g in httpx.get(server.base + "/api/grants",
                                              headers=READER).json()]
    r = httpx.post(f"{server.base}/api/grants/{gid}/revoke", json={"grant_id": gid},
                   headers={"Authorization": "Bearer bob-token"})
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert server.svc.grant_status(gid or "") == "revoked"


def test_serve_flushes_the_outbox(server: Server) -> None:
    rcv = Receiver().start()
    try:
        rec = server.svc.raise_block(block_ctx(cwd="/outbox", webhooks=[hook(rcv.url)]),
                                     inline_budget_s=0)  # as if the runner died at once
        assert rcv.arrived.wait(5), "serve did not flush the outbox"
        assert rcv.got[0]["valid"] and rcv.got[0]["json"]["escalation"]["id"] == rec.id
        deadline = time.monotonic() + 5
        while server.svc.get(rec.id).delivery_status != "delivered":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        rcv.stop()


def test_broken_config_fails_at_startup_not_with_a_500(tmp_path: Path) -> None:
    """A GLASSBREAK_CONFIG naming a missing file is reported when `serve` starts, with a clear
    message and no traceback (it used to surface as a bare HTTP 500 at the first decision)."""
    from tests.conftest import free_port, run_cli

    env = {"GLASSBREAK_STATE_DIR": str(tmp_path / "st"),
           "GLASSBREAK_CONFIG": str(tmp_path / "missing.yaml")}
    r = run_cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), env=env, timeout=30)
    assert r.returncode != 0
    assert "missing.yaml" in r.stderr and "Traceback" not in r.stderr
