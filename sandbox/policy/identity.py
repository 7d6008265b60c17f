"""Who a caller is and what it may ask for: pure functions of the kernel's word (uid, and the
user name it maps to), the operator's bindings (sandbox.config) and the request. No I/O:
sandbox.run.caller gathers the facts, these decide (unit tests run in milliseconds).

Runs (resolve_run):
  root (uid 0)     the operator: any agent, any profile or file; its default agent is the one
                   bound to root (if any), its default profile that agent's first one
  no `agents:`     (embedded default) a non-root caller is the agent named after its unix user
                   and may ask for any non-relaxed profile by name (the trusted directories)
  `agents:`        a non-root caller is an agent whose binding lists its user or uid; `--agent`
                   only picks among those; it may ask only for the binding's profiles (the
                   first is the default)
  never, non-root  a profile file path; a relaxed profile by name (`relax: true`, or any
                   profile's escalation.relaxedProfile): that is reached only through a grant

Decisions (resolve_approver): a valid approver token names the approver; root is the operator
and may say `--as NAME`; a non-root caller is an approver whose binding lists its user or uid,
and `--as` only picks among those.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sandbox.errors import IdentityError

DEFAULT_PROFILE = "readonly"


class Binding(Protocol):
    @property
    def users(self) -> Sequence[str | int]: ...


class AgentBindingLike(Binding, Protocol):
    @property
    def profiles(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Caller:
    """The kernel's word: SO_PEERCRED at the daemon, getuid in process."""

    uid: int
    user: str | None = None  # the passwd name of uid, when there is one

    @property
    def root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return f"uid {self.uid} ({self.user})" if self.user else f"uid {self.uid}"

    def default_agent(self) -> str:
        return self.user or f"uid-{self.uid}"


@dataclass(frozen=True)
class RunIdentity:
    uid: int
    user: str | None
    agent: str | None
    profile: str
    how: str  # how the agent was derived (recorded in run_started)


def bound(caller: Caller, bindings: Mapping[str, Binding]) -> list[str]:
    """The names whose binding lists the caller's user name or uid (config order)."""
    out = []
    for name, b in bindings.items():
        for u in b.users:
            if (isinstance(u, int) and u == caller.uid) or \
                    (isinstance(u, str) and (u == caller.user or u == str(caller.uid))):
                out.append(name)
                break
    return out


def resolve_run(caller: Caller, agents: Mapping[str, AgentBindingLike] | None, *,
                agent: str | None, profile: str | None, profile_is_path: bool,
                relaxed: Mapping[str, Collection[str]], config: str = "the glassbreak config"
                ) -> RunIdentity:
    """The agent and profile of one run, or IdentityError saying why not and what to do.
    `relaxed`: relaxed profile name -> the strict profiles that name it (may be empty)."""
    if caller.root:
        return _root_run(caller, agents, agent, profile)
    if profile_is_path:
        raise IdentityError(
            f"profile file {profile} refused: only root may run under a profile file; you "
            f"are {caller}",
            hint="use a profile by name (`glassbreak profile list`); `glassbreak check -p FILE` "
            "and `glassbreak profile explain FILE` try a file without running anything")
    if agents is None:
        me = caller.default_agent()
        if agent is not None and agent != me:
            raise IdentityError(
                f"--agent {agent} refused: you are {caller}, and without agent bindings your "
                f"runs are agent {me!r}",
                hint=f"drop --agent, or ask the operator to bind {caller} to {agent!r} under "
                f"`agents:` in {config} (docs/identity.md)")
        name = profile or DEFAULT_PROFILE
        _not_relaxed(name, relaxed)
        return RunIdentity(caller.uid, caller.user, me, name,
                           f"unix user of {caller} (no agents: bindings)")
    mine = bound(caller, agents)
    if not mine:
        raise IdentityError(
            f"{caller} is bound to no agent in {config}, so it may not run commands",
            hint=f"ask the operator to add your user or uid under `agents: NAME: users:` in "
            f"{config} (docs/identity.md)")
    if agent is not None and agent not in mine:
        raise IdentityError(
            f"--agent {agent} refused: {caller} is bound to agent(s) {', '.join(mine)} in "
            f"{config}, not {agent}",
            hint=f"use --agent {mine[0]} (or drop --agent); only the operator can change "
            "agent bindings")
    name_agent = agent or mine[0]
    allowed = list(agents[name_agent].profiles)
    name = profile or allowed[0]
    _not_relaxed(name, relaxed)
    if name not in allowed:
        raise IdentityError(
            f"profile {name} refused: agent {name_agent} ({caller}) may ask for "
            f"{', '.join(allowed)} (its binding in {config})",
            hint=f"run under {allowed[0]} (the default: drop -p); a block there raises an "
            "escalation that an approver can grant")
    how = f"binding agents.{name_agent} lists {caller}" + (" (--agent)" if agent else "")
    return RunIdentity(caller.uid, caller.user, name_agent, name, how)


def _root_run(caller: Caller, agents: Mapping[str, AgentBindingLike] | None,
              agent: str | None, profile: str | None) -> RunIdentity:
    mine = bound(caller, agents or {})
    if agent is not None:
        how = "root (operator) named the agent"
    elif mine:
        agent, how = mine[0], f"root, bound as agents.{mine[0]}"
    else:
        how = "root (operator), no agent named"
    if profile is None:
        profile = agents[agent].profiles[0] if agents and agent is not None and \
            agent in agents else DEFAULT_PROFILE
    return RunIdentity(caller.uid, caller.user, agent, profile, how)


def _not_relaxed(name: str, relaxed: Mapping[str, Collection[str]]) -> None:
    if name not in relaxed:
        return
    strict = sorted(relaxed[name])
    via = f" {strict[0]}" if len(strict) == 1 else (f" ({', '.join(strict)})" if strict else "")
    raise IdentityError(
        f"profile {name} refused: it is a relaxed profile, reachable only through an approved "
        "escalation, never by name",
        hint=f"run under the strict profile{via}; a block there raises an escalation, and "
        "once an approver grants it your runs use the relaxed profile for the window")


def resolve_approver(caller: Caller, approvers: Mapping[str, Binding], *, as_: str | None,
                     token_given: bool, token_approver: str | None,
                     config: str = "the glassbreak config") -> tuple[str, str]:
    """(approver name, how it was proven) for a decision, or IdentityError."""
    if token_given:
        if token_approver is None:
            raise IdentityError("the approver token is not known: it matches no approver in "
                                f"{config}", hint="check the token file; the operator stores "
                                "its sha256 under `approvers: NAME: tokenSha256:`")
        if as_ is not None and as_ != token_approver:
            raise IdentityError(f"this token is {token_approver}'s; it cannot decide as {as_}",
                                hint="drop --as (the token says who you are)")
        return token_approver, f"approver token of {token_approver}"
    if caller.root:
        if as_ is not None:
            return as_, "root (operator) --as"
        mine = bound(caller, approvers)
        if mine:
            return mine[0], f"root, bound as approvers.{mine[0]}"
        raise IdentityError("say who decides: root must name the approver with --as NAME",
                            hint="e.g. --as sre-oncall (an owner of the profile)")
    mine = bound(caller, approvers)
    if as_ is not None and as_ not in mine:
        have = (f"bound to approver(s) {', '.join(mine)}" if mine
                else "bound to no approver")
        raise IdentityError(
            f"--as {as_} refused: you are {caller}, {have} in {config}; only root may "
            "decide as someone else",
            hint="prove the identity with that approver's token (--token-file PATH or "
            "GLASSBREAK_APPROVER_TOKEN), or drop --as")
    if not mine:
        raise IdentityError(
            f"{caller} is no approver: no `approvers:` binding in {config} lists it",
            hint="use an approver token (--token-file PATH or GLASSBREAK_APPROVER_TOKEN), or "
            "ask the operator to bind your user under `approvers: NAME: users:`")
    name = as_ or mine[0]
    return name, f"binding approvers.{name} lists {caller}"
