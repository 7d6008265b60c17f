"""The approval HTTP API and the console (starlette; served by uvicorn from `glassbreak serve`).
Why this module is long: build_app (~270 lines) is the HTTP API's routes as closures over one
service and one config (authentication, rate limits, size caps); the console's pages are
escalation.console.

GET  /api/escalations[?state=]        list            GET /api/escalations/{id}   show
GET  /api/grants[?all=1]              grants          (reads: a console session or
                                                       `Authorization: Bearer <approver token>`)
POST /api/escalations/{id}/decision   signed (X-Glassbreak-* HMAC, 300 s window, replay-
                                      protected) or `Authorization: Bearer <approver token>`
POST /api/grants/{id}/revoke          authenticated as above
POST /slack/actions                   Slack interactive callback (v0 signing secret)
/, /signin, /escalations[/{id}], /grants, /audit, /runs/{id}   the console (escalation.console)
GET  /openapi.json                    GET /healthz

Every endpoint that decides or revokes takes requests only from the client networks given to
`serve --decisions-from` (default loopback): from elsewhere, 403, audited. Bodies are capped
(413 before anything is written). An attempt that nobody authenticated is recorded in the
audit log only, never in the request's history. Every response says: no caching, no framing,
no script (Content-Security-Policy).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError

from escalation.console import auth
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
    scope: Literal["command", "profile", "path", "destination"] | None = None
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


SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; style-src 'self'; img-src 'self'; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Origin "null"
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware: the headers above on every response (pages, JSON, errors)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(svc: EscalationService, decisions_from: list[str] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from escalation.console import Console

    nets = auth.parse_networks(decisions_from or auth.LOOPBACK)
    console = Console(svc, nets)

    def err(status: int, message: str, hint: str | None = None) -> Response:
        return JSONResponse({"error": message, "hint": hint}, status_code=status)

    async def call(fn: Any, *a: Any, **kw: Any) -> Any:
        return await run_in_threadpool(fn, *a, **kw)

    def client(request: Request) -> str:
        return request.client.host if request.client else "?"

    def reader(request: Request) -> str | None:
        """Who reads: the console session's approver, or the bearer token's; else None."""
        s = console.session(request)
        if s is not None:
            return s.approver
        auth_h = request.headers.get("authorization", "")
        if auth_h.lower().startswith("bearer "):
            tok = auth_h[7:].strip()
            if tok and len(tok) <= 512:
                name = svc.config.approver_for_token(tok)
                return str(name) if name else None
        return None

    async def unread(request: Request) -> Response | None:
        if await call(reader, request) is None:
            return err(401, "reading escalations and grants needs a console session or an "
                       "approver token (Authorization: Bearer ...)",
                       "sign in at /signin, or send your approver token")
        return None

    async def gate(request: Request, esc_id: str | None, via: str, limit: int
                   ) -> tuple[bytes | None, Response | None]:
        """Client network (403, audited), then the body within `limit` (413, nothing written)."""
        host = client(request)
        if not auth.client_allowed(host, nets):
            await call(svc.refuse, esc_id, None, f"decision from {host}, outside the networks "
                       f"this server takes decisions from ({', '.join(str(n) for n in nets)})",
                       via, f"client {host}", False)
            return None, err(403, f"this server takes decisions only from "
                             f"{', '.join(str(n) for n in nets)}",
                             "glassbreak serve --decisions-from CIDR")
        try:
            return await auth.read_body(request, limit), None
        except auth.TooLarge:
            return None, err(413, f"the body is over {limit} bytes; nothing was recorded")

    def authenticate(request: Request, body: bytes, esc_id: str | None, via: str) -> str | None:
        """-> the approver named by a bearer token, or None for an HMAC-signed request
        (the body names the approver). Raises Refused (recorded in the audit log only: nobody
        was authenticated) on any failure."""
        cfg = svc.config
        auth_h = request.headers.get("authorization", "")
        caller = f"client {client(request)}"
        try:
            if auth_h.lower().startswith("bearer "):
                tok = auth_h[7:].strip()
                name = cfg.approver_for_token(tok) if tok and len(tok) <= 512 else None
                if name is None:
                    raise EscalationError("unknown approver token")
                return str(name)
            secret = cfg.decision_secret()
            if not secret:
                raise EscalationError("decision signing is not configured on this server "
                                      "(GLASSBREAK_DECISION_SECRET) and no bearer token given")
            nonce = verify(secret, dict(request.headers), body)
            if not svc.store.remember_nonce(nonce[:200], 2 * WINDOW_S, time.time()):
                raise Refused(409, f"replayed decision: delivery id {nonce[:80]} was already "
                              "used")
            return None
        except EscalationError as e:
            svc.refuse(esc_id, None, e.message, via, caller, False)
            raise Refused(401, e.message) from None
        except Refused as r:
            svc.refuse(esc_id, None, r.message, via, caller, False)
            raise

    def checked_id(raw: str, pattern: Any) -> str | None:
        return raw if pattern.match(raw) else None

    async def decision(request: Request) -> Response:
        esc_id = request.path_params["esc_id"]
        known = checked_id(esc_id, auth.ESC_ID_RE)
        body, refused = await gate(request, known, "api", auth.API_BODY_MAX)
        if refused is not None:
            return refused
        assert body is not None
        try:
            who = await call(authenticate, request, body, known, "api")
            try:
                d = DecisionIn.model_validate_json(body)
            except ValidationError as e:
                raise Refused(422, f"bad decision body: {e.errors()[0]['msg']}") from None
            if d.approver is not None and not auth.NAME_RE.match(d.approver):
                raise Refused(422, "bad decision body: `approver` is not an approver name "
                              "(letters, digits, . _ @ + : -, at most 64)")
            if len(d.reason or "") > auth.REASON_MAX or len(str(d.ttl or "")) > 16:
                return err(413, f"a reason has at most {auth.REASON_MAX} characters (and a "
                           "ttl 16); nothing was recorded")
            if known is None:
                raise Refused(404, "no such escalation")
            if d.escalation_id != esc_id:
                msg = (f"body and URL name different escalations "
                       f"({d.escalation_id[:40]!r} vs {esc_id}): tampered")
                await call(svc.refuse, esc_id, who or d.approver, msg, "api")
                raise Refused(401, msg)
            if who is not None and d.approver not in (None, who):
                await call(svc.refuse, esc_id, who, f"token of {who} used to decide as "
                           f"{d.approver}", "api")
                raise Refused(403, f"this token belongs to {who}, not {d.approver}")
            by = who or d.approver or ""
            authn = (f"bearer token of {who}, client {client(request)}" if who else
                     f"HMAC-signed body (decision secret), approver as named, client "
                     f"{client(request)}")
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
        if (no := await unread(request)) is not None:
            return no
        state = request.query_params.get("state")
        recs = await call(svc.list, state if state in ("pending", "approved", "denied",
                                                       "expired") else None)
        return JSONResponse([json.loads(r.model_dump_json()) for r in recs])

    async def show(request: Request) -> Response:
        if (no := await unread(request)) is not None:
            return no
        esc_id = request.path_params["esc_id"]
        rec = await call(svc.get, esc_id) if auth.ESC_ID_RE.match(esc_id) else None
        if rec is None:
            return err(404, f"no escalation {esc_id[:40]}")
        return JSONResponse(json.loads(rec.model_dump_json()))

    async def slack_actions(request: Request) -> Response:
        body, refused = await gate(request, None, "slack", auth.API_BODY_MAX)
        if refused is not None:
            return refused
        assert body is not None
        secret = svc.config.slack_secret()
        caller = f"client {client(request)}"
        try:
            if not secret:
                raise EscalationError("Slack signing secret not configured "
                                      "(GLASSBREAK_SLACK_SIGNING_SECRET)")
            nonce = verify_slack(secret, dict(request.headers), body)
            if not await call(svc.store.remember_nonce, nonce[:200], 2 * WINDOW_S,
                              time.time()):
                raise EscalationError("replayed Slack callback")
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            action = payload["actions"][0]
            user = payload.get("user", {})
        except (EscalationError, KeyError, IndexError, ValueError, TypeError) as e:
            msg = e.message if isinstance(e, EscalationError) else \
                f"bad Slack payload: {type(e).__name__}"
            await call(svc.refuse, None, None, msg, "slack", caller, False)
            return err(401, msg)
        raw_id = str(action.get("value", ""))
        esc_id = checked_id(raw_id, auth.ESC_ID_RE)
        if action.get("action_id") == "glassbreak_review":
            return JSONResponse({"text": "opened the review page"})
        uid, uname = str(user.get("id") or "")[:40], str(user.get("username") or "")[:80]
        users = svc.config.slackUsers
        # only the operator's mapping proves who a Slack user is: a Slack handle that merely
        # equals an approver's name proves nothing
        by = users.get(uid) or users.get(uname)
        if esc_id is None or not by:
            why = (f"Slack user {uid or '?'} ({uname or '?'}) is not mapped to an approver "
                   "(slackUsers in the glassbreak config)" if esc_id else
                   "the Slack action names no escalation")
            await call(svc.refuse, esc_id, None, why, "slack", caller, False)
            return JSONResponse({"response_type": "ephemeral", "replace_original": False,
                                 "text": f"Refused: {why}"})
        approve = action.get("action_id") == "glassbreak_approve"
        try:
            rec = await call(svc.decide, esc_id, approve=approve, by=by,
                             reason=None if approve else f"denied in Slack by {by}",
                             via="slack", authn=f"Slack user {uid or '?'} "
                             "(signed callback, slackUsers)")
        except EscalationError as e:
            return JSONResponse({"response_type": "ephemeral", "replace_original": False,
                                 "text": f"Refused: {e.message}"})
        return JSONResponse({"response_type": "in_channel", "replace_original": False,
                             "text": f"{rec.id}: {rec.display_state} by {by}"})

    async def grants(request: Request) -> Response:
        if (no := await unread(request)) is not None:
            return no
        gs = await call(svc.list_grants, request.query_params.get("all") == "1")
        return JSONResponse([g.model_dump() | {"status": g.status()} for g in gs])

    async def revoke(request: Request) -> Response:
        gid = request.path_params["grant_id"]
        g0 = await call(svc.get_grant, gid) if auth.GRANT_ID_RE.match(gid) else None
        body, refused = await gate(request, g0.escalation_id if g0 else None, "api",
                                   auth.API_BODY_MAX)
        if refused is not None:
            return refused
        assert body is not None
        try:
            who = await call(authenticate, request, body, g0.escalation_id if g0 else None,
                             "api")
            r = RevokeIn.model_validate_json(body)
            if r.grant_id != gid:
                raise Refused(401, "body and URL name different grants (tampered)")
            if r.by is not None and not auth.NAME_RE.match(r.by):
                raise Refused(422, "bad body: `by` is not an approver name")
            if len(r.reason or "") > auth.REASON_MAX:
                return err(413, f"a reason has at most {auth.REASON_MAX} characters; nothing "
                           "was recorded")
            g = await call(svc.revoke, gid, by=who or r.by or "", why=r.reason, via="api",
                           authn=(f"bearer token of {who}" if who else "HMAC-signed body")
                           + f", client {client(request)}")
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
        Route("/slack/actions", slack_actions, methods=["POST"]),
        Route("/api/grants", grants),
        Route("/api/grants/{grant_id}/revoke", revoke, methods=["POST"]),
        Route("/openapi.json", openapi),
        Route("/healthz", healthz),
        *console.routes(),
    ], middleware=[Middleware(SecurityHeaders)])


_ERR = {"description": "refused", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}, "hint": {"type": "string"}}}}}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "glassbreak approvals", "version": "1"},
    "components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "per-approver token"},
        "session": {"type": "apiKey", "in": "cookie", "name": "gb_session",
                    "description": "a console session (POST /signin with an approver token)"},
        "hmac": {"type": "apiKey", "in": "header", "name": "X-Glassbreak-Signature",
                 "description": "v1=hex(HMAC-SHA256(secret, timestamp + '.' + body)) with "
                                "X-Glassbreak-Timestamp (300 s window) and a unique "
                                "X-Glassbreak-Delivery (replays refused)"}}},
    "paths": {
        "/api/escalations": {"get": {"summary": "list escalations", "parameters": [
            {"name": "state", "in": "query", "schema": {"type": "string", "enum": [
                "pending", "approved", "denied", "expired"]}}],
            "security": [{"bearer": []}, {"session": []}],
            "responses": {"200": {"description": "escalation records"}, "401": _ERR}}},
        "/api/escalations/{esc_id}": {"get": {"summary": "show one escalation",
                                              "security": [{"bearer": []}, {"session": []}],
                                              "responses": {"200": {"description": "record"},
                                                            "401": _ERR, "404": _ERR}}},
        "/api/escalations/{esc_id}/decision": {"post": {
            "summary": "approve or deny (owners/approvers only, never the requesting agent)",
            "security": [{"hmac": []}, {"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema":
                                                          DecisionIn.model_json_schema()}}},
            "responses": {"200": {"description": "the decided record"}, "401": _ERR,
                          "403": _ERR, "409": _ERR, "413": _ERR, "422": _ERR}}},
        "/escalations/{esc_id}": {"get": {"summary": "the console's request page (HTML, "
                                          "signed-in approvers); a GET never decides",
                                          "responses": {"200": {"description": "HTML"},
                                                        "401": {"description": "sign in"}}}},
        "/slack/actions": {"post": {"summary": "Slack interactive callback (signed v0)",
                                    "responses": {"200": {"description": "ok"}, "401": _ERR,
                                                  "403": _ERR, "413": _ERR}}},
        "/api/grants": {"get": {"summary": "list grants (?all=1 for ended ones)",
                                "security": [{"bearer": []}, {"session": []}],
                                "responses": {"200": {"description": "grants"},
                                              "401": _ERR}}},
        "/api/grants/{grant_id}/revoke": {"post": {
            "summary": "revoke a grant", "security": [{"hmac": []}, {"bearer": []}],
            "requestBody": {"content": {"application/json": {"schema":
                                                             RevokeIn.model_json_schema()}}},
            "responses": {"200": {"description": "the revoked grant"}, "401": _ERR,
                          "403": _ERR, "413": _ERR}}},
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
          interval_s: float = 1.0, decisions_from: list[str] | None = None) -> None:
    """Run the API and the console (uvicorn) plus a background loop that flushes the outbox
    and expires overdue pending requests every `interval_s`. `decisions_from`: the client
    networks whose requests may decide or revoke (default loopback only)."""
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
        # proxy_headers=False: the client address the allowlist sees is the TCP peer's, never
        # an X-Forwarded-For header
        uvicorn.run(build_app(svc, decisions_from), host=host, port=port, log_level="warning",
                    proxy_headers=False, server_header=False)
    finally:
        stop.set()
