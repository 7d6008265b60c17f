"""The grants page's cards: one grant, what it opens, its revoke form (also shown on a decided
request, escalation.console.requestview)."""

from __future__ import annotations

from typing import Any

from escalation.console import auth
from escalation.console.html import (
    Markup,
    ago,
    command_line,
    duration,
    h,
    when,
)
from sandbox.cli.render import quote_arg, show_destination


def grant_opens(g: Any) -> Markup:
    """What a grant opens, in one phrase (the grants page, a decided request)."""
    if g.scope == "profile":
        return h('profile <strong>{}</strong>', g.relaxed_profile)
    if g.scope == "destination":
        return h('destination <code>{}</code>', show_destination(g.destination or "?"))
    if g.scope == "path":
        return h('{} <code>{}</code>', g.fs_access or "?", quote_arg(g.fs_path or "?"))
    return h('command {}', command_line(g.argv or [], None))


def revoke_form(grant_id: str, s: auth.Session, back: str) -> Markup:
    return h('<form class="revoke" method="post" action="/grants/{}/revoke">'
             '<input type="hidden" name="csrf" value="{}"><input type="hidden" name="back" '
             'value="{}"><label for="why-{}">Reason to revoke</label><div class="inline">'
             '<input id="why-{}" name="reason" required maxlength="{}" placeholder="done; '
             'incident closed"><button type="submit" class="danger">Revoke</button></div>'
             '</form>', grant_id, s.csrf, back, grant_id, grant_id, auth.REASON_MAX)


def grant_card(g: Any, s: auth.Session, owners: list[str], now: float) -> Markup:
    st = g.status(now)
    what = grant_opens(g)
    left = (duration(g.expires_at - now) + " left") if st == "active" else st
    may = st == "active" and (s.approver == g.approver or s.approver in owners)
    return h('<li class="item grant {}"><div class="row1"><span class="badge {}">{}</span>'
             '<strong>{}</strong><span class="muted">{}</span>{}</div>'
             '<div class="row2">agent {} · {} → {}</div>'
             '<div class="row3"><span>approved by {} {}</span><span>until {} ({})</span>'
             '<a href="/escalations/{}">{}</a></div>{}</li>',
             st, "ok" if st == "active" else "", st, g.id, g.scope,
             Markup(' <span class="badge">one-shot' + (' · used' if g.consumed_at else '')
                    + '</span>') if g.one_shot else Markup(""),
             g.agent or "-", g.profile, what, g.approver, ago(g.created_at, now),
             when(g.expires_at), left, g.escalation_id or "", g.escalation_id or "",
             revoke_form(g.id, s, "/grants") if may else Markup(""))
