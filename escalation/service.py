"""The escalation service: the one API the runner, the CLI and the approval server use.
Why this module is long: one class, EscalationService, the one API the runner, the CLI and the
approval server use: raising, deciding, granting, revoking and checking grants go through the same
store, audit and signature checks, which a split would scatter.

    svc = EscalationService.from_env()
    svc.active_grant(agent=, profile=, argv=, cwd=, binary_sha256=) -> Grant | None
    svc.path_grants(agent=, profile=) -> [Grant]   approved filesystem escalations (scope path)
    svc.destination_grants(agent=, profile=) -> [Grant]   approved network blocks (destination)
    svc.raise_block(BlockContext(...)) -> EscalationRecord
    svc.decide(esc_id, approve=True, by="alice", ttl_s=600) -> EscalationRecord
    svc.wait_for_decision(esc_id, timeout_s) -> EscalationRecord
    svc.grant_status(grant_id) -> "active" | "expired" | "revoked"
    svc.revoke(grant_id, by="alice") ; svc.subscribe_revocations(callback) -> stop()

Every transition is written to the store (history: who, when, why) and to the audit log. A
person's decision is audited FIRST (fsync'd): if that write fails the decision fails and the
store is unchanged; if the store then fails, a follow-up record says the decision did not take
effect. Grants are signed by the deciding service (escalation.grantsig); active_grant honours
only grants whose signature verifies and whose fields match the run, and audits the others.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from escalation.backends import open_store
from escalation.models import BlockContext, Delivery, EscalationRecord, Grant, Transition
from escalation.redact import redact_argv, redact_env
from escalation.store import PATH_GRANTS_KEY, Store, command_key, dedupe_key
from sandbox.errors import EscalationError, GlassbreakError, StoreError
from sandbox.events import (
    DecisionRefused,
    EscalationDecided,
    EscalationRaised,
    GrantEnded,
    GrantRejected,
)
from sandbox.policy.profile import Webhook, parse_duration

__all__ = ["BlockContext", "EscalationRecord", "EscalationService", "Grant"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


class EscalationService:
    def __init__(self, store: Store, audit: Any | None = None, config: Any | None = None,
                 emit: Callable[[object], None] | None = None) -> None:
        self.store = store
        self._audit = audit
        self._config = config
        self._emit = emit
        self._signer: tuple[Any, Any] | None = None  # (the config it came from, key)
        self._verifier: tuple[Any, Any] | None = None

    @classmethod
    def from_env(cls) -> EscalationService:
        """GLASSBREAK_STORE=redis://... (Redis), sqlite:///path, or unset (SQLite in the state
        dir). Raises StoreError when the store cannot be opened."""
        return cls(open_store())

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        """The config given to the constructor, else the operator's file as it is now (cached
        by its stamp in sandbox.config: a long-lived daemon sees edits to approvers and keys)."""
        if self._config is not None:
            return self._config
        from sandbox.config import load_config

        return load_config()

    def emit(self, event: object) -> None:
        """Write an audit record (fsync'd). An audit log that cannot be written raises
        EscalationError: callers fail closed (no decision without its record)."""
        try:
            if self._emit is not None:
                self._emit(event)
                return
            if self._audit is None:
                from sandbox.audit import AuditLog

                self._audit = AuditLog()
            self._audit.write(event)
        except OSError as e:
            where = getattr(self._audit, "path", None) or "the audit log"
            raise EscalationError(
                f"the audit log {where} cannot be written ({e.strerror or e}): nothing was "
                "decided or changed", hint="fix the audit log (disk full? permissions? "
                "GLASSBREAK_STATE_DIR), then try again") from None

    def _try_emit(self, event: object) -> None:
        try:
            self.emit(event)
        except EscalationError:
            pass  # a follow-up record after a failure that is reported anyway

    # -- grant keys ----------------------------------------------------------------------------
    def signer(self) -> Any | None:
        """The grant signing key (deciders), or None on a runner-only host."""
        cfg = self.config
        if self._signer is None or self._signer[0] is not cfg:
            from escalation.grantsig import load_signer

            self._signer = (cfg, load_signer(cfg))
        return self._signer[1]

    def verifier(self) -> Any:
        cfg = self.config
        if self._verifier is None or self._verifier[0] is not cfg:
            from escalation.grantsig import load_verifier

            self._verifier = (cfg, load_verifier(cfg))
        return self._verifier[1]

    def _public_url(self) -> str | None:
        try:
            return self.config.public_url()  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - a bad config must not stop a delivery
            return None

    # -- grants (hot path of every run with an escalation block) -------------------------------
    def active_grant(self, *, agent: str | None, profile: str, argv: list[str], cwd: str,
                     binary_sha256: str | None = None, binary: str | None = None,
                     relaxed_profile: str | None = None,
                     on_reject: Callable[[GrantRejected], None] | None = None
                     ) -> Grant | None:
        """A profile grant for (agent, profile), else a command grant for exactly this argv,
        cwd and binary content (one-shot ones consumed atomically here). Only grants whose
        signature verifies and whose signed fields match this run count; the others are
        treated as absent and audited (GrantRejected, to on_reject or the audit log).
        `relaxed_profile`: the strict profile's escalation.relaxedProfile, which a profile
        grant must name. StoreError when the store is unreachable: the caller uses the strict
        profile (fail closed)."""
        if binary_sha256 is None and binary:
            binary_sha256 = _sha256_file(binary)
        key = command_key(list(argv), cwd, binary_sha256)
        now = time.time()
        cands = self.store.candidate_grants(agent, profile, key)
        cands.sort(key=lambda g: (g.scope != "profile", g.one_shot, -g.expires_at))
        for g in cands:
            if g.status(now) != "active" or g.scope in ("path", "destination"):
                continue
            why = self._untrusted(g, agent, profile, key, relaxed_profile, now)
            if why:
                self._rejected(g, why, on_reject)
                continue
            if g.one_shot:
                if not self.store.consume_grant(g.id, now):
                    continue  # another run won the race
                g.consumed_at = now
            return g
        return None

    def _rejected(self, g: Grant, why: str,
                  on_reject: Callable[[GrantRejected], None] | None) -> None:
        """A stored grant that does not count (`why`): audited, to `on_reject` when given."""
        ev = GrantRejected(grant_id=g.id, escalation_id=g.escalation_id, agent=g.agent,
                           profile=g.profile, approver=g.approver, why=why)
        if on_reject is not None:
            on_reject(ev)
        else:
            self._try_emit(ev)

    def path_grants(self, *, agent: str | None, profile: str,
                    on_reject: Callable[[GrantRejected], None] | None = None) -> list[Grant]:
        """Active path grants for (agent, profile): each adds its path to a run's filesystem
        rules. Like active_grant, only grants whose signature (which covers the path and the
        access) verifies and whose fields match count; the others are absent and audited.
        StoreError when the store is unreachable (the caller grants nothing)."""
        now = time.time()
        out: list[Grant] = []
        for g in self.store.candidate_grants(agent, profile, PATH_GRANTS_KEY):
            if g.scope != "path" or not g.fs_path or g.status(now) != "active":
                continue
            why = self._untrusted(g, agent, profile, PATH_GRANTS_KEY, None, now)
            if why:
                self._rejected(g, why, on_reject)
                continue
            out.append(g)
        return out

    def destination_grants(self, *, agent: str | None, profile: str,
                           on_reject: Callable[[GrantRejected], None] | None = None
                           ) -> list[Grant]:
        """The active destination grants of (agent, profile): what a run's network layer adds
        to its maps (until each grant's expiry). Like path_grants, only grants whose signature
        (which covers the destination) verifies and whose fields match count; the others are
        absent and audited. StoreError when the store is unreachable."""
        now = time.time()
        out: list[Grant] = []
        for g in self.store.candidate_grants(agent, profile, ""):
            if g.scope != "destination" or not g.destination or g.status(now) != "active":
                continue
            why = self._untrusted(g, agent, profile, "", None, now)
            if why:
                self._rejected(g, why, on_reject)
                continue
            out.append(g)
        return out

    def _untrusted(self, g: Grant, agent: str | None, profile: str, key: str,
                   relaxed_profile: str | None, now: float) -> str | None:
        """Why this runner must not honour g (None: honour it)."""
        try:
            why = self.verifier().why_invalid(g)
        except GlassbreakError as e:
            return f"it cannot be verified here: {e.message}"
        if why:
            return why
        if g.agent != agent:
            return f"it was issued to agent {g.agent!r}, not {agent!r}"
        if g.profile != profile:
            return f"it was issued for profile {g.profile}, not {profile}"
        if g.scope == "command" and g.cmd_key != key:
            return "it was issued for another command (argv, cwd or binary differ)"
        if g.scope == "profile" and relaxed_profile is not None and \
                g.relaxed_profile not in (None, relaxed_profile):
            return (f"it names relaxed profile {g.relaxed_profile}, but {profile}'s "
                    f"escalation.relaxedProfile is {relaxed_profile}")
        if not g.created_at - 60 <= now < g.expires_at:
            return "it is outside its signed window"
        return None

    def grant_status(self, grant_id: str) -> str:
        return self.store.grant_live(grant_id, time.time())

    def get_grant(self, grant_id: str) -> Grant | None:
        return self.store.get_grant(grant_id)

    def list_grants(self, include_ended: bool = False) -> list[Grant]:
        return self.store.list_grants(include_ended=include_ended)

    def revoke(self, grant_id: str, *, by: str, why: str | None = None,
               authn: str | None = None, via: str = "cli") -> Grant:
        g = self.store.get_grant(grant_id)
        if g is None:
            raise EscalationError(f"no grant {grant_id}", hint="see `glassbreak grants list`")
        rec = self.store.get_escalation(g.escalation_id) if g.escalation_id else None
        allowed = {g.approver, *(rec.owners if rec else [])}
        if by not in allowed:
            self._refuse(g.escalation_id, by, f"{by} may not revoke grant {grant_id}: only "
                         f"its approver or the profile's owners ({', '.join(sorted(allowed))})",
                         via=via, caller=authn)
        if g.revoked_at is not None:
            return g
        # audit first: a revocation nobody can account for never happens
        self.emit(GrantEnded(grant_id=grant_id, why="revoked", by=by, authn=authn))
        try:
            out = self.store.revoke_grant(grant_id, by, why, time.time())
            if out is None:
                raise EscalationError(f"grant {grant_id} vanished while revoking")
            self.store.publish_revocation(grant_id)
            if g.escalation_id:
                self.store.add_history(g.escalation_id, Transition(kind="revoked", by=by,
                                                                   why=why))
        except GlassbreakError as e:
            self._try_emit(DecisionRefused(escalation_id=g.escalation_id, by=by, caller=authn,
                                           why=f"the revocation of {grant_id} recorded above "
                                           f"did not complete: {e.message}"))
            raise
        return out

    def subscribe_revocations(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """callback(grant_id) for every revocation on any host ("*" = the channel was lost:
        treat every grant as ended). Redis: pub/sub; SQLite: polled 4x a second."""
        return self.store.subscribe_revocations(callback)

    # -- raising -------------------------------------------------------------------------------
    def raise_block(self, ctx: BlockContext, *, inline_budget_s: float = 2.0
                    ) -> EscalationRecord:
        now = time.time()
        rec = EscalationRecord(
            id=new_id("esc"), created_at=now, updated_at=now, last_seen=now,
            expires_at=now + ctx.pending_ttl,
            dedupe=dedupe_key(ctx.agent, ctx.profile, ctx.rule_id + (
                f"|{ctx.destination}" if ctx.destination else ""), ctx.argv, ctx.cwd),
            agent=ctx.agent, host=ctx.host, profile=ctx.profile, profile_hash=ctx.profile_hash,
            owners=sorted(set(ctx.owners)), layer=ctx.layer, rule_id=ctx.rule_id,
            rule_reason=ctx.rule_reason, verdict=ctx.verdict, argv=redact_argv(ctx.argv),
            binary=ctx.binary, binary_sha256=ctx.binary_sha256, cwd=ctx.cwd,
            env=redact_env(ctx.env), ancestry=ctx.ancestry[-32:],
            recent_execs=ctx.recent_execs[-50:], agent_reason=ctx.agent_reason,
            run_ids=[ctx.run_id] if ctx.run_id else [], relaxed_profile=ctx.relaxed_profile,
            fs_path=ctx.fs_path, fs_access=ctx.fs_access,
            ttl_default=min(ctx.ttl_default, ctx.max_ttl), max_ttl=ctx.max_ttl,
            on_expiry=ctx.on_expiry, webhooks=self._webhooks(ctx.webhooks),
            destination=ctx.destination,
            history=[Transition(kind="raised", by=ctx.agent or "agent:?",
                                why=ctx.agent_reason)],
        )
        rec.cmd_key = command_key(list(ctx.argv), ctx.cwd, ctx.binary_sha256)
        rec, created = self.store.create_or_attach(rec, now, ctx.run_id)
        self.emit(EscalationRaised(run_id=ctx.run_id, escalation_id=rec.id,
                                   rule_id=rec.rule_id, layer=rec.layer, argv=rec.argv,
                                   count=rec.count))
        if created:
            self._queue(rec, "escalation.raised")
            self._auto_approve(rec, ctx)
            self._flush_inline(rec.id, inline_budget_s)
        return self.get(rec.id) or rec

    def _webhooks(self, profile_hooks: list[Webhook]) -> list[Webhook]:
        hooks = list(profile_hooks)
        try:
            hooks += [w for w in self.config.webhooks if w not in hooks]
        except Exception as e:  # noqa: BLE001 - reported, never silently dropped
            self.emit(DecisionRefused(why=f"glassbreak config unreadable, its webhooks are "
                                          f"skipped: {e}"))
        return hooks

    def _queue(self, rec: EscalationRecord, event: str) -> None:
        for w in rec.webhooks:
            self.store.save_delivery(Delivery(id=new_id("dlv"), escalation_id=rec.id,
                                              event=event, webhook=w))  # type: ignore[arg-type]

    def _flush_inline(self, esc_id: str, budget_s: float) -> None:
        """One quick try for this escalation, then whatever else is due, within budget_s."""
        if budget_s <= 0:
            return
        start = time.monotonic()
        self.deliver(escalation_id=esc_id, budget_s=budget_s, timeout=min(1.5, budget_s))
        left = budget_s - (time.monotonic() - start)
        if left > 0.2:
            self.deliver(budget_s=left, timeout=min(1.5, left))

    def deliver(self, *, escalation_id: str | None = None, budget_s: float = 30.0,
                timeout: float | None = None) -> list[Delivery]:
        """Flush the outbox (what is due now). Used inline, by `escalations deliver`, by
        `serve`'s background loop."""
        from escalation.webhook import flush

        return flush(self.store, self.store.get_escalation, self.emit, self._public_url(),
                     escalation_id=escalation_id, budget_s=budget_s, timeout=timeout)

    def _auto_approve(self, rec: EscalationRecord, ctx: BlockContext) -> None:
        if rec.fs_path:  # autoApprove patterns are about commands, never about paths
            return
        cmd = " ".join(ctx.argv)
        for i, rule in enumerate(ctx.auto_approve):
            if not any(fnmatchcase(cmd, p) for p in rule.commands):
                continue
            name = f"auto:autoApprove[{i}]"
            hour = int(time.time() // 3600)
            n = self.store.bump_counter(f"auto:{ctx.profile}:{ctx.agent}:{i}:{hour}", 3600,
                                        time.time())
            if n > rule.maxPerHour:
                self._refuse(rec.id, name, f"auto-approval rate limit reached ({rule.maxPerHour}"
                             f"/hour for agent {ctx.agent}); left pending for a human",
                             raise_=False)
                return
            scope: str = rule.scope if rule.scope == "command" or rec.relaxed_profile \
                else "command"
            if rec.destination and scope == "command":
                scope = "destination"  # a network block: the destination, not the argv
            try:
                signer = self.signer()
            except GlassbreakError as e:
                signer, why = None, e.message
            else:
                why = "this host holds only the public grant key"
            if signer is None:
                self._refuse(rec.id, name, f"auto-approval needs the grant signing key ({why});"
                             " left pending for a human", raise_=False)
                return
            self._approve(rec, by=name, why=f"matches {rule.commands}",
                          ttl_s=min(parse_duration(rule.ttl), rec.max_ttl), scope=scope,
                          one_shot=False)
            return

    # -- reading -------------------------------------------------------------------------------
    def get(self, esc_id: str) -> EscalationRecord | None:
        rec = self.store.get_escalation(esc_id)
        if rec is None:
            return None
        rec = self._expire_if_due(rec)
        ds = self.store.deliveries_for(rec.id)
        rec.deliveries = [d.info() for d in ds]
        if ds:
            states = {d.state for d in ds}
            rec.delivery_status = ("failed" if "failed" in states else
                                   "retrying" if "retrying" in states else
                                   "pending" if "pending" in states else "delivered")
        return rec

    def list(self, state: str | None = None, limit: int = 100) -> list[EscalationRecord]:
        out = []
        for r in self.store.list_escalations(None, limit=limit):
            r = self._expire_if_due(r)
            if state is None or r.state == state:
                out.append(r)
        return out

    def sweep(self) -> int:
        """Expire every overdue pending request (serve calls it every second)."""
        return sum(1 for r in self.store.list_escalations("pending", limit=1000)
                   if self._expire_if_due(r).state == "expired")

    def _expire_if_due(self, rec: EscalationRecord) -> EscalationRecord:
        now = time.time()
        if rec.state != "pending" or now < rec.expires_at:
            return rec
        new = rec.model_copy(deep=True)
        why = "no decision before the pending TTL ran out: denied (expired)"
        new.state, new.updated_at, new.decided_at = "expired", now, now
        new.decided_by, new.decision_reason = "system:expiry", why
        new.history.append(Transition(kind="expired", by="system:expiry", why=why))
        if self.store.cas_escalation(new, "pending"):
            self._try_emit(EscalationDecided(escalation_id=rec.id, state="expired",
                                             by="system:expiry", why=why))
            self._queue(new, "escalation.decided")
            return new
        return self.store.get_escalation(rec.id) or new

    def wait_for_decision(self, esc_id: str, timeout_s: float) -> EscalationRecord:
        """Poll until the request is decided or expired, or timeout_s passes (then the record
        is returned still pending)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            rec = self.get(esc_id)
            if rec is None:
                raise EscalationError(f"no escalation {esc_id}")
            if rec.state != "pending" or time.monotonic() >= deadline:
                return rec
            time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))

    # -- deciding ------------------------------------------------------------------------------
    def _refuse(self, esc_id: str | None, by: str | None, why: str, *, via: str = "cli",
                raise_: bool = True, caller: str | None = None) -> None:
        self.emit(DecisionRefused(escalation_id=esc_id, by=by, why=f"{why} (via {via})",
                                  caller=caller))
        if esc_id:
            try:
                self.store.add_history(esc_id, Transition(kind="refused", by=by or "?",
                                                          why=f"{why} (via {via})"))
            except StoreError:
                pass
        if raise_:
            raise EscalationError(why, hint=f"see `glassbreak escalations show {esc_id}`; only "
                                  "a named owner/approver of the profile may decide, never the "
                                  "requesting agent" if esc_id else
                                  "see `glassbreak escalations list`")

    def refuse(self, esc_id: str | None, by: str | None, why: str, via: str,
               caller: str | None = None, history: bool = True) -> None:
        """Record a refused decision (bad signature, stale, replay...) without raising.
        history=False: the audit log only, not the request's history (an attempt nobody
        authenticated must not be able to grow a request's record)."""
        if not history:
            self.emit(DecisionRefused(escalation_id=esc_id, by=by, why=f"{why} (via {via})",
                                      caller=caller))
            return
        self._refuse(esc_id, by, why, via=via, raise_=False, caller=caller)

    def decide(self, esc_id: str, *, approve: bool, by: str, reason: str | None = None,
               ttl_s: int | None = None, scope: str | None = None, one_shot: bool = False,
               via: str = "cli", authn: str | None = None) -> EscalationRecord:
        """An authenticated person decides. Refused (recorded + EscalationError) when: the
        request is unknown, not pending or expired; `by` is the requesting agent or not an
        owner/approver of the profile; the TTL exceeds maxTtl; a deny has no reason."""
        rec = self.get(esc_id)
        if rec is None:
            self._refuse(None, by, f"no escalation {esc_id}", via=via)
            raise AssertionError  # unreachable
        if not by:
            self._refuse(esc_id, by, "the decider's name is required", via=via)
        if rec.agent is not None and by == rec.agent:
            self._refuse(esc_id, by, f"{by} is the requesting agent and cannot decide its own "
                         "escalation", via=via)
        if by not in rec.owners:
            self._refuse(esc_id, by, f"{by} is not an owner/approver of profile {rec.profile} "
                         f"(owners: {', '.join(rec.owners) or 'none named'})", via=via)
        if rec.state != "pending":
            self._refuse(esc_id, by, f"escalation {esc_id} is already {rec.display_state} (by "
                         f"{rec.decided_by}); only pending requests can be decided", via=via)
        if not approve:
            if not reason:
                self._refuse(esc_id, by, "a denial needs a reason (--reason)", via=via)
            return self._finish(rec, "denied", by, reason, None, via=via, authn=authn)
        ttl = rec.ttl_default if ttl_s is None else ttl_s
        if ttl <= 0 or ttl > rec.max_ttl:
            self._refuse(esc_id, by, f"ttl {ttl}s is outside (0, maxTtl {rec.max_ttl}s]",
                         via=via)
        if rec.destination:
            scope = scope or "destination"
            if scope in ("command", "path"):
                self._refuse(esc_id, by, f"escalation {esc_id} is a network block: approve "
                             "with scope destination (that destination) or profile (the "
                             "relaxed profile)", via=via)
        elif scope == "destination":
            self._refuse(esc_id, by, f"escalation {esc_id} names no destination: approve with "
                         "scope command or profile", via=via)
        scope = scope or ("path" if rec.fs_path else "profile" if rec.relaxed_profile
                          else "command")
        if scope == "path" and not rec.fs_path:
            self._refuse(esc_id, by, f"escalation {esc_id} names no path (it is not a "
                         "filesystem denial); approve with scope command or profile", via=via)
        if scope == "profile" and not rec.relaxed_profile:
            self._refuse(esc_id, by, f"profile {rec.profile} names no escalation.relaxedProfile; "
                         "approve with scope command", via=via)
        return self._approve(rec, by=by, why=reason, ttl_s=ttl, scope=scope, one_shot=one_shot,
                             via=via, authn=authn)

    def _approve(self, rec: EscalationRecord, *, by: str, why: str | None, ttl_s: int,
                 scope: str, one_shot: bool, via: str = "cli", authn: str | None = None
                 ) -> EscalationRecord:
        now = time.time()
        g = Grant(id=new_id("gr"), escalation_id=rec.id, agent=rec.agent, profile=rec.profile,
                  scope=scope,  # type: ignore[arg-type]
                  relaxed_profile=rec.relaxed_profile if scope == "profile" else None,
                  argv=rec.argv if scope == "command" else None,
                  cwd=rec.cwd if scope == "command" else None,
                  binary_sha256=rec.binary_sha256 if scope == "command" else None,
                  cmd_key=rec.cmd_key if scope == "command" else PATH_GRANTS_KEY
                  if scope == "path" else None,
                  one_shot=one_shot and scope == "command", approver=by, reason=why,
                  created_at=now, expires_at=now + ttl_s, on_expiry=rec.on_expiry,
                  fs_path=rec.fs_path if scope == "path" else None,
                  fs_access=rec.fs_access if scope == "path" else None,
                  destination=rec.destination if scope == "destination" else None)
        signer = self.signer()
        if signer is None:
            self._refuse(rec.id, by, "this host holds only the public grant key; decisions are "
                         "made where the signing key is (the deciding service)", via=via,
                         caller=authn)
            raise AssertionError  # unreachable: _refuse raised
        return self._finish(rec, "approved", by, why, signer.sign(g), via=via, authn=authn)

    def _finish(self, rec: EscalationRecord, state: str, by: str, why: str | None,
                grant: Grant | None, via: str = "cli", authn: str | None = None
                ) -> EscalationRecord:
        now = time.time()
        new = rec.model_copy(deep=True)
        new.state = state  # type: ignore[assignment]
        new.updated_at = new.decided_at = now
        new.decided_by, new.decision_reason = by, why
        new.grant_id = grant.id if grant else None
        detail = why or ""
        if grant:
            detail = (f"{why + '; ' if why else ''}grant {grant.id} ({grant.scope}"
                      f"{' ' + grant.destination if grant.destination else ''}"
                      f"{f': {grant.fs_access} {grant.fs_path}' if grant.fs_path else ''}"
                      f"{', one-shot' if grant.one_shot else ''}) until "
                      f"{time.strftime('%H:%M:%S', time.localtime(grant.expires_at))}")
        new.history.append(Transition(kind=state, by=by, why=detail))  # type: ignore[arg-type]
        new.deliveries, new.delivery_status = [], "none"
        # 1. the audit record first (fsync'd): if it cannot be written, nothing is decided
        self.emit(EscalationDecided(escalation_id=rec.id, state=state, by=by, why=detail,
                                    authn=authn, grant_id=grant.id if grant else None))
        # 2. the store; a failure here gets a follow-up record: the decision did not happen
        try:
            if grant:
                self.store.put_grant(grant)  # before the state flips: an approval has its grant
            if not self.store.cas_escalation(new, "pending"):
                if grant:
                    self.store.revoke_grant(grant.id, "system", "lost a concurrent decision",
                                            now)
                self._refuse(rec.id, by, f"escalation {rec.id} was decided concurrently; the "
                             f"decision recorded just before did not take effect", via=via,
                             caller=authn)
        except StoreError as e:
            self._try_emit(DecisionRefused(
                escalation_id=rec.id, by=by, caller=authn,
                why=f"the {state} decision recorded just before did NOT take effect: the store "
                    f"failed ({e.message})"))
            raise
        self._queue(new, "escalation.decided")
        self._flush_inline(rec.id, 1.0)
        return self.get(rec.id) or new


def _sha256_file(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()
