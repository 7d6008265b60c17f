"""The daemon's answers to an agent that asks instead of runs (docs/daemon.md, "Ops"): who am
I and what may I ask for, what would this command get (check / explain), what does a bound
profile say, where is my escalation (and wait for its decision), which agent is this token.

Used by `glassbreak mcp` (sandbox/mcp), which is a thin client of the daemon: the caller is
still the kernel's (SO_PEERCRED uid), mapped through the operator's bindings exactly as for a
run (sandbox.run.caller.authorize_run). Nothing runs here. Every answer is scoped to the
caller's own agents: another agent's profile or escalation is refused (IdentityError, audited
by the daemon), and an escalation that does not exist is refused with the same words as one
that belongs to someone else.
"""

from __future__ import annotations

import json
from typing import Any

from sandbox.errors import EscalationError, GlassbreakError, IdentityError, UsageError

OPS = ("whoami", "check", "profile", "escalation", "agent_token")
MAX_WAIT = 300.0  # seconds one `escalation` op may wait; clients loop for longer waits


def serve_op(sup: Any, body: dict[str, Any], *, uid: int, cwd: str) -> dict[str, Any]:
    """The result of one op for the caller `uid` (whose cwd, for check, is `cwd`)."""
    op = body.get("op")
    if op == "whoami":
        return whoami(uid, _text(body, "agent"))
    if op == "check":
        return check(uid, _text(body, "agent"), _text(body, "profile"), body.get("argv"),
                     cwd=cwd, path=_text(body, "path"), explain=body.get("explain") is True)
    if op == "profile":
        return show_profile(uid, _text(body, "agent"), _text(body, "profile"))
    if op == "escalation":
        return escalation(sup, uid, _text(body, "agent"), _text(body, "escalation_id") or "",
                          body.get("wait"))
    if op == "agent_token":
        return agent_token(uid, _text(body, "token") or "")
    raise UsageError(f"unknown op {op!r}", hint=f"the daemon answers ops {', '.join(OPS)}, "
                     "decide and revoke (docs/daemon.md)")


def _text(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    return v if isinstance(v, str) and v else None


def _config() -> Any:
    from sandbox.config import load_config

    return load_config()


def my_agents(uid: int, agent: str | None) -> dict[str, list[str] | None]:
    """The caller's agents and the profiles each may ask for (None: any non-relaxed profile
    by name, the embedded default without `agents:`). `agent` narrows to that one agent, and
    must be one of the caller's (IdentityError otherwise, with the CLI's words)."""
    from sandbox.policy.identity import Caller, bound
    from sandbox.run.caller import username

    cfg = _config()
    caller = Caller(uid, username(uid))
    if cfg.agents is None:
        me = caller.default_agent()
        if caller.root:
            return {agent or me: None}
        if agent is not None and agent != me:
            raise IdentityError(f"agent {agent} refused: you are {caller}, and without agent "
                                f"bindings your runs are agent {me!r}",
                                hint="drop the agent; only the operator binds agents")
        return {me: None}
    if caller.root:
        names = [agent] if agent is not None else list(cfg.agents)
        return {n: list(cfg.agents[n].profiles) if n in cfg.agents else None for n in names}
    mine = bound(caller, cfg.agents)
    if not mine:
        raise IdentityError(f"{caller} is bound to no agent in {cfg.path}",
                            hint="ask the operator to add your user or uid under `agents: "
                            "NAME: users:` (docs/identity.md)")
    if agent is not None:
        if agent not in mine:
            raise IdentityError(f"agent {agent} refused: {caller} is bound to agent(s) "
                                f"{', '.join(mine)} in {cfg.path}, not {agent}",
                                hint="only the operator can change agent bindings")
        mine = [agent]
    return {n: list(cfg.agents[n].profiles) for n in mine}


def whoami(uid: int, agent: str | None) -> dict[str, Any]:
    """The caller, its agents and, per agent, the profiles it may ask for (the first is the
    default) with their descriptions."""
    from sandbox.run.caller import relaxed_profiles, username

    agents = my_agents(uid, agent)
    descs: dict[str, str] = {}
    try:
        from sandbox.policy.loader import list_profiles

        descs = {n: d for n, _p, d in list_profiles()}
    except GlassbreakError:
        pass
    relaxed = relaxed_profiles() if uid != 0 else {}
    out: dict[str, Any] = {}
    for name, profiles in agents.items():
        names = profiles if profiles is not None else sorted(n for n in descs if n not in relaxed)
        if profiles is None and "readonly" in names:  # the embedded default comes first
            names = ["readonly", *[n for n in names if n != "readonly"]]
        out[name] = {"profiles": [{"name": n, "description": descs.get(n, ""),
                                   "default": i == 0} for i, n in enumerate(names)],
                     "any_profile": profiles is None}
    return {"uid": uid, "user": username(uid), "agents": out,
            "default_agent": next(iter(agents), None)}


def check(uid: int, agent: str | None, profile: str | None, argv: Any, *, cwd: str,
          path: str | None, explain: bool) -> dict[str, Any]:
    """What a run of `argv` would get under the caller's profile (one of its bound profiles,
    as for a run); nothing runs."""
    from sandbox.policy import check as policy
    from sandbox.policy.loader import load_profile
    from sandbox.run.caller import authorize_run

    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise UsageError("no command given", hint="argv: a non-empty list of strings")
    ident = authorize_run(uid, agent=agent, profile=profile, cwd=cwd)
    prof = load_profile(ident.profile)
    out: dict[str, Any] = {"agent": ident.agent, "profile": prof.name,
                           "profile_hash": prof.content_hash}
    try:
        d = policy.check_argv(prof, argv, cwd=cwd, env_path=path)
    except GlassbreakError as e:  # e.g. command not found: say so, like `glassbreak check`
        out.update(verdict="error", rule_id=None, reason=e.message, argv=list(argv),
                   binary=None, hint=e.hint, exit_code=e.exit_code)
        d = None
    if d is not None:
        out.update(d.to_dict())
    if explain:
        out["steps"] = policy.explain(prof, argv, cwd=cwd, env_path=path)
        out["chain"] = list(prof.chain)
    return out


def show_profile(uid: int, agent: str | None, profile: str | None) -> dict[str, Any]:
    """One of the caller's profiles, merged (what the policy enforces)."""
    from sandbox.policy.loader import load_profile
    from sandbox.run.caller import authorize_run

    if profile is None:
        raise UsageError("which profile?", hint="name one of your bound profiles")
    ident = authorize_run(uid, agent=agent, profile=profile, cwd="/")
    prof = load_profile(ident.profile)
    return {"agent": ident.agent, "name": prof.name, "hash": prof.content_hash,
            "profile": prof.model_dump(mode="json")}


def escalation(sup: Any, uid: int, agent: str | None, esc_id: str, wait: Any
               ) -> dict[str, Any]:
    """The state of one of the caller's escalations; with `wait` (seconds, at most MAX_WAIT),
    after waiting for its decision that long at most."""
    agents = my_agents(uid, agent)
    svc = sup.escalations()
    rec = svc.get(esc_id) if esc_id else None
    if rec is None or (uid != 0 and rec.agent not in agents) or \
            (uid == 0 and agent is not None and rec.agent != agent):
        raise EscalationError(f"no escalation {esc_id or '(none given)'} of agent(s) "
                              f"{', '.join(agents)}",
                              hint="use the escalation id a blocked run of yours reported")
    try:
        seconds = float(wait) if wait is not None else 0.0
    except (TypeError, ValueError):
        raise UsageError(f"wait must be a number of seconds, not {wait!r}") from None
    if seconds > 0:
        rec = svc.wait_for_decision(rec.id, min(seconds, MAX_WAIT))
    return escalation_view(svc, rec)


def escalation_view(svc: Any, rec: Any) -> dict[str, Any]:
    """What the requesting agent may see of its escalation: the trigger, the state, who
    decided and why, the grant's window; not the redacted environment or the process tree."""
    view: dict[str, Any] = json.loads(rec.model_dump_json(include={
        "id", "state", "created_at", "updated_at", "expires_at", "count", "agent", "profile",
        "owners", "layer", "rule_id", "rule_reason", "verdict", "argv", "cwd", "agent_reason",
        "relaxed_profile", "decided_by", "decided_at", "decision_reason", "grant_id"}))
    view["display_state"] = rec.display_state
    view["history"] = [{"at": t.at, "kind": t.kind, "by": t.by} for t in rec.history]
    grant = svc.get_grant(rec.grant_id) if rec.grant_id else None
    if grant is not None:
        view["grant"] = {"id": grant.id, "scope": grant.scope, "status": grant.status(),
                         "expires_at": grant.expires_at, "one_shot": grant.one_shot,
                         "relaxed_profile": grant.relaxed_profile}
    return view


def agent_token(uid: int, token: str) -> dict[str, Any]:
    """The agent an MCP agent token belongs to, if that agent is bound to the caller's uid
    (the HTTP MCP server runs as the agent's unix user). Root is refused: an HTTP server as
    root would run every client's commands as root."""
    from sandbox.policy.identity import Caller, bound
    from sandbox.run.caller import username

    caller = Caller(uid, username(uid))
    if caller.root:
        raise IdentityError("agent tokens are not verified for root: `glassbreak mcp --http` "
                            "must run as the agent's unix user",
                            hint="run it as a user bound to the agent (systemd User=)")
    cfg = _config()
    name = cfg.agent_for_token(token) if token else None
    if name is None:
        raise IdentityError(f"the agent token matches no agent in {cfg.path}",
                            hint="the operator stores its sha256 under `agents: NAME: "
                            "tokenSha256:` (docs/mcp.md)")
    if not bound(caller, {name: cfg.agents[name]}):
        raise IdentityError(f"the token is agent {name}'s, and {caller} is not bound to {name}",
                            hint=f"run `glassbreak mcp --http` as one of agents.{name}.users")
    return {"agent": name, "profiles": list(cfg.agents[name].profiles)}
