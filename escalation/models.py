"""Escalation data: what the store keeps and the API shows. Pure pydantic, no I/O."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sandbox.policy.profile import AutoApprove, Webhook

State = Literal["pending", "approved", "denied", "expired"]
GrantStatus = Literal["active", "expired", "revoked"]
DeliveryState = Literal["pending", "delivered", "retrying", "failed"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlockContext(_M):
    """Everything the runner knows about one block; the service redacts `env` on the way in."""

    agent: str | None = None
    host: str
    profile: str
    profile_hash: str = ""
    owners: list[str] = Field(default_factory=list, description="owners + approvers")
    layer: str
    rule_id: str
    rule_reason: str
    verdict: str = "block"
    argv: list[str]
    binary: str | None = None
    binary_sha256: str | None = None
    cwd: str
    env: dict[str, str] = Field(default_factory=dict)
    ancestry: list[dict[str, Any]] = Field(default_factory=list)
    recent_execs: list[dict[str, Any]] = Field(default_factory=list)
    agent_reason: str | None = None
    run_id: str = ""
    relaxed_profile: str | None = None
    ttl_default: int = 300
    max_ttl: int = 1800
    pending_ttl: int = 1800
    webhooks: list[Webhook] = Field(default_factory=list)
    auto_approve: list[AutoApprove] = Field(default_factory=list)
    on_expiry: Literal["kill", "keep"] = "kill"
    destination: str | None = Field(
        default=None, description="network blocks: what a destination grant would open "
        "(a network.allow entry, or unix:PATH)")
    fs_path: str | None = Field(default=None, description="layer filesystem: the path refused")
    fs_access: Literal["read", "write"] | None = None


class Transition(_M):
    """One step of the lifecycle (or a refused attempt), with who, when and why."""

    at: float = Field(default_factory=time.time)
    kind: Literal["raised", "attached", "approved", "denied", "expired", "refused", "revoked",
                  "delivery"]
    by: str
    why: str | None = None


class DeliveryInfo(_M):
    id: str
    url: str
    format: str
    event: str
    state: DeliveryState
    attempts: int
    last_error: str | None = None
    next_at: float | None = None


class EscalationRecord(_M):
    id: str
    state: State = "pending"
    created_at: float
    updated_at: float
    expires_at: float = Field(description="when a pending request expires (denied, expired)")
    count: int = 1
    last_seen: float
    dedupe: str
    agent: str | None = None
    host: str
    profile: str
    profile_hash: str = ""
    owners: list[str] = Field(default_factory=list)
    layer: str
    rule_id: str
    rule_reason: str
    verdict: str = "block"
    argv: list[str]
    binary: str | None = None
    binary_sha256: str | None = None
    cmd_key: str | None = Field(default=None, description="exact argv + cwd + binary hash")
    cwd: str
    env: dict[str, str] = Field(default_factory=dict)
    ancestry: list[dict[str, Any]] = Field(default_factory=list)
    recent_execs: list[dict[str, Any]] = Field(default_factory=list)
    agent_reason: str | None = None
    run_ids: list[str] = Field(default_factory=list)
    relaxed_profile: str | None = None
    ttl_default: int = 300
    max_ttl: int = 1800
    on_expiry: Literal["kill", "keep"] = "kill"
    webhooks: list[Webhook] = Field(default_factory=list)
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    grant_id: str | None = None
    destination: str | None = Field(default=None, description="network blocks: the "
                                    "destination (a network.allow entry, or unix:PATH)")
    history: list[Transition] = Field(default_factory=list)
    fs_path: str | None = Field(default=None, description="layer filesystem: the path refused; "
                                "an approval (scope path) grants it")
    fs_access: Literal["read", "write"] | None = None
    # filled on read from the outbox (not stored)
    deliveries: list[DeliveryInfo] = Field(default_factory=list)
    delivery_status: Literal["none", "pending", "delivered", "retrying", "failed"] = "none"

    @property
    def display_state(self) -> str:
        return "denied (expired)" if self.state == "expired" else self.state

    def stored(self) -> str:
        return self.model_dump_json(exclude={"deliveries", "delivery_status"})


class Grant(_M):
    id: str
    escalation_id: str | None = None
    agent: str | None = None
    profile: str
    # path: an approved filesystem escalation; runs of (agent, profile) get fs_path (fs_access)
    # destination: an approved network block; runs of (agent, profile) may reach `destination`
    scope: Literal["command", "profile", "path", "destination"]
    relaxed_profile: str | None = None
    destination: str | None = Field(default=None, description="scope destination: the "
                                    "network.allow entry (or unix:PATH) it opens; signed with "
                                    "the rest (escalation.grantsig)")
    argv: list[str] | None = None
    cwd: str | None = None
    binary_sha256: str | None = None
    cmd_key: str | None = None
    one_shot: bool = False
    approver: str
    reason: str | None = None
    created_at: float
    expires_at: float
    on_expiry: Literal["kill", "keep"] = "kill"
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    consumed_at: float | None = None
    fs_path: str | None = None  # scope path: signed with the rest (escalation.grantsig)
    fs_access: Literal["read", "write"] | None = None
    key_id: str | None = Field(default=None, description="which grant key signed it")
    signature: str | None = Field(default=None, description="Ed25519, hex (escalation.grantsig)")

    def status(self, now: float | None = None) -> GrantStatus:
        if self.revoked_at is not None:
            return "revoked"
        if (now or time.time()) >= self.expires_at:
            return "expired"
        return "active"


class Delivery(_M):
    """One webhook message in the durable outbox. Its id is sent as X-Glassbreak-Delivery and
    stays the same across retries, so a receiver can de-duplicate."""

    id: str
    escalation_id: str
    event: Literal["escalation.raised", "escalation.decided"]
    webhook: Webhook
    state: DeliveryState = "pending"
    attempts: int = 0
    created_at: float = Field(default_factory=time.time)
    next_at: float = Field(default_factory=time.time)
    last_error: str | None = None
    last_status: int | None = None
    delivered_at: float | None = None

    def info(self) -> DeliveryInfo:
        from escalation.redact import safe_url

        return DeliveryInfo(id=self.id, url=safe_url(self.webhook.url), format=self.webhook.format,
                            event=self.event, state=self.state, attempts=self.attempts,
                            last_error=self.last_error,
                            next_at=self.next_at if self.state in ("pending", "retrying")
                            else None)
