"""The request page's body (GET /escalations/{id}): the trigger, owners, context, resolution,
what approving opens, and the decide form. Pure: records in, Markup out (the handlers are
escalation.console.views.Console's)."""

from __future__ import annotations

import time
from typing import Any

from escalation.console import auth
from escalation.console.grantview import grant_opens, revoke_form
from escalation.console.html import (
    Markup,
    ago,
    argv_html,
    command_line,
    dl,
    duration,
    h,
    join,
    when,
)
from sandbox.cli.render import quote_arg, show_destination

UNITS = {"s": 1, "m": 60, "h": 3600}


def _fmt_ttl(seconds: int) -> str:
    for unit, n in (("h", 3600), ("m", 60)):
        if seconds % n == 0 and seconds >= n:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def request_body(rec: Any, s: auth.Session, grant: Any, diff: Any, action: str | None,
                 error: str | None, values: dict[str, str]) -> Markup:
    now = time.time()
    status = h('<span class="left">expires in {}</span>', duration(rec.expires_at - now)) \
        if rec.state == "pending" else Markup("")
    head = h('<div class="head"><h1><span class="state {}">{}</span> {}</h1>{}</div>',
             rec.state, rec.display_state, rec.id, status)
    err = h('<p class="error" role="alert">{}</p>', error) if error else Markup("")

    trigger = h('<section class="card" id="trigger"><h2>1 · What triggered it</h2>{}'
                '<h3>The command, argument by argument</h3>{}'
                '<p class="muted">As one shell line: {}</p></section>',
                dl([("layer", rec.layer), ("rule", h("<code>{}</code>", rec.rule_id)),
                     ("why blocked", rec.rule_reason), ("verdict", rec.verdict),
                     ("binary", h("<code>{}</code>", quote_arg(rec.binary or "?"))),
                     ("sha256", h('<code class="hash">{}</code>', rec.binary_sha256 or "?")),
                     ("cwd", h("<code>{}</code>", quote_arg(rec.cwd))),
                     *_target_rows(rec)]),
                argv_html(rec.argv), command_line(rec.argv, None))

    can, why_not = _can_decide(rec, s)
    owners = join(h('<li>{}{}</li>', o, Markup(' <span class="badge you">you</span>')
                    if o == s.approver else Markup("")) for o in rec.owners)
    who = h('<section class="card" id="owners"><h2>2 · Who owns it</h2>'
            '<ul class="owners">{}</ul><p>{}</p></section>',
            owners or Markup("<li>(none named)</li>"),
            "You can decide this request." if can else why_not)

    ctx = h('<section class="card" id="context"><h2>3 · Context</h2>{}{}{}{}{}{}</section>',
            dl([("agent", rec.agent or "-"), ("host", rec.host),
                 ("profile", h('{} <code class="hash">{}</code>', rec.profile,
                               rec.profile_hash[:16])),
                 ("agent's reason", h('<q>{}</q>', rec.agent_reason) if rec.agent_reason
                  else Markup('<span class="muted">(none given)</span>')),
                 ("raised", h('{} ({})', when(rec.created_at), ago(rec.created_at, now))),
                 ("last seen", h('{} · {} time(s)', when(rec.last_seen), rec.count)),
                 ("expires", when(rec.expires_at) if rec.state == "pending" else "-"),
                 ("runs", join((h('<a href="/runs/{}"><code>{}</code></a>', r, r)
                                for r in rec.run_ids), ", ") or "-")]),
            _env_table(rec.env), _proc_list("Process ancestry (oldest first)", rec.ancestry),
            _proc_list("The run's recent execs", rec.recent_execs),
            _deliveries(rec), h('<p><a href="/audit?escalation={}">Audit events of this '
                                'request</a></p>', rec.id))

    resolve = h('<section class="card" id="resolution"><h2>4 · How it resolves</h2>{}{}{}'
                '</section>', _outcome(rec, grant, s, now),
                _opens(rec, diff) if rec.state == "pending" else Markup(""),
                _decide_form(rec, s, action, values) if rec.state == "pending" and can
                else Markup(""))
    history = h('<section class="card" id="history"><h2>History</h2><ol class="history">{}'
                '</ol></section>',
                join(h('<li><span class="when">{}</span> <span class="kind {}">{}</span> by '
                       '<strong>{}</strong>{}</li>', when(t.at), t.kind, t.kind, t.by,
                       h(': {}', t.why) if t.why else Markup("")) for t in rec.history))
    return join([head, err, trigger, who, ctx, resolve, history])


def _target_rows(rec: Any) -> list[tuple[str, Any]]:
    """What a network block or a filesystem denial names (what its own scope would open)."""
    rows: list[tuple[str, Any]] = []
    if getattr(rec, "destination", None):
        rows.append(("destination", h("<code>{}</code>", show_destination(rec.destination))))
    if getattr(rec, "fs_path", None):
        rows.append(("path", h("{} <code>{}</code>", rec.fs_access or "?",
                               quote_arg(rec.fs_path))))
    return rows


def _narrowest_scope(rec: Any) -> str:
    return "destination" if getattr(rec, "destination", None) else \
        "path" if getattr(rec, "fs_path", None) else "command"


def _can_decide(rec: Any, s: auth.Session) -> tuple[bool, str]:
    if rec.state != "pending":
        return False, f"This request is {rec.display_state}."
    if rec.agent is not None and s.approver == rec.agent:
        return False, "You are the requesting agent: you cannot decide your own request."
    if s.approver not in rec.owners:
        return False, (f"You ({s.approver}) are not an owner or approver of profile "
                       f"{rec.profile}: only they can decide.")
    return True, ""


def _env_table(env: dict[str, str]) -> Markup:
    if not env:
        return Markup("")
    rows = join(h('<tr><th scope="row">{}</th><td><code>{}</code></td></tr>', k, v)
                for k, v in sorted(env.items()))
    return h('<details><summary>Environment ({} variables, secrets redacted)</summary>'
             '<div class="scroll"><table class="env">{}</table></div></details>', len(env), rows)


def _proc_list(title: str, procs: list[dict[str, Any]]) -> Markup:
    if not procs:
        return h('<p class="muted">{}: none recorded.</p>', title)
    items = join(h('<li><span class="pid">{}</span> {}{}</li>',
                   p.get("pid", "?"), command_line([str(a) for a in (p.get("argv") or [])],
                                                   300) if p.get("argv") else
                   h("<code>{}</code>", p.get("binary") or "?"),
                   h(' <span class="muted">{}</span>', p.get("decision"))
                   if p.get("decision") else Markup("")) for p in procs)
    return h('<details><summary>{} ({})</summary><ol class="procs">{}</ol></details>',
             title, len(procs), items)


def _deliveries(rec: Any) -> Markup:
    if not rec.deliveries:
        return Markup('<p class="muted">Webhooks: none configured.</p>')
    rows = join(h('<li><span class="badge {}">{}</span> {} → <code>{}</code> ({}) · {} '
                  'attempt(s){}{}</li>', "bad" if d.state == "failed" else "", d.state,
                  d.event, d.url, d.format, d.attempts,
                  h(' · last error: {}', d.last_error) if d.last_error else Markup(""),
                  h(' · next try {}', when(d.next_at)) if d.next_at else Markup(""))
                for d in rec.deliveries)
    return h('<h3>Webhook delivery: {}</h3><ul class="deliveries">{}</ul>',
             rec.delivery_status, rows)


def _outcome(rec: Any, grant: Any, s: auth.Session, now: float) -> Markup:
    if rec.state == "pending":
        return h('<p>Pending: {} can approve or deny until {} ({}). Unanswered, it is denied '
                 '(expired).</p>', ", ".join(rec.owners) or "nobody", when(rec.expires_at),
                 duration(rec.expires_at - now))
    rows: list[tuple[str, Any]] = [("decision", rec.display_state),
                                   ("by", rec.decided_by or "-"),
                                   ("when", when(rec.decided_at)),
                                   ("reason", rec.decision_reason or "-")]
    revoke = Markup("")
    if grant is not None:
        st = grant.status(now)
        what = (h('profile <strong>{}</strong> for agent {}', grant.relaxed_profile,
                  grant.agent or "-") if grant.scope == "profile" else
                h('{} for agent {}', grant_opens(grant), grant.agent or "-")
                if grant.scope in ("destination", "path") else
                h('exactly {} in <code>{}</code>{}', command_line(grant.argv or [], None),
                  quote_arg(grant.cwd or "?"), ", one run" if grant.one_shot else ""))
        left = duration(grant.expires_at - now) + " left" if st == "active" else st
        used = " · used" if grant.consumed_at else ""
        rows += [("grant", h('<code>{}</code> <span class="badge {}">{}</span>{}', grant.id,
                             "ok" if st == "active" else "", st, used)),
                 ("opens", what), ("until", h('{} ({})', when(grant.expires_at), left))]
        if grant.revoked_at:
            rows.append(("revoked", h('{} by {}: {}', when(grant.revoked_at),
                                      grant.revoked_by or "?", grant.revoke_reason or "-")))
        if st == "active" and (s.approver == grant.approver or s.approver in rec.owners):
            revoke = revoke_form(grant.id, s, f"/escalations/{rec.id}")
    return join([dl(rows), revoke])


def _opens(rec: Any, diff: Any) -> Markup:
    nested = h('<p class="note">Blocked inside the run\'s process tree ({}): a command grant '
               'is honoured when the agent runs exactly this command as its top-level command; '
               'the program that started it stays blocked.</p>', rec.layer) \
        if rec.layer != "pre-check" else Markup("")
    cmd = h('<div class="opens-cmd"><h4>Scope “this command”</h4><p>Exactly this argv, in '
            'this working directory, with this binary content — nothing else:</p>'
            '<p>{}</p><p class="muted">cwd <code>{}</code> · binary '
            '<code>{}</code> sha256 <code class="hash">{}</code></p>{}</div>',
            command_line(rec.argv, None), quote_arg(rec.cwd), quote_arg(rec.binary or "?"),
            rec.binary_sha256 or "?", nested)
    if getattr(rec, "destination", None):
        cmd = h('<div class="opens-cmd"><h4>Scope “this destination”</h4><p>Every run of agent '
                '{} under <code>{}</code> may reach exactly this destination until the grant '
                'ends (connections opened under it are closed then) — nothing else:</p>'
                '<p><code>{}</code></p><p class="muted">asked by {}</p></div>',
                rec.agent or "-", rec.profile, show_destination(rec.destination),
                command_line(rec.argv, None))
    elif getattr(rec, "fs_path", None):
        cmd = h('<div class="opens-cmd"><h4>Scope “this path”</h4><p>Every run of agent {} '
                'under <code>{}</code> may {} exactly this path until the grant ends — nothing '
                'else:</p><p><code>{}</code></p></div>', rec.agent or "-", rec.profile,
                rec.fs_access or "?", quote_arg(rec.fs_path))
    if diff is None or diff.error:
        prof = h('<div class="opens-profile"><h4>Scope “profile”</h4><p class="muted">{}</p>'
                 '</div>', diff.error if diff is not None else "not available")
    else:
        changed = Markup("")
        if diff.strict_hash_now and rec.profile_hash and \
                diff.strict_hash_now != rec.profile_hash:
            changed = h('<p class="error">Profile {} changed since this request was raised '
                        '(hash {} then, {} now).</p>', rec.profile, rec.profile_hash[:12],
                        diff.strict_hash_now[:12])
        lines = join(h('<span class="{}">{}</span>\n', "add" if ln.startswith("+") else
                       "del" if ln.startswith("-") else "hunk" if ln.startswith("@@") else "",
                       ln) for ln in diff.lines) if diff.lines else \
            Markup("(no difference in what is enforced)")
        prof = h('<div class="opens-profile"><h4>Scope “profile”: all of <code>{}</code> for '
                 'agent {}</h4><p>Every run of this agent under <code>{}</code> gets the '
                 'relaxed profile until the grant ends. The enforced policy, strict against '
                 'relaxed: <span class="add">+</span> only in the relaxed profile ({}), '
                 '<span class="del">−</span> only in the strict one ({}):</p>{}'
                 '<pre class="diff">{}</pre></div>', diff.relaxed,
                 rec.agent or "-", rec.profile, diff.added, diff.removed, changed, lines)
    return h('<h3>What approving opens</h3><div class="opens">{}{}</div>', cmd, prof)


def _decide_form(rec: Any, s: auth.Session, action: str | None, values: dict[str, str]
                 ) -> Markup:
    narrow = _narrowest_scope(rec)
    scope = values.get("scope") or narrow
    one = values.get("one_shot", "") if values else "1"   # narrowest by default
    if "ttl" in values:
        ttl_default, unit_default = values.get("ttl", ""), values.get("ttl_unit", "m")
    else:
        t = _fmt_ttl(rec.ttl_default)
        ttl_default, unit_default = t[:-1], t[-1]
    if unit_default not in UNITS:
        unit_default = "s"
    units = join(h('<option value="{}"{}>{}</option>', u,
                   Markup(" selected") if u == unit_default else Markup(""), label)
                 for u, label in (("s", "seconds"), ("m", "minutes"), ("h", "hours")))
    prof_ok = bool(rec.relaxed_profile)

    def checked(cond: bool) -> Markup:
        return Markup(" checked") if cond else Markup("")

    if narrow == "command":
        first = h('<label class="choice"><input type="radio" name="scope" value="command"{}> '
                  'This command only</label><label class="choice"><input type="checkbox" '
                  'name="one_shot" value="1"{}> One run (one-shot)</label>',
                  checked(scope == "command"), checked(one == "1"))
    elif narrow == "destination":
        first = h('<label class="choice"><input type="radio" name="scope" value="destination"{}>'
                  ' This destination only: <code>{}</code></label>',
                  checked(scope == "destination"), show_destination(rec.destination))
    else:
        first = h('<label class="choice"><input type="radio" name="scope" value="path"{}> This '
                  'path only: {} <code>{}</code></label>', checked(scope == "path"),
                  rec.fs_access or "?", quote_arg(rec.fs_path))
    return h(
        '<form class="decide" method="post" action="/escalations/{}/decide">'
        '<input type="hidden" name="csrf" value="{}">'
        '<fieldset><legend>Scope of an approval</legend>{}'
        '<label class="choice{}"><input type="radio" name="scope" value="profile"{}{}> The '
        'whole profile <code>{}</code></label></fieldset>'
        '<div class="ttl"><label for="ttl">Time window</label><div class="inline">'
        '<input id="ttl" name="ttl" type="number" min="1" step="1" inputmode="numeric" '
        'value="{}"><select name="ttl_unit" aria-label="unit">{}</select></div>'
        '<p class="muted">default {}, at most {} (the profile\'s maxTtl)</p></div>'
        '<label for="reason">Reason <span class="muted">(required to deny; recorded)</span>'
        '</label><textarea id="reason" name="reason" rows="2" maxlength="{}">{}</textarea>'
        '<div class="buttons"><button type="submit" name="action" value="approve" '
        'class="primary">Approve</button><button type="submit" name="action" value="deny" '
        'class="danger">Deny</button></div>'
        '<p class="muted">You decide as <strong>{}</strong>; recorded in the audit log first.'
        '</p></form>',
        rec.id, s.csrf, first,
        "" if prof_ok else " disabled", checked(scope == "profile" and prof_ok),
        Markup("") if prof_ok else Markup(" disabled"),
        rec.relaxed_profile or "(none: no relaxedProfile)", ttl_default, units,
        _fmt_ttl(rec.ttl_default), _fmt_ttl(rec.max_ttl), auth.REASON_MAX,
        values.get("reason", ""), s.approver)
