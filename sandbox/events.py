"""One typed event union for everything glassbreak reports (audit log, --output json, trace).

Every event has `type`, `ts` (unix seconds, float) and `run_id` (may be empty for events that
belong to no run, e.g. an operator's decision).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ts: float = Field(default_factory=time.time)
    run_id: str = ""


class RunStarted(_Event):
    type: Literal["run_started"] = "run_started"
    profile: str
    profile_hash: str
    effective_profile: str
    agent: str | None = None
    argv: list[str]
    cwd: str
    mode: Literal["enforce", "monitor"] = "enforce"
    grant_id: str | None = None
    approver: str | None = None
    layers: list[str] = Field(default_factory=list)
    degraded: list[str] = Field(
        default_factory=list, description="layers explicitly switched off for this run"
    )
    uid: int | None = None
    pid: int | None = None
    user: str | None = None
    agent_source: str | None = Field(default=None, description="how the agent was derived")


class RunRefused(_Event):
    """A caller asked for what it does not have (another agent, a relaxed profile by name, a
    profile file, an untrusted config...): nothing ran."""

    type: Literal["run_refused"] = "run_refused"
    uid: int
    user: str | None = None
    agent: str | None = Field(default=None, description="as asked (--agent)")
    profile: str | None = Field(default=None, description="as asked (-p)")
    argv: list[str] = Field(default_factory=list)
    cwd: str | None = None
    via: Literal["daemon", "in-process"] = "daemon"
    why: str


class ExecObserved(_Event):
    """An exec seen in the run's tree (eBPF trace or exec gate), with the decision taken."""

    type: Literal["exec"] = "exec"
    pid: int
    ppid: int | None = None
    binary: str
    sha256: str | None = None
    argv: list[str]
    decision: Literal["allow", "block", "deny"]
    layer: str
    rule_id: str
    would_block: bool = Field(default=False, description="monitor mode: recorded, not enforced")


class ExecBlocked(_Event):
    type: Literal["blocked"] = "blocked"
    layer: str
    verdict: Literal["block", "deny"]
    rule_id: str
    reason: str
    argv: list[str]
    binary: str | None = None
    sha256: str | None = None
    pid: int | None = None
    profile: str
    escalation_id: str | None = None
    enforced: bool = True
    path: str | None = Field(default=None, description="layer filesystem: the path refused")
    access: list[str] | None = Field(
        default=None, description="layer filesystem/landlock: the Landlock rights refused, "
        "e.g. fs.write_file, fs.read_file, fs.execute, scope.signal; attr.mode, attr.owner, "
        "attr.times for a root run's chmod, chown, utime")
    syscall: str | None = Field(
        default=None, description="layer filesystem: the file-attribute syscall refused (a root "
        "run's chmod, fchmodat, chown, utimensat...)")
    destination: str | None = Field(
        default=None, description="network blocks: the destination as a network.allow entry "
        "(host:port, udp:host:port, name:*) or unix:PATH")


class NetConnect(_Event):
    """A connect (or UDP send, or a DNS query steered to glassbreak's resolver) seen by the
    network hooks; refusals are `blocked` events. Allowed ones are reported at most once per
    destination and second."""

    type: Literal["connect"] = "connect"
    kind: str
    pid: int | None = None
    destination: str
    proto: str
    decision: Literal["allow", "block", "deny"]
    rule_id: str
    name: str | None = Field(default=None, description="the DNS name that resolved to it")
    note: str | None = None
    would_block: bool = False


class DnsLookup(_Event):
    """A DNS question a run asked glassbreak's resolver, and what it answered."""

    type: Literal["dns"] = "dns"
    qname: str
    qtype: str
    action: Literal["answered", "refused", "servfail", "dropped-address"]
    addresses: list[str] = Field(default_factory=list)
    transport: str = "udp"
    rule_id: str
    reason: str = ""
    would_block: bool = False


class SyscallKilled(_Event):
    """A process was killed by seccomp (or trapped); the syscall that did it."""

    type: Literal["syscall_killed"] = "syscall_killed"
    pid: int
    syscall: str
    nr: int
    arch: str
    signal: int


class EventsLost(_Event):
    type: Literal["events_lost"] = "events_lost"
    count: int
    source: str
    action: str = "run killed (fail closed)"


class GrantUsed(_Event):
    type: Literal["grant_used"] = "grant_used"
    grant_id: str
    escalation_id: str | None = None
    approver: str
    relaxed_profile: str
    expires_at: float


class GrantRejected(_Event):
    """A grant in the store that this runner does not honour (no or a bad signature, another
    key, fields that do not match the run): treated as absent."""

    type: Literal["grant_rejected"] = "grant_rejected"
    grant_id: str
    escalation_id: str | None = None
    agent: str | None = None
    profile: str | None = None
    approver: str | None = None
    why: str


class GrantEnded(_Event):
    type: Literal["grant_ended"] = "grant_ended"
    grant_id: str
    why: Literal["expired", "revoked"]
    killed_pids: list[int] = Field(default_factory=list)
    by: str | None = Field(default=None, description="who revoked it")
    authn: str | None = None


class EscalationRaised(_Event):
    type: Literal["escalation_raised"] = "escalation_raised"
    escalation_id: str
    rule_id: str
    layer: str
    argv: list[str]
    count: int = 1


class EscalationDecided(_Event):
    type: Literal["escalation_decided"] = "escalation_decided"
    escalation_id: str
    state: str
    by: str
    why: str | None = None
    authn: str | None = Field(default=None, description="how the decider was proven")
    grant_id: str | None = None


class DecisionRefused(_Event):
    type: Literal["decision_refused"] = "decision_refused"
    escalation_id: str | None = None
    by: str | None = None
    why: str
    caller: str | None = Field(default=None, description="who really asked (kernel uid, token)")


class ConsoleSession(_Event):
    """The console (`glassbreak serve`): an approver signed in or out, or a sign-in refused."""

    type: Literal["console_session"] = "console_session"
    action: Literal["signed_in", "signed_out", "refused", "throttled"]
    approver: str | None = None
    client: str | None = Field(default=None, description="the client's address")
    why: str | None = None


class WebhookDelivery(_Event):
    type: Literal["webhook_delivery"] = "webhook_delivery"
    escalation_id: str
    delivery_id: str
    url: str
    status: Literal["delivered", "retrying", "failed"]
    attempts: int
    error: str | None = None


class CredentialIssued(_Event):
    """A credential of the run's profile was handed to the run (never its value)."""

    type: Literal["credential_issued"] = "credential_issued"
    name: str
    source: Literal["file", "daemonEnv", "mint"]
    deliver: Literal["file", "env"]
    env: str
    profile: str
    grant_id: str | None = None
    cached: bool = Field(default=False, description="a mint of this grant reused")
    expires_at: float | None = Field(default=None, description="a minted one: its grant's end")
    mint_ms: float | None = None


class CredentialFailed(_Event):
    """A credential could not be issued: the run failed closed (125), nothing ran."""

    type: Literal["credential_failed"] = "credential_failed"
    name: str
    source: Literal["file", "daemonEnv", "mint"]
    profile: str
    grant_id: str | None = None
    exit_code: int | None = Field(default=None, description="the mint command's (None: it "
                                  "did not exit by itself)")
    why: str
    stderr_tail: str | None = Field(default=None, description="the mint's stderr, redacted")


class Degraded(_Event):
    type: Literal["degraded"] = "degraded"
    what: str
    why: str


class RunExited(_Event):
    type: Literal["run_result"] = "run_result"
    decision: Literal["allow", "block", "deny", "error"]
    exit_code: int
    signal: int | None = None
    rule_id: str | None = None
    reason: str | None = None
    hint: str | None = None
    layer: str | None = None
    escalation_id: str | None = None
    duration_ms: float | None = None
    execs: int = 0
    blocked: int = 0


Event = Annotated[
    RunStarted | RunRefused | ExecObserved | ExecBlocked | SyscallKilled | EventsLost | GrantUsed
    | GrantRejected | GrantEnded | EscalationRaised | EscalationDecided | DecisionRefused
    | ConsoleSession | WebhookDelivery | CredentialIssued | CredentialFailed | Degraded
    | RunExited | NetConnect | DnsLookup,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: str | bytes | dict[str, object]) -> Event:
    if isinstance(data, dict):
        return EVENT_ADAPTER.validate_python(data)
    return EVENT_ADAPTER.validate_json(data)
