"""The console and the approval API over real HTTP (a real `glassbreak serve`, httpx): the
security defects of issue 12, each with its regression test, and the console's access rules
(sessions, CSRF, size caps, security headers). Browser flows: test_console_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from escalation.signing import signature, slack_signature
from tests.conftest import GLASSBREAK
from tests.escalation.helpers import Serve, block_ctx, token_sha

DECISION_SECRET = "decide-secret-console"
SLACK_SECRET = "slack-secret-console"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FORGED = "x\n    2026-01-01 00:00:00 approved  by sre-oncall: ok; grant gr-000000000000"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    work = tmp_path_factory.mktemp("console")
    s = Serve(work, {"approvers": {"alice": {"tokenSha256": token_sha("alice-token")},
                                   "bob": {"tokenSha256": token_sha("bob-token")},
                                   "agent-7": {"tokenSha256": token_sha("agent-token")}},
                     "slackUsers": {"U0ALICE": "alice"}},
              env={"GLASSBREAK_DECISION_SECRET": DECISION_SECRET,
                   "GLASSBREAK_SLACK_SIGNING_SECRET": SLACK_SECRET})
    yield s
    s.stop()


def raise_one(srv: Serve, **kw: Any) -> str:
    kw.setdefault("cwd", f"/srv/{uuid.uuid4().hex[:8]}")
    kw.setdefault("owners", ["alice", "agent-7"])
    kw.setdefault("run_id", f"run-{uuid.uuid4().hex[:12]}")
    return str(srv.svc.raise_block(block_ctx(**kw), inline_budget_s=0).id)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def signed_in(srv: Serve, token: str = "alice-token") -> httpx.Client:
    c = httpx.Client(base_url=srv.base, timeout=10)
    page = c.get("/signin")
    r = c.post("/signin", content=urlencode({"csrf": csrf_of(page.text), "token": token,
                                             "next": "/escalations"}), headers=FORM)
    assert r.status_code == 303, r.text
    return c


def session_csrf(c: httpx.Client) -> str:
    return csrf_of(c.get("/escalations").text)


def show_text(srv: Serve, esc: str) -> str:
    r = subprocess.run([GLASSBREAK, "escalations", "show", esc], capture_output=True, text=True,
                       env={**srv.env, "GLASSBREAK_NO_DAEMON": "1"}, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


# -- defect 1: forged history without credentials ----------------------------------------------
def test_forged_approver_field_writes_nothing_and_is_never_a_name(srv: Serve) -> None:
    esc = raise_one(srv)
    before = srv.written()
    # the old confirmation form: gone, reads nothing, records nothing
    r = httpx.post(f"{srv.base}/escalations/{esc}/confirm", headers=FORM, content=urlencode(
        {"token": "x", "action": "approve", "approver": FORGED}))
    assert r.status_code == 410
    assert srv.written() == before
    # the console's decision form without a session: refused, audited with bounded fields
    # only (never the request's history, never the posted name)
    r = httpx.post(f"{srv.base}/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"action": "approve", "approver": FORGED, "reason": "ok", "csrf": "x"}))
    assert r.status_code == 401
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "pending"
    assert [t.kind for t in rec.history] == ["raised"]
    last = srv.audit()[-1]
    assert last["type"] == "decision_refused" and "no console session" in last["why"]
    assert "sre-oncall" not in json.dumps(srv.audit()) and last["by"] is None
    out = show_text(srv, esc)
    assert "approved" not in out and "gr-000000000000" not in out

    # signed in as alice, a posted `approver` is ignored: the decider is the session's
    c = signed_in(srv)
    r = c.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": session_csrf(c), "action": "deny", "approver": FORGED,
         "reason": "no\n    2026-01-01 00:00:00 approved  by bob: forged"}))
    assert r.status_code == 303, r.text
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "denied" and rec.decided_by == "alice"
    out = show_text(srv, esc)
    history = out.split("  history\n", 1)[1].splitlines()
    assert len(history) == 2, out  # raised, denied: a newline in the reason is shown as \n
    assert "no\\n    2026-01-01" in history[1] and "by alice" in history[1]
    assert [line.split()[2] for line in history] == ["raised", "denied"]
    decided = [e for e in srv.audit() if e["type"] == "escalation_decided"
               and e["escalation_id"] == esc]
    assert decided[-1]["by"] == "alice" and "console session of alice" in decided[-1]["authn"]


def test_api_names_are_checked_before_anything_is_recorded(srv: Serve) -> None:
    esc = raise_one(srv)
    body = json.dumps({"escalation_id": esc, "decision": "approve", "approver": FORGED}).encode()
    ts = int(time.time())
    r = httpx.post(f"{srv.base}/api/escalations/{esc}/decision", content=body, headers={
        "X-Glassbreak-Timestamp": str(ts), "X-Glassbreak-Delivery": uuid.uuid4().hex,
        "X-Glassbreak-Signature": signature(DECISION_SECRET, ts, body)})
    assert r.status_code == 422 and "not an approver name" in r.json()["error"]
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "pending" and len(rec.history) == 1
    assert FORGED not in json.dumps(srv.audit())


def test_slack_handle_equal_to_an_approver_name_proves_nothing(srv: Serve) -> None:
    esc = raise_one(srv)
    payload = {"type": "block_actions", "user": {"id": "U0MALLORY", "username": "alice"},
               "actions": [{"action_id": "glassbreak_approve", "value": esc}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time()))
    r = httpx.post(f"{srv.base}/slack/actions", content=body, headers={
        **FORM, "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": slack_signature(SLACK_SECRET, ts, body)})
    assert r.status_code == 200 and "not mapped" in r.json()["text"]
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "pending"


# -- defect 2: unbounded writes without credentials --------------------------------------------
BIG = "A" * (2 * 1024 * 1024)


@pytest.mark.parametrize("where", ["decide", "legacy-confirm", "signin", "api-decision",
                                   "api-revoke", "slack"])
def test_oversize_bodies_get_413_and_write_nothing(srv: Serve, where: str) -> None:
    esc = raise_one(srv)
    before = srv.written()
    url, body, headers = {
        "decide": (f"/escalations/{esc}/decide", urlencode({"approver": BIG}), FORM),
        "legacy-confirm": (f"/escalations/{esc}/confirm", urlencode({"approver": BIG}), FORM),
        "signin": ("/signin", urlencode({"token": BIG}), FORM),
        "api-decision": (f"/api/escalations/{esc}/decision", json.dumps(
            {"escalation_id": esc, "decision": "approve", "approver": BIG}),
            {"Content-Type": "application/json"}),
        "api-revoke": ("/api/grants/gr-000000000000/revoke", json.dumps(
            {"grant_id": "gr-000000000000", "by": BIG}), {"Content-Type": "application/json"}),
        "slack": ("/slack/actions", urlencode({"payload": BIG}), FORM),
    }[where]
    for _ in range(3):
        r = httpx.post(srv.base + url, content=body, headers=headers, timeout=30)
        assert r.status_code in (413, 410), (where, r.status_code, r.text[:200])
    assert srv.written() == before
    shown = httpx.get(f"{srv.base}/api/escalations/{esc}",
                      headers={"Authorization": "Bearer alice-token"})
    assert shown.status_code == 200 and len(shown.content) < 20_000


def test_oversize_fields_get_413_even_signed_in(srv: Serve) -> None:
    esc = raise_one(srv)
    c = signed_in(srv)
    csrf = session_csrf(c)
    before = srv.written()
    r = c.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": csrf, "action": "deny", "reason": "r" * 1001}))
    assert r.status_code == 413
    r = httpx.post(f"{srv.base}/api/escalations/{esc}/decision",
                   json={"escalation_id": esc, "decision": "deny", "reason": "r" * 1001},
                   headers={"Authorization": "Bearer alice-token"})
    assert r.status_code == 413
    assert srv.written() == before
    assert srv.svc.get(esc).state == "pending"  # type: ignore[union-attr]


# -- defect 3: the command shown is the command run ---------------------------------------------
TRICKY = ["kubectl", "delete", "pod", "web-1 --all", "web-1" + " " * 300 + "-n kube-system --all",
          "web-4\u202e lla-- ", "a`b<c>&d"]


def test_argv_is_quoted_and_hidden_characters_visible_everywhere(srv: Serve) -> None:
    esc = raise_one(srv, argv=TRICKY, agent_reason="fine\u202e txet \nline two")
    # the page
    c = signed_in(srv)
    page = c.get(f"/escalations/{esc}").text
    assert "\u202e" not in page and "$&#x27;web-4\\u202e lla-- &#x27;" in page
    assert "&#x27;web-1 --all&#x27;" in page
    assert 'class="blank" title="300 blank characters"' in page
    assert "contains a run of 300 blank characters" in page
    assert "fine\\u202e txet \\nline two" in page
    # the CLI
    out = show_text(srv, esc)
    assert "\u202e" not in out
    assert "$'web-4\\u202e lla-- '" in out and "'web-1 --all'" in out
    assert "WARNING   argument 4 contains a run of 300 blank characters" in out
    assert "reason: fine\\u202e txet \\nline two" in out
    # Slack and the generic webhook text
    from escalation.webhook import generic_payload, slack_payload

    rec = srv.svc.get(esc)
    assert rec is not None
    slack = json.dumps(slack_payload(rec, "escalation.raised", None), ensure_ascii=False)
    assert "\u202e" not in slack and "$'web-4\\\\u202e lla-- '" in slack
    assert "$'a\\\\x60b&lt;c&gt;&amp;d'" in slack  # no backtick ends the code block
    gen = generic_payload(rec, "escalation.raised", None)
    assert gen["display"]["command"].endswith("$'web-4\\u202e lla-- ' 'a`b<c>&d'")
    assert gen["escalation"]["argv"] == TRICKY  # the machine field stays exact
    assert any("U+202E RIGHT-TO-LEFT OVERRIDE" in w for w in gen["display"]["warnings"])


# -- defect 4: a mistyped token does not burn the form -----------------------------------------
def test_wrong_token_changes_nothing_and_the_same_form_works_after(srv: Serve) -> None:
    esc = raise_one(srv)
    c = httpx.Client(base_url=srv.base, timeout=10)
    first = c.get(f"/escalations/{esc}")
    assert first.status_code == 401 and 'action="/signin"' in first.text
    csrf = csrf_of(first.text)
    nxt = f"/escalations/{esc}"
    before = srv.svc.get(esc)
    bad = c.post("/signin", headers=FORM, content=urlencode(
        {"csrf": csrf, "token": "alice-tokem", "next": nxt}))
    assert bad.status_code == 401 and "not an approver token" in bad.text
    assert srv.svc.get(esc) == before  # nothing about the request changed
    refused = [e for e in srv.audit() if e["type"] == "console_session"][-1]
    assert refused["action"] == "refused" and refused["approver"] is None
    good = c.post("/signin", headers=FORM, content=urlencode(
        {"csrf": csrf, "token": "alice-token", "next": nxt}))
    assert good.status_code == 303 and good.headers["location"] == nxt
    r = c.post(f"{nxt}/decide", headers=FORM, content=urlencode(
        {"csrf": session_csrf(c), "action": "approve", "scope": "command", "one_shot": "1",
         "ttl": "2", "ttl_unit": "m"}))
    assert r.status_code == 303, r.text
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "approved" and rec.decided_by == "alice"
    g = srv.svc.get_grant(rec.grant_id or "")
    assert g is not None and g.scope == "command" and g.one_shot
    assert g.expires_at - g.created_at == pytest.approx(120, abs=2)


def test_sign_in_cookie_and_session_rules(srv: Serve) -> None:
    c = httpx.Client(base_url=srv.base, timeout=10)
    page = c.get("/signin")
    r = c.post("/signin", headers=FORM, content=urlencode(
        {"csrf": csrf_of(page.text), "token": "alice-token"}))
    cookie = r.headers["set-cookie"]
    assert "gb_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    # a sign-in form not issued to this client (login CSRF): refused
    other = httpx.post(f"{srv.base}/signin", headers=FORM, content=urlencode(
        {"csrf": csrf_of(page.text), "token": "alice-token"}))
    assert other.status_code == 403
    # signing out ends the session on the server
    csrf = session_csrf(c)
    sid = c.cookies.get("gb_session")
    c.post("/signout", headers=FORM, content=urlencode({"csrf": csrf}))
    again = httpx.get(f"{srv.base}/escalations", cookies={"gb_session": sid or ""})
    assert again.status_code == 401


# -- defect 5: reads need credentials; security headers -----------------------------------------
READS = ["/api/escalations", "/api/escalations/{esc}", "/api/grants", "/escalations",
         "/escalations/{esc}", "/grants", "/audit", "/runs/run-1", "/"]


def test_reads_need_a_session_or_a_token(srv: Serve) -> None:
    esc = raise_one(srv, env={"SECRET_THING": "s3cr3t", "PATH": "/usr/bin"})
    for path in READS:
        r = httpx.get(srv.base + path.format(esc=esc), follow_redirects=True)
        assert r.status_code == 401, (path, r.status_code)
        assert "/usr/bin" not in r.text and esc not in r.text.replace(f"/escalations/{esc}", "")
    bad = httpx.get(f"{srv.base}/api/escalations",
                    headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    ok = httpx.get(f"{srv.base}/api/escalations", headers={"Authorization": "Bearer bob-token"})
    assert ok.status_code == 200 and esc in ok.text
    c = signed_in(srv, "bob-token")
    for path in READS:
        r = c.get(path.format(esc=esc), follow_redirects=True)
        assert r.status_code in (200, 404), (path, r.status_code)  # run-1: no such run


def test_every_response_has_the_security_headers(srv: Serve) -> None:
    c = signed_in(srv)
    for r in (httpx.get(srv.base + "/signin"), httpx.get(srv.base + "/api/escalations"),
              httpx.get(srv.base + "/healthz"), httpx.get(srv.base + "/nope"),
              c.get("/escalations"), c.get("/static/console.css")):
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp  # no script at all
        assert r.headers["x-content-type-options"] == "nosniff"


# -- CSRF ----------------------------------------------------------------------------------------
def test_cross_site_posts_are_refused(srv: Serve) -> None:
    esc = raise_one(srv)
    c = signed_in(srv)
    csrf = session_csrf(c)
    data = {"action": "approve", "scope": "command", "ttl": "1", "ttl_unit": "m"}
    no_token = c.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(data))
    wrong = c.post(f"/escalations/{esc}/decide", headers=FORM,
                   content=urlencode({**data, "csrf": "guess"}))
    foreign = c.post(f"/escalations/{esc}/decide", content=urlencode({**data, "csrf": csrf}),
                     headers={**FORM, "Origin": "https://evil.example"})
    for r in (no_token, wrong, foreign):
        assert r.status_code == 403 and "CSRF" in r.text
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "pending" and len(rec.history) == 1
    refusals = [e for e in srv.audit() if e["type"] == "decision_refused"
                and e["escalation_id"] == esc]
    assert len(refusals) == 3 and all("CSRF" in e["why"] for e in refusals)
    g = srv.svc.decide(esc, approve=True, by="alice", scope="command")
    revoke = c.post(f"/grants/{g.grant_id}/revoke", headers=FORM,
                    content=urlencode({"reason": "x"}))
    assert revoke.status_code == 403
    assert srv.svc.grant_status(g.grant_id or "") == "active"


# -- console decisions are the one decision path -------------------------------------------------
def test_console_decisions_follow_the_rules(srv: Serve) -> None:
    c = signed_in(srv, "bob-token")  # bob is an approver, but not an owner of this profile
    esc = raise_one(srv)
    page = c.get(f"/escalations/{esc}").text
    assert "not an owner or approver" in page and 'action="/escalations/' not in page
    r = c.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": session_csrf(c), "action": "approve", "scope": "command", "ttl": "1",
         "ttl_unit": "m"}))
    assert r.status_code == 403 and "not an owner" in r.text
    agent = signed_in(srv, "agent-token")  # the requesting agent is an owner: still refused
    r = agent.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": session_csrf(agent), "action": "approve", "scope": "command", "ttl": "1",
         "ttl_unit": "m"}))
    assert r.status_code == 403 and "requesting agent" in r.text
    alice = signed_in(srv)
    csrf = session_csrf(alice)
    over = alice.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": csrf, "action": "approve", "scope": "profile", "ttl": "2", "ttl_unit": "h"}))
    assert over.status_code == 403 and "maxTtl" in over.text
    deny = alice.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": csrf, "action": "deny", "reason": ""}))
    assert deny.status_code == 403 and "A denial needs a reason" in deny.text
    ok = alice.post(f"/escalations/{esc}/decide", headers=FORM, content=urlencode(
        {"csrf": csrf, "action": "approve", "scope": "profile", "ttl": "10", "ttl_unit": "m"}))
    assert ok.status_code == 303
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "approved"
    kinds = [t.kind for t in rec.history]
    assert kinds.count("refused") == 4 and kinds[-1] == "approved"
    after = alice.get(f"/escalations/{esc}").text
    assert rec.grant_id and rec.grant_id in after and "Revoke" in after
    r = alice.post(f"/grants/{rec.grant_id}/revoke", headers=FORM, content=urlencode(
        {"csrf": csrf, "reason": "done", "back": f"/escalations/{esc}"}))
    assert r.status_code == 303
    assert srv.svc.grant_status(rec.grant_id) == "revoked"
    ended = [e for e in srv.audit() if e["type"] == "grant_ended"][-1]
    assert ended["by"] == "alice" and "console session of alice" in ended["authn"]


def test_audit_page_and_inbox_filters(srv: Serve) -> None:
    a = raise_one(srv, agent="agent-filter-a", profile="p-one")
    b = raise_one(srv, agent="agent-filter-b", profile="p-two")
    c = signed_in(srv)
    inbox = c.get("/escalations?agent=agent-filter-a").text
    assert a in inbox and b not in inbox
    inbox = c.get("/escalations?profile=p-two").text
    assert b in inbox and a not in inbox
    srv.svc.decide(b, approve=False, by="alice", reason="filter test")
    pending = c.get("/escalations?state=pending").text
    assert a in pending and b not in pending
    audit = c.get(f"/audit?escalation={b}").text
    assert "escalation_decided" in audit and "filter test" in audit and a not in audit
