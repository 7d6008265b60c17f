"""One decision by a local user (`glassbreak escalations approve|deny`, `grants revoke`): the
approver is proven, never believed. Used by the root CLI in process and by the daemon for
non-root callers (SO_PEERCRED uid): sandbox.policy.identity.resolve_approver decides who it is
from the uid, the operator's `approvers:` bindings and an approver token. A refused identity is
audited (decision_refused, with the real caller) and raises EscalationError."""

from __future__ import annotations

import json
from typing import Any

from sandbox.errors import EscalationError, IdentityError
from sandbox.policy.identity import Caller, resolve_approver


def prove_approver(svc: Any, *, uid: int, user: str | None, as_: str | None,
                   token: str | None, esc_id: str | None) -> tuple[str, str]:
    """(approver name, how proven), or EscalationError (recorded)."""
    cfg = svc.config
    caller = Caller(uid, user)
    token_name = cfg.approver_for_token(token) if token else None
    try:
        name, how = resolve_approver(caller, cfg.all_approvers(), as_=as_,
                                     token_given=bool(token), token_approver=token_name,
                                     config=cfg.path)
    except IdentityError as e:
        who = str(caller) + (f" with the token of {token_name}" if token_name else
                             " with an unknown token" if token else "")
        svc.refuse(esc_id, as_, e.message, "cli", caller=who)
        raise EscalationError(e.message, hint=e.hint) from None
    return name, f"{how}; caller {caller}"


def decide_request(svc: Any, body: dict[str, Any], *, uid: int, user: str | None
                   ) -> dict[str, Any]:
    """body: {"op": "decide", "escalation_id", "approve", "as", "token", "ttl", "reason",
    "scope", "once"} or {"op": "revoke", "grant_id", "as", "token", "reason"}."""

    def text(key: str) -> str | None:
        v = body.get(key)
        return v if isinstance(v, str) and v else None

    if body.get("op") == "revoke":
        gid = text("grant_id") or ""
        g0 = svc.get_grant(gid) if gid else None
        name, how = prove_approver(svc, uid=uid, user=user, as_=text("as"),
                                   token=text("token"),
                                   esc_id=g0.escalation_id if g0 is not None else None)
        g = svc.revoke(gid, by=name, why=text("reason"), authn=how)
        return json.loads(g.model_dump_json()) | {"status": g.status()}  # type: ignore[no-any-return]
    esc_id = text("escalation_id") or ""
    name, how = prove_approver(svc, uid=uid, user=user, as_=text("as"), token=text("token"),
                               esc_id=esc_id)
    ttl: int | None = None
    if text("ttl"):
        from sandbox.policy.profile import parse_duration

        try:
            ttl = parse_duration(text("ttl") or "")
        except ValueError as e:
            raise EscalationError(str(e), hint="e.g. --ttl 10m") from None
    scope = text("scope")
    if scope not in (None, "command", "profile", "path", "destination"):
        raise EscalationError(f"unknown scope {scope!r}",
                              hint="command, profile, path or destination")
    once = body.get("once") is True
    rec = svc.decide(esc_id, approve=body.get("approve") is True, by=name,
                     reason=text("reason"), ttl_s=ttl, scope=scope or ("command" if once
                                                                       else None),
                     one_shot=once, via="cli", authn=how)
    return json.loads(rec.model_dump_json())  # type: ignore[no-any-return]
