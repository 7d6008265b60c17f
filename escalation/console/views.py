"""The console's pages and forms (starlette handlers, server-rendered, no script).
Why this module is long: it is one class, Console, whose handlers share its session store,
sign-in throttle, POST guard (network, size, session, CSRF) and page chrome; the page bodies
are elsewhere (requestview, grantview, auditview, traceview), what is left is the handlers.

GET  /signin, POST /signin, POST /signout         an approver token opens a session
GET  /escalations[?state=&agent=&profile=]        the inbox: pending first, newest first
GET  /escalations/{id}                            the request: trigger, owners, context,
                                                  resolution; what approving opens; decide
POST /escalations/{id}/decide                     approve / deny (session + CSRF)
GET  /grants[?all=1], POST /grants/{id}/revoke    grants with time left; revoke with a reason
GET  /audit[?run=&agent=&escalation=&type=]       the audit log, newest first
GET  /runs/{run_id}                               a run's process tree (`glassbreak trace`)

Every decision goes through EscalationService.decide / revoke (the same path as the CLI, the
HTTP API and Slack), with the signed-in approver as the decider and how they were proven as
`authn`. Nothing a form says about who decides is read. The pure page bodies (records in,
Markup out): requestview (a request and its decide form), grantview (grant cards, revoke
forms), auditview (audit rows), traceview (a run's tree); their names are handed on here.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from escalation.console import auth
from escalation.console.auditview import audit_path, audit_row, read_audit
from escalation.console.grantview import grant_card, revoke_form
from escalation.console.html import (
    Markup,
    ago,
    command_line,
    duration,
    h,
    join,
    page,
)
from escalation.console.opens import profile_diff
from escalation.console.requestview import UNITS, request_body
from escalation.console.traceview import trace_body
from sandbox.errors import EscalationError, GlassbreakError, StoreError

STATIC = Path(__file__).parent / "static"
STATES = ("pending", "approved", "denied", "expired")
EVENT_TYPES = ("run_started", "run_refused", "exec", "blocked", "syscall_killed",
               "events_lost", "grant_used", "grant_rejected", "grant_ended",
               "escalation_raised", "escalation_decided", "decision_refused",
               "console_session", "webhook_delivery", "degraded", "run_result", "connect",
               "dns")
SCOPES = ("command", "profile", "path", "destination")

__all__ = ["Console", "UNITS", "audit_row", "grant_card", "request_body", "revoke_form",
           "trace_body"]


class Console:
    def __init__(self, svc: Any, nets: list[Any], sessions: auth.Sessions | None = None) -> None:
        self.svc = svc
        self.nets = nets
        self.sessions = sessions or auth.Sessions()
        self.signin_throttle = auth.Throttle(limit=10, window_s=300)

    # -- plumbing ---------------------------------------------------------------------------
    @staticmethod
    async def call(fn: Any, *a: Any, **kw: Any) -> Any:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *a, **kw)

    @staticmethod
    def client(request: Any) -> str:
        return request.client.host if request.client else "?"

    def session(self, request: Any) -> auth.Session | None:
        return self.sessions.get(request.cookies.get(auth.SESSION_COOKIE), self.svc.config)

    def html(self, body: str, status: int = 200) -> Any:
        from starlette.responses import HTMLResponse

        return HTMLResponse(body, status_code=status)

    def redirect(self, url: str) -> Any:
        from starlette.responses import RedirectResponse

        return RedirectResponse(url, status_code=303)

    def secure(self, request: Any) -> bool:
        return request.url.scheme == "https"

    def need_session(self, request: Any) -> Any:
        """401 with the sign-in form (the page it was for comes back after signing in)."""
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self._signin_page(request, nxt, None, 401)

    def _say(self, ev: Any) -> None:
        try:
            self.svc.emit(ev)
        except EscalationError:
            pass  # a session event that cannot be written must not take the console down

    async def form(self, request: Any) -> dict[str, str]:
        body = await auth.read_body(request, auth.FORM_BODY_MAX)
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"),
                                             keep_blank_values=True,
                                             max_num_fields=50).items()}

    def chrome(self, s: auth.Session, title: str, body: Markup, nav: str = "",
               refresh: int | None = None) -> str:
        flash, s.flash = s.flash, None
        note = h('<p class="flash" role="status">{}</p>', flash) if flash else None
        return page(title, body, who=s.approver, csrf=s.csrf, nav=nav, refresh=refresh,
                    status_note=note)

    async def refused_post(self, request: Any, esc_id: str | None, why: str, status: int,
                           s: auth.Session | None = None) -> Any:
        """A POST that decides nothing: audited (bounded fields, never the request's history)."""
        await self.call(self.svc.refuse, esc_id, s.approver if s else None, why, "console",
                        f"client {self.client(request)}"
                        + (f", console session of {s.approver}" if s else ""), False)
        msg = h('<section class="card"><h1>Refused</h1><p>{}</p><p><a href="{}">Back</a>'
                '</p></section>', why, f"/escalations/{esc_id}" if esc_id else "/escalations")
        return self.html(self.chrome(s, "Refused", msg) if s else page("Refused", msg), status)

    async def guard_post(self, request: Any, esc_id: str | None
                         ) -> tuple[auth.Session | None, dict[str, str] | None, Any]:
        """The checks every deciding POST passes, in order: client network (403, audited),
        body size (413, nothing written), session (401), CSRF and origin (403, audited)."""
        host = self.client(request)
        if not auth.client_allowed(host, self.nets):
            return None, None, await self.refused_post(
                request, esc_id, f"decision from {host}, outside the networks this server "
                f"takes decisions from ({', '.join(str(n) for n in self.nets)})", 403)
        try:
            form = await self.form(request)
        except auth.TooLarge:
            return None, None, self.html(page("Too large", h(
                '<section class="card"><h1>Too large</h1><p>The form is over {} bytes; '
                'nothing was recorded.</p></section>', auth.FORM_BODY_MAX)), 413)
        s = self.session(request)
        if s is None:
            return None, None, await self.refused_post(
                request, esc_id, "no console session (sign in with an approver token)", 401)
        if not auth.same_origin(request) or \
                not hmac.compare_digest(form.get("csrf", "").encode(), s.csrf.encode()):
            return None, None, await self.refused_post(
                request, esc_id, "the form's CSRF token is missing or wrong (a cross-site "
                "request, or a stale page: reload it)", 403, s)
        return s, form, None

    # -- sign-in ----------------------------------------------------------------------------
    def _signin_page(self, request: Any, nxt: str, error: str | None, status: int) -> Any:
        import secrets

        presign = request.cookies.get(auth.PRESIGN_COOKIE) or secrets.token_urlsafe(24)
        note = Markup("")
        if not auth.client_allowed(self.client(request), self.nets):
            note = h('<p class="note">This server takes decisions only from {}; from your '
                     'address ({}) you can read but not decide.</p>',
                     ", ".join(str(n) for n in self.nets), self.client(request))
        err = h('<p class="error" role="alert">{}</p>', error) if error else Markup("")
        body = h('<section class="card signin"><h1>Sign in</h1>'
                 '<p>With your approver token: the one <code>glassbreak escalations approve '
                 '--token-file</code> and the HTTP API take (<code>approvers:</code> in the '
                 'operator&#39;s config).</p>{}{}'
                 '<form method="post" action="/signin">'
                 '<input type="hidden" name="csrf" value="{}">'
                 '<input type="hidden" name="next" value="{}">'
                 '<label for="token">Approver token</label>'
                 '<input id="token" name="token" type="password" autocomplete="current-password"'
                 ' required maxlength="512" autofocus>'
                 '<button type="submit" class="primary">Sign in</button></form></section>',
                 err, note, self.sessions.presign_csrf(presign), auth.safe_next(nxt))
        resp = self.html(page("Sign in", body), status)
        resp.set_cookie(auth.PRESIGN_COOKIE, presign, max_age=3600, path="/signin",
                        httponly=True, samesite="strict", secure=self.secure(request))
        return resp

    async def signin_get(self, request: Any) -> Any:
        if self.session(request) is not None:
            return self.redirect(auth.safe_next(request.query_params.get("next")))
        return self._signin_page(request, request.query_params.get("next") or "", None, 200)

    async def signin_post(self, request: Any) -> Any:
        host = self.client(request)
        try:
            form = await self.form(request)
        except auth.TooLarge:
            return self.html(page("Too large", h('<section class="card"><p>Over {} bytes; '
                                                 'nothing was recorded.</p></section>',
                                                 auth.FORM_BODY_MAX)), 413)
        nxt = form.get("next", "")
        if not auth.same_origin(request) or not self.sessions.presign_ok(
                request.cookies.get(auth.PRESIGN_COOKIE), form.get("csrf")):
            return self._signin_page(request, nxt, "This sign-in form was not issued to this "
                                     "browser (or it expired): try again.", 403)
        if self.signin_throttle.blocked(host):
            return self._signin_page(request, nxt, "Too many failed sign-ins from your "
                                     "address; wait a few minutes.", 429)
        token = form.get("token", "").strip()
        name = await self.call(self.svc.config.approver_for_token, token) \
            if token and len(token) <= 512 else None
        if not name:
            n = self.signin_throttle.hit(host)
            await self.call(self._say, self._session_event(
                "throttled" if n >= self.signin_throttle.limit else "refused", None, host,
                "not an approver token here"))
            return self._signin_page(request, nxt, "That is not an approver token on this "
                                     "server. Nothing was recorded but this failed sign-in.",
                                     401)
        s = self.sessions.open(str(name), token, host)
        await self.call(self._say, self._session_event("signed_in", s.approver, host, None))
        resp = self.redirect(auth.safe_next(nxt))
        resp.set_cookie(auth.SESSION_COOKIE, s.id, max_age=auth.SESSION_MAX_S, path="/",
                        httponly=True, samesite="strict", secure=self.secure(request))
        resp.delete_cookie(auth.PRESIGN_COOKIE, path="/signin")
        return resp

    @staticmethod
    def _session_event(action: str, approver: str | None, client: str, why: str | None) -> Any:
        from sandbox.events import ConsoleSession

        return ConsoleSession(action=action, approver=approver,  # type: ignore[arg-type]
                              client=client, why=why)

    async def signout(self, request: Any) -> Any:
        try:
            form = await self.form(request)
        except auth.TooLarge:
            return self.html("too large", 413)
        s = self.session(request)
        if s is not None and auth.same_origin(request) and \
                hmac.compare_digest(form.get("csrf", "").encode(), s.csrf.encode()):
            self.sessions.close(s.id)
            await self.call(self._say, self._session_event("signed_out", s.approver,
                                                           self.client(request), None))
        resp = self.redirect("/signin")
        resp.delete_cookie(auth.SESSION_COOKIE, path="/")
        return resp

    # -- inbox ------------------------------------------------------------------------------
    async def root(self, request: Any) -> Any:
        return self.redirect("/escalations")

    async def inbox(self, request: Any) -> Any:
        s = self.session(request)
        if s is None:
            return self.need_session(request)
        q = request.query_params
        state = q.get("state") if q.get("state") in STATES else None
        agent, profile = (q.get("agent") or "")[:80], (q.get("profile") or "")[:80]
        recs = await self.call(self._inbox_records, state)
        now = time.time()
        agents = sorted({r.agent or "-" for r in recs})
        profiles = sorted({r.profile for r in recs})
        recs = [r for r in recs if (not agent or (r.agent or "-") == agent)
                and (not profile or r.profile == profile)]
        recs.sort(key=lambda r: (r.state != "pending", -r.created_at))

        def options(values: list[str], chosen: str, label: str) -> Markup:
            return join([h('<option value="">{}</option>', label)] + [
                h('<option value="{}"{}>{}</option>', v,
                  Markup(" selected") if v == chosen else Markup(""), v) for v in values])

        filters = h('<form class="filters" method="get" action="/escalations">'
                    '<label>State <select name="state">{}</select></label>'
                    '<label>Agent <select name="agent">{}</select></label>'
                    '<label>Profile <select name="profile">{}</select></label>'
                    '<button type="submit">Filter</button></form>',
                    options(list(STATES), state or "", "all"),
                    options(agents, agent, "all"), options(profiles, profile, "all"))
        items = join(self._inbox_item(r, s, now) for r in recs)
        pending = sum(1 for r in recs if r.state == "pending")
        body = h('<div class="head"><h1>Inbox</h1><p class="muted">{} pending · updated {} · '
                 'refreshes every 15 s</p></div>{}<ul class="inbox">{}</ul>{}',
                 pending, time.strftime("%H:%M:%S"), filters, items,
                 Markup('<p class="empty">No escalations match.</p>') if not recs
                 else Markup(""))
        return self.html(self.chrome(s, "Inbox", body, nav="inbox", refresh=15))

    def _inbox_records(self, state: str | None) -> list[Any]:
        seen: dict[str, Any] = {}
        for r in [*self.svc.list("pending", limit=200), *self.svc.list(state, limit=100)]:
            if state is None or r.state == state:
                seen.setdefault(r.id, r)
        for r in seen.values():
            ds = self.svc.store.deliveries_for(r.id)
            states = {d.state for d in ds}
            r.delivery_status = ("failed" if "failed" in states else "retrying"
                                 if "retrying" in states else "pending" if "pending" in states
                                 else "delivered" if ds else "none")
        return list(seen.values())

    def _inbox_item(self, r: Any, s: auth.Session, now: float) -> Markup:
        left = h('<span class="left">expires in {}</span>', duration(r.expires_at - now)) \
            if r.state == "pending" else h('<span>{} by {}</span>',
                                           r.display_state, r.decided_by or "?")
        badges = []
        if r.delivery_status in ("failed", "retrying"):
            badges.append(h('<span class="badge bad" title="webhook delivery {}">webhook {}'
                            '</span>', r.delivery_status, r.delivery_status))
        if s.approver in r.owners and r.state == "pending":
            badges.append(Markup('<span class="badge you">yours to decide</span>'))
        if r.count > 1:
            badges.append(h('<span class="badge">×{}</span>', r.count))
        return h('<li class="item {}"><a href="/escalations/{}">'
                 '<div class="row1"><span class="state {}">{}</span><strong>{}</strong>'
                 '<span class="muted">on {}</span>{}</div>'
                 '<div class="row2">{}</div>'
                 '<div class="row3"><span>{} · {}</span><span>raised {}</span>{}</div></a></li>',
                 r.state, r.id, r.state, r.display_state, r.agent or "-", r.host,
                 join(badges), command_line(r.argv, 120), r.profile, r.rule_id,
                 ago(r.created_at, now), left)

    # -- one request ------------------------------------------------------------------------
    async def request_page(self, request: Any) -> Any:
        s = self.session(request)
        if s is None:
            return self.need_session(request)
        esc_id = request.path_params["esc_id"]
        if not auth.ESC_ID_RE.match(esc_id):
            return self.html(self.chrome(s, "Not found", h(
                '<section class="card"><h1>No such escalation</h1></section>')), 404)
        return await self._render_request(s, esc_id, request.query_params.get("action"))

    async def _render_request(self, s: auth.Session, esc_id: str, action: str | None,
                              error: str | None = None, values: dict[str, str] | None = None,
                              status: int = 200) -> Any:
        rec = await self.call(self.svc.get, esc_id)
        if rec is None:
            return self.html(self.chrome(s, "Not found", h(
                '<section class="card"><h1>No escalation {}</h1></section>', esc_id)), 404)
        grant = await self.call(self.svc.get_grant, rec.grant_id) if rec.grant_id else None
        diff = await self.call(profile_diff, rec.profile, rec.relaxed_profile) \
            if rec.state == "pending" else None
        body = request_body(rec, s, grant, diff, action, error, values or {})
        return self.html(self.chrome(s, rec.id, body, nav="inbox"), status)

    async def decide(self, request: Any) -> Any:
        esc_id = request.path_params["esc_id"]
        if not auth.ESC_ID_RE.match(esc_id):
            esc_id_ok: str | None = None
        else:
            esc_id_ok = esc_id
        s, form, refused = await self.guard_post(request, esc_id_ok)
        if refused is not None:
            return refused
        assert s is not None and form is not None
        if esc_id_ok is None:
            return self.html(self.chrome(s, "Not found", h(
                '<section class="card"><h1>No such escalation</h1></section>')), 404)
        reason = form.get("reason", "").strip()
        if len(reason) > auth.REASON_MAX or len(form.get("ttl", "")) > 12:
            return self.html(self.chrome(s, "Too large", h(
                '<section class="card"><h1>Too large</h1><p>A reason has at most {} '
                'characters; nothing was recorded.</p></section>', auth.REASON_MAX)), 413)
        action = form.get("action")
        if action not in ("approve", "deny"):
            return await self._render_request(s, esc_id, None, "Choose Approve or Deny.",
                                              form, 422)
        scope = form.get("scope") or "command"
        if scope not in SCOPES:
            return await self._render_request(s, esc_id, action, "Unknown scope.", form, 422)
        ttl_s: int | None = None
        if action == "approve":
            try:
                n = int(form.get("ttl", "") or "0")
                unit = UNITS[form.get("ttl_unit", "m")]
                if n <= 0:
                    raise ValueError
                ttl_s = n * unit
            except (ValueError, KeyError):
                return await self._render_request(
                    s, esc_id, action, "The time window must be a whole number of seconds, "
                    "minutes or hours, above 0.", form, 422)
        one_shot = form.get("one_shot") == "1" and scope == "command"
        try:
            rec = await self.call(
                self.svc.decide, esc_id, approve=action == "approve", by=s.approver,
                reason=reason or None, ttl_s=ttl_s, scope=scope if action == "approve"
                else None, one_shot=one_shot, via="console",
                authn=f"console session of {s.approver} (approver token), client "
                      f"{self.client(request)}")
        except EscalationError as e:
            msg = e.message.replace(" (--reason)", "")
            if "denial needs a reason" in msg:
                msg = "A denial needs a reason: say why in the Reason box."
            return await self._render_request(s, esc_id, action, msg, form, 403)
        except (StoreError, GlassbreakError) as e:
            return await self._render_request(s, esc_id, action, f"Not decided: {e.message}",
                                              form, 503)
        if rec.state == "approved":
            g = await self.call(self.svc.get_grant, rec.grant_id) if rec.grant_id else None
            s.flash = (f"Approved. Grant {rec.grant_id}"
                       + (f" ({g.scope}{', one-shot' if g.one_shot else ''}) until "
                          f"{time.strftime('%H:%M:%S', time.localtime(g.expires_at))}"
                          if g else "") + ".")
        else:
            s.flash = f"{rec.display_state.capitalize()}."
        return self.redirect(f"/escalations/{esc_id}")

    async def legacy_confirm(self, request: Any) -> Any:
        """The old token-in-the-form confirmation endpoint: gone, and nothing it sends is read
        or recorded (its `approver` field forged history, issue 12)."""
        return self.html(page("Gone", h(
            '<section class="card"><h1>This form is gone</h1><p>Decisions in the browser are '
            'made in the console: <a href="/signin">sign in</a> with your approver token.</p>'
            '</section>')), 410)

    # -- grants -----------------------------------------------------------------------------
    async def grants_page(self, request: Any) -> Any:
        s = self.session(request)
        if s is None:
            return self.need_session(request)
        show_all = request.query_params.get("all") == "1"
        gs = await self.call(self.svc.list_grants, show_all)
        owners = await self.call(self._owners_of, gs)
        now = time.time()
        rows = join(grant_card(g, s, owners.get(g.escalation_id or "", []), now) for g in gs)
        toggle = h('<a href="{}">{}</a>', "/grants" if show_all else "/grants?all=1",
                   "Only active grants" if show_all else "Include expired and revoked")
        body = h('<div class="head"><h1>Grants</h1><p class="muted">{} · refreshes every 15 s'
                 '</p></div><ul class="inbox">{}</ul>{}', toggle, rows,
                 Markup('<p class="empty">No grants.</p>') if not gs else Markup(""))
        return self.html(self.chrome(s, "Grants", body, nav="grants", refresh=15))

    def _owners_of(self, gs: list[Any]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for g in gs:
            if g.escalation_id and g.escalation_id not in out:
                rec = self.svc.store.get_escalation(g.escalation_id)
                out[g.escalation_id] = list(rec.owners) if rec else []
        return out

    async def revoke(self, request: Any) -> Any:
        gid = request.path_params["grant_id"]
        g0 = await self.call(self.svc.get_grant, gid) if auth.GRANT_ID_RE.match(gid) else None
        s, form, refused = await self.guard_post(request, g0.escalation_id if g0 else None)
        if refused is not None:
            return refused
        assert s is not None and form is not None
        if g0 is None:
            return self.html(self.chrome(s, "Not found", h(
                '<section class="card"><h1>No grant {}</h1></section>', gid[:40])), 404)
        reason = form.get("reason", "").strip()
        back = auth.safe_next(form.get("back") or "/grants")
        if len(reason) > auth.REASON_MAX:
            return self.html(self.chrome(s, "Too large", h(
                '<section class="card"><p>A reason has at most {} characters; nothing was '
                'recorded.</p></section>', auth.REASON_MAX)), 413)
        if not reason:
            s.flash = "Say why you revoke the grant (the reason is recorded)."
            return self.redirect(back)
        try:
            g = await self.call(self.svc.revoke, gid, by=s.approver, why=reason, via="console",
                                authn=f"console session of {s.approver} (approver token), "
                                      f"client {self.client(request)}")
        except GlassbreakError as e:
            s.flash = f"Not revoked: {e.message}"
            return self.redirect(back)
        s.flash = f"Grant {g.id} revoked: running sessions stop honouring it within a second."
        return self.redirect(back)

    # -- audit ------------------------------------------------------------------------------
    async def audit_page(self, request: Any) -> Any:
        s = self.session(request)
        if s is None:
            return self.need_session(request)
        q = request.query_params
        run = q.get("run") or None
        agent = (q.get("agent") or "")[:80] or None
        esc_id = q.get("escalation") or None
        type_ = q.get("type") if q.get("type") in EVENT_TYPES else None
        if run and not auth.RUN_ID_RE.match(run):
            run = None
        if esc_id and not auth.ESC_ID_RE.match(esc_id):
            esc_id = None
        rec = await self.call(self.svc.store.get_escalation, esc_id) if esc_id else None
        try:
            limit = max(1, min(1000, int(q.get("limit") or 50)))
        except ValueError:
            limit = 50
        view = await self.call(read_audit, audit_path(), run=run, agent=agent,
                               escalation=esc_id, escalation_runs=rec.run_ids if rec else None,
                               grant=rec.grant_id if rec else None, type_=type_, limit=limit)
        types = join([Markup('<option value="">all</option>')] + [
            h('<option value="{}"{}>{}</option>', t,
              Markup(" selected") if t == type_ else Markup(""), t) for t in EVENT_TYPES])
        filters = h('<form class="filters" method="get" action="/audit">'
                    '<label>Run <input name="run" value="{}" maxlength="80"></label>'
                    '<label>Agent <input name="agent" value="{}" maxlength="80"></label>'
                    '<label>Escalation <input name="escalation" value="{}" maxlength="40">'
                    '</label><label>Type <select name="type">{}</select></label>'
                    '<button type="submit">Filter</button></form>',
                    run or "", agent or "", esc_id or "", types)
        note = Markup("")
        if view.missing:
            note = Markup('<p class="empty">The audit log is empty.</p>')
        elif view.truncated:
            note = h('<p class="muted">Searched the newest {} MB of the log.</p>',
                     view.scanned // (1024 * 1024))
        more = h('<p class="muted">{} more matching event(s): narrow the filter, or <a '
                 'href="{}">show up to {}</a>.</p>', view.more,
                 "/audit?" + urlencode({k: v for k, v in {
                     "run": run, "agent": agent, "escalation": esc_id, "type": type_,
                     "limit": str(min(1000, limit * 4))}.items() if v}),
                 min(1000, limit * 4)) if view.more else Markup("")
        rows = join(audit_row(e) for e in view.events)
        body = h('<div class="head"><h1>Audit log</h1><p class="muted">newest first</p></div>'
                 '{}{}<ol class="audit">{}</ol>{}', filters, note, rows, more)
        return self.html(self.chrome(s, "Audit", body, nav="audit"))

    async def run_page(self, request: Any) -> Any:
        s = self.session(request)
        if s is None:
            return self.need_session(request)
        run_id = request.path_params["run_id"]
        if not auth.RUN_ID_RE.match(run_id):
            return self.html(self.chrome(s, "Not found", h(
                '<section class="card"><h1>No such run</h1></section>')), 404)
        view = await self.call(read_audit, audit_path(), run=run_id, limit=100000)
        if not view.events:
            return self.html(self.chrome(s, "Not found", h(
                '<section class="card"><h1>No events for run {}</h1><p>Run ids are in '
                '<code>glassbreak run -o json</code> results and in each escalation.</p>'
                '</section>', run_id)), 404)
        from sandbox.cli.trace import build_tree

        tree = build_tree(list(reversed(view.events)))
        return self.html(self.chrome(s, f"run {run_id}", trace_body(run_id, tree),
                                     nav="audit"))

    async def css(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response((STATIC / "console.css").read_bytes(), media_type="text/css")

    def routes(self) -> list[Any]:
        from starlette.routing import Route

        return [
            Route("/", self.root),
            Route("/signin", self.signin_get, methods=["GET"]),
            Route("/signin", self.signin_post, methods=["POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/escalations", self.inbox),
            Route("/escalations/{esc_id}", self.request_page),
            Route("/escalations/{esc_id}/decide", self.decide, methods=["POST"]),
            Route("/escalations/{esc_id}/confirm", self.legacy_confirm, methods=["POST"]),
            Route("/grants", self.grants_page),
            Route("/grants/{grant_id}/revoke", self.revoke, methods=["POST"]),
            Route("/audit", self.audit_page),
            Route("/runs/{run_id}", self.run_page),
            Route("/static/console.css", self.css),
        ]
