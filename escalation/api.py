"""The approval HTTP API (starlette; served by uvicorn from `glassbreak serve`).

GET  /api/escalations[?state=]        list            GET /api/escalations/{id}   show
POST /api/escalations/{id}/decision   signed (X-Glassbreak-* HMAC, 300 s window, replay-
                                      protected) or `Authorization: Bearer <approver token>`
GET  /escalations/{id}[?action=]      confirmation page (never decides)
POST /escalations/{id}/confirm        the page's form: approver + token, server-signed form
POST /slack/actions                   Slack interactive callback (v0 signing secret)
GET  /api/grants                      POST /api/grants/{id}/revoke (authenticated as above)
GET  /openapi.json                    GET /healthz
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
import time
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError

from escalation.service import EscalationService
from escalation.signing import WINDOW_S, verify, verify_slack
from sandbox.errors import EscalationError, GlassbreakError, StoreError
from sandbox.policy.profile import parse_duration


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    escalation_id: str
    decision: Literal["approve", "deny"]
    approver: str | None = None
    ttl: str | int | None = None
    reason: str | None = None
    scope: Literal["command", "profile", "path"] | None = None
    one_shot: bool = False


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grant_id: str
    by: str | None = None
    reason: str | None = None


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def build_app(svc: EscalationService) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    form_key = secrets.token_bytes(32)

    def err(status: int, message: str, hint: str | None = None) -> Response:
        return JSONResponse({"error": message, "hint": hint}, status_code=status)

    async def call(fn: Any, *a: Any, **kw: Any) -> Any:
        return await run_in_threadpool(fn, *a, **kw)

    def authenticate(request: Request, body: bytes, esc_id: str | None, via: str) -> str | None:
        """-> the approver named by a bearer token, or None for an HMAC-signed request
        (the body names the approver). Raises Refused (recorded) on any failure."""
        cfg = svc.config
        auth = request.headers.get("authorization", "")
        try:
            if auth.lower().startswith("bearer "):
                name = cfg.approver_for_token(auth[7:].strip())
                if name is None:
                    raise EscalationError("unknown approver token")
                return str(name)
            secret = cfg.decision_secret()
            if not secret:
                raise EscalationError("decision signing is not configured on this server "
                                      "(GLASSBREAK_DECISION_SECRET) and no bearer token given")
            nonce = verify(secret, dict(request.headers), body)
            if not svc.store.remember_nonce(nonce, 2 * WINDOW_S, time.time()):
                raise Refused(409, f"replayed decision: delivery id {nonce} was already used")
            return None
        except EscalationError as e:
            svc.refuse(esc_id, None, e.message, via)
            raise Refused(401, e.message) from None
        except Refused as r:
            svc.refuse(esc_id, None, r.message, via)
            raise

    async def decision(request: Request) -> Response:
        esc_id = request.path_params["esc_id"]
        body = await request.body()
        try:
            who = await call(authenticate, request, body, esc_id, "api")
            try:
                d = DecisionIn.model_validate_json(body)
            except ValidationError as e:
                raise Refused(422, f"bad decision body: {e.errors()[0]['msg']}") from None
            if d.escalation_id != esc_id:
                msg = (f"body and URL name different escalations ({d.escalation_id} vs "
                       f"{esc_id}): tampered")
                await call(svc.refuse, esc_id, d.approver, msg, "api")
                raise Refused(401, msg)
            if who is not None and d.approver not in (None, who):
                await call(svc.refuse, esc_id, who, f"token of {who} used to decide as "
                           f"{d.approver}", "api")
                raise Refused(403, f"this token belongs to {who}, not {d.approver}")
            by = who or d.approver or ""
            authn = (f"bearer token of {who}" if who else
                     "HMAC-signed body (decision secret), approver as named")
            ttl = parse_duration(d.ttl) if d.ttl is not None else None
            rec = await call(svc.decide, esc_id, approve=d.decision == "approve", by=by,
                             reason=d.reason, ttl_s=ttl, scope=d.scope, one_shot=d.one_shot,
                             via="api", authn=authn)
        except Refused as r:
            return err(r.status, r.message)
        except ValueError as e:
            return err(422, str(e))
        except EscalationError as e:
            return err(403, e.message, e.hint)
        except StoreError as e:
            return err(503, e.message, e.hint)
        except GlassbreakError as e:  # e.g. the server's config file is broken
            return err(500, f"the approval server cannot decide: {e.message}", e.hint)
        return JSONResponse(json.loads(rec.model_dump_json()))

    async def list_escalations(request: Request) -> Response:
        recs = await call(svc.list, request.query_params.get("state"))
        return JSONResponse([json.loads(r.model_dump_json()) for r in recs])

    async def show(request: Request) -> Response:
        rec = await call(svc.get, request.path_params["esc_id"])
        if rec is None:
            return err(404, f"no escalation {request.path_params['esc_id']}")
        return JSONResponse(json.loads(rec.model_dump_json()))

    def form_sig(esc_id: str, ts: str, nonce: str) -> str:
        return hmac.new(form_key, f"{esc_id}.{ts}.{nonce}".encode(), hashlib.sha256).hexdigest()

    async def confirm_page(request: Request) -> Response:
        esc_id = request.path_params["esc_id"]
        rec = await call(svc.get, esc_id)
        if rec is None:
            return HTMLResponse(f"<h1>No escalation {html.escape(esc_id)}</h1>", 404)
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        action = request.query_params.get("action", "approve")
        return HTMLResponse(_page(rec, action, ts, nonce, form_sig(rec.id, ts, nonce)))

    async def confirm_post(request: Request) -> Response:
        esc_id = request.path_params["esc_id"]
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace"),
                                                  keep_blank_values=True).items()}
        ts, nonce = form.get("form_ts", ""), form.get("form_nonce", "")
        try:
            if not hmac.compare_digest(form_sig(esc_id, ts, nonce), form.get("form_sig", "")):
                raise Refused(401, "the form was not issued by this server (forged or stale)")
            if not ts.isdigit() or abs(time.time() - int(ts)) > WINDOW_S * 2:
                raise Refused(401, "the confirmation form is too old; reload the page")
            if not await call(svc.store.remember_nonce, "form:" + nonce, 4 * WINDOW_S,
                              time.time()):
                raise Refused(409, "this form was already submitted (replay)")
            name = form.get("approver", "")
            who = await call(svc.config.approver_for_token, form.get("token", ""))
            if not who or who != name:
                raise Refused(401, f"the token is not {name}'s approver token")
        except Refused as r:
            await call(svc.refuse, esc_id, form.get("approver"), r.message, "web")
            return HTMLResponse(f"<h1>Refused</h1><p>{html.escape(r.message)}</p>", r.status)
        try:
            ttl = parse_duration(form["ttl"]) if form.get("ttl") else None
            rec = await call(svc.decide, esc_id, approve=form.get("action") == "approve",
                             by=name, reason=form.get("reason") or None, ttl_s=ttl, via="web",
                             authn=f"confirmation form with the token of {name}")
        except (EscalationError, ValueError) as e:
            return HTMLResponse(f"<h1>Refused</h1><p>{html.escape(str(e))}</p>", 403)
        return HTMLResponse(f"<h1>{html.escape(rec.display_state)}</h1><p>escalation "
                            f"{html.escape(rec.id)} by {html.escape(name)}</p>")

    async def slack_actions(request: Request) -> Response:
        body = await request.body()
        secret = svc.config.slack_secret()
        try:
            if not secret:
                raise EscalationError("Slack signing secret not configured "
                                      "(GLASSBREAK_SLACK_SIGNING_SECRET)")
            nonce = verify_slack(secret, dict(request.headers), body)
            if not await call(svc.store.remember_nonce, nonce, 2 * WINDOW_S, time.time()):
                raise EscalationError("replayed Slack callback")
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            action = payload["actions"][0]
            user = payload.get("user", {})
        except (EscalationError, KeyError, IndexError, ValueError) as e:
            msg = e.message if isinstance(e, EscalationError) else f"bad Slack payload: {e}"
            await call(svc.refuse, None, None, msg, "slack")
            return err(401, msg)
        esc_id = str(action.get("value", ""))
        users = svc.config.slackUsers
        by = users.get(user.get("id", "")) or users.get(user.get("username", "")) or \
            user.get("username") or user.get("id") or ""
        if action.get("action_id") == "glassbreak_review":
            return JSONResponse({"text": "opened the review page"})
        approve = action.get("action_id") == "glassbreak_approve"
        try:
            rec = await call(svc.decide, esc_id, approve=approve, by=by,
                             reason=None if approve else f"denied in Slack by {by}",
                             via="slack", authn=f"Slack user {user.get('id') or '?'} "
                             "(signed callback, slackUsers)")
        except EscalationError as e:
            return JSONResponse({"response_type": "ephemeral", "replace_original": False,
                                 "text": f"Refused: {e.message}"})
        return JSONResponse({"response_type": "in_channel", "replace_original": False,
                             "text": f"{rec.id}: {rec.display_state} by {by}"})

    async def grants(request: Request) -> Response:
        gs = await call(svc.list_grants, request.query_params.get("all") == "1")
        return JSONResponse([g.model_dump() | {"status": g.status()} for g in gs])

    async def revoke(request: Request) -> Response:
        gid = request.path_params["grant_id"]
        body = await request.body()
        try:
            who = await call(authenticate, request, body, None, "api")
            r = RevokeIn.model_validate_json(body)
            if r.grant_id != gid:
                raise Refused(401, "body and URL name different grants (tampered)")
            g = await call(svc.revoke, gid, by=who or r.by or "", why=r.reason, via="api",
                           authn=f"bearer token of {who}" if who else "HMAC-signed body")
        except Refused as e:
            return err(e.status, e.message)
        except ValidationError as e:
            return err(422, f"bad body: {e.errors()[0]['msg']}")
        except GlassbreakError as e:
            return err(403, e.message, e.hint)
        return JSONResponse(g.model_dump() | {"status": g.status()})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def healthz(request: Request) -> Response:
        try:
            await call(svc.store.ping)
        except StoreError as e:
            return err(503, e.message)
        return JSONResponse({"ok": True, "store": svc.store.url.split("@")[-1]})

    return Starlette(routes=[
        Route("/api/escalations", list_escalations),
        Route("/api/escalations/{esc_id}", show),
        Route("/api/escalations/{esc_id}/decision", decision, methods=["POST"]),
        Route("/escalations/{esc_id}", confirm_page),
        Route("/escalations/{esc_id}/confirm", confirm_post, methods=["POST"]),
        Route("/slack/actions", slack_actions, methods=["POST"]),
        Route("/api/grants", grants),
        Route("/api/grants/{grant_id}/revoke", revoke, methods=["POST"]),
        Route("/openapi.json", openapi),
        Route("/healthz", healthz),
    ])


def _page(rec: Any, action: str, ts: str, nonce: str, sig: str) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(str(v))}</code></td></tr>" for k, v in [
        ("state", rec.display_state), ("agent", rec.agent), ("host", rec.host),
        ("profile", f"{rec.profile} ({rec.profile_hash[:12]})"), ("layer", rec.layer),
        ("rule", f"{rec.rule_id}: {rec.rule_reason}"), ("command", " ".join(rec.argv)),
        ("cwd", rec.cwd), ("binary", f"{rec.binary} {rec.binary_sha256 or ''}"),
        ("agent's reason", rec.agent_reason), ("owners", ", ".join(rec.owners)),
        ("seen", rec.count), ("max ttl", f"{rec.max_ttl}s")])
    checked = {"approve": "checked" if action != "deny" else "",
               "deny": "checked" if action == "deny" else ""}
    form = "" if rec.state != "pending" else f"""
<form method="post" action="/escalations/{e(rec.id)}/confirm">
<input type="hidden" name="form_ts" value="{ts}"><input type="hidden" name="form_nonce"
 value="{nonce}"><input type="hidden" name="form_sig" value="{sig}">
<label><input type="radio" name="action" value="approve" {checked['approve']}> approve</label>
<label><input type="radio" name="action" value="deny" {checked['deny']}> deny</label><br>
approver <input name="approver" required> token <input type="password" name="token" required>
<br>ttl <input name="ttl" placeholder="{rec.ttl_default}s"> reason <input name="reason"><br>
<button type="submit">Confirm decision</button></form>"""
    return (f"<!doctype html><title>glassbreak {e(rec.id)}</title><h1>Escalation "
            f"{e(rec.id)}</h1><table>{rows}</table>{form}")


_ERR = {"description": "refused", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}, "hint": {"type": "string"}}}}}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "glassbreak approvals", "version": "1"},
    "components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "per-approver token"},
        "hmac": {"type": "apiKey", "in": "header", "name": "X-Glassbreak-Signature",
                 "description": "v1=hex(HMAC-SHA256(secret, timestamp + '.' + body)) with "
                                "X-Glassbreak-Timestamp (300 s window) and a unique "
                                "X-Glassbreak-Delivery (replays refused)"}}},
    "paths": {
        "/api/escalations": {"get": {"summary": "list escalations", "parameters": [
            {"name": "state", "in": "query", "schema": {"type": "string", "enum": [
                "pending", "approved", "denied", "expired"]}}],
            "responses": {"200": {"description": "escalation records"}}}},
        "/api/escalations/{esc_id}": {"get": {"summary": "show one escalation",
                                              "responses": {"200": {"description": "record"},
                                                            "404": _ERR}}},
        "/api/escalations/{esc_id}/decision": {"post": {
            "summary": "approve or deny (owners/approvers only, never the requesting agent)",
            "security": [{"hmac": []}, {"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema":
                                                          DecisionIn.model_json_schema()}}},
            "responses": {"200": {"description": "the decided record"}, "401": _ERR,
                          "403": _ERR, "409": _ERR, "422": _ERR}}},
        "/escalations/{esc_id}": {"get": {"summary": "confirmation page (HTML); never "
                                          "decides", "responses": {"200": {"description":
                                                                            "HTML"}}}},
        "/escalations/{esc_id}/confirm": {"post": {"summary": "the confirmation form",
                                                   "responses": {"200": {"description": "ok"},
                                                                 "401": _ERR, "403": _ERR}}},
        "/slack/actions": {"post": {"summary": "Slack interactive callback (signed v0)",
                                    "responses": {"200": {"description": "ok"}, "401": _ERR}}},
        "/api/grants": {"get": {"summary": "list grants (?all=1 for ended ones)",
                                "responses": {"200": {"description": "grants"}}}},
        "/api/grants/{grant_id}/revoke": {"post": {
            "summary": "revoke a grant", "security": [{"hmac": []}, {"bearer": []}],
            "requestBody": {"content": {"application/json": {"schema":
                                                             RevokeIn.model_json_schema()}}},
            "responses": {"200": {"description": "the revoked grant"}, "401": _ERR,
                          "403": _ERR}}},
        "/healthz": {"get": {"summary": "store reachable?",
                             "responses": {"200": {"description": "ok"}, "503": _ERR}}},
    },
}
for _p in OPENAPI["paths"]:
    if "{" in _p:
        _name = _p.split("{")[1].split("}")[0]
        for _op in OPENAPI["paths"][_p].values():
            _op.setdefault("parameters", []).append(
                {"name": _name, "in": "path", "required": True, "schema": {"type": "string"}})


def serve(svc: EscalationService, host: str = "127.0.0.1", port: int = 8787,
          interval_s: float = 1.0) -> None:
    """Run the API (uvicorn) plus a background loop that flushes the outbox and expires
    overdue pending requests every `interval_s`."""
    import threading

    import uvicorn

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                svc.sweep()
                svc.deliver(budget_s=10.0)
            except GlassbreakError as e:
                print(f"glassbreak serve: background delivery: {e.message}", flush=True)

    t = threading.Thread(target=loop, name="glassbreak-outbox", daemon=True)
    t.start()
    try:
        uvicorn.run(build_app(svc), host=host, port=port, log_level="warning")
    finally:
        stop.set()
