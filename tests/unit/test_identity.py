"""The pure identity mapping (sandbox.policy.identity): caller uid + operator bindings + request
-> agent and profile, or a refusal naming the binding. Milliseconds, no I/O."""

from __future__ import annotations

import pytest

from sandbox.config import AgentBinding, ApproverBinding, Config
from sandbox.errors import IdentityError
from sandbox.policy.identity import Caller, resolve_approver, resolve_run

AGENTS = {
    "ops-bot": AgentBinding(users=["agent", 1500], profiles=["k8s-readonly", "readonly"]),
    "ci-bot": AgentBinding(users=["agent"], profiles=["readonly"]),
    "other": AgentBinding(users=["bob"], profiles=["readonly"]),
}
RELAXED = {"k8s-ops-escalated": ["k8s-readonly"], "demo-ops": []}
AGENT = Caller(1001, "agent")
ROOT = Caller(0, "root")


def run(caller: Caller, agents: dict[str, AgentBinding] | None = AGENTS, *,
        agent: str | None = None, profile: str | None = None, path: bool = False):  # noqa: ANN201
    return resolve_run(caller, agents, agent=agent, profile=profile, profile_is_path=path,
                       relaxed=RELAXED, config="/etc/glassbreak/config.yaml")


def test_bound_caller_gets_its_first_binding_and_default_profile() -> None:
    ident = run(AGENT)
    assert (ident.agent, ident.profile) == ("ops-bot", "k8s-readonly")
    assert "agents.ops-bot" in ident.how and "uid 1001 (agent)" in ident.how


def test_bound_by_uid_number() -> None:
    assert run(Caller(1500, None)).agent == "ops-bot"
    assert run(Caller(1500, None), profile="readonly").profile == "readonly"


def test_agent_flag_picks_among_own_bindings_only() -> None:
    assert run(AGENT, agent="ci-bot").agent == "ci-bot"
    with pytest.raises(IdentityError) as e:
        run(AGENT, agent="other")
    assert "bound to agent(s) ops-bot, ci-bot" in e.value.message
    assert "/etc/glassbreak/config.yaml" in e.value.message and e.value.exit_code == 125


def test_profile_outside_binding_refused() -> None:
    with pytest.raises(IdentityError) as e:
        run(AGENT, agent="ci-bot", profile="k8s-readonly")
    assert "may ask for readonly" in e.value.message


def test_relaxed_profile_by_name_refused_even_if_bound() -> None:
    agents = dict(AGENTS, x=AgentBinding(users=["agent"], profiles=["k8s-ops-escalated"]))
    for a in (AGENTS, agents, None):
        with pytest.raises(IdentityError) as e:
            run(AGENT, a, profile="k8s-ops-escalated", agent="x" if a is agents else None)
        assert "relaxed profile" in e.value.message
        assert "strict profile k8s-readonly" in str(e.value.hint)


def test_profile_file_refused_for_non_root() -> None:
    with pytest.raises(IdentityError) as e:
        run(AGENT, profile="/tmp/mine.yaml", path=True)
    assert "only root may run under a profile file" in e.value.message
    with pytest.raises(IdentityError):
        run(AGENT, None, profile="/tmp/mine.yaml", path=True)


def test_unbound_caller_refused() -> None:
    with pytest.raises(IdentityError) as e:
        run(Caller(2000, "mallory"))
    assert "uid 2000 (mallory) is bound to no agent" in e.value.message


def test_no_agents_section_user_is_the_agent() -> None:
    ident = run(AGENT, None, profile="k8s-readonly")
    assert (ident.agent, ident.profile) == ("agent", "k8s-readonly")
    assert run(Caller(4242, None), None).agent == "uid-4242"
    assert run(AGENT, None).profile == "readonly"
    with pytest.raises(IdentityError) as e:
        run(AGENT, None, agent="ops-bot")
    assert "your runs are agent 'agent'" in e.value.message
    assert run(AGENT, None, agent="agent").agent == "agent"


def test_root_is_the_operator() -> None:
    assert run(ROOT, profile="k8s-ops-escalated").profile == "k8s-ops-escalated"
    assert run(ROOT, profile="/tmp/mine.yaml", path=True).profile == "/tmp/mine.yaml"
    ident = run(ROOT, agent="other")
    assert ident.agent == "other" and "operator" in ident.how
    assert run(ROOT).agent is None and run(ROOT).profile == "readonly"
    bound_root = {"root-bot": AgentBinding(users=[0], profiles=["k8s-readonly"])}
    ident = run(ROOT, bound_root)
    assert (ident.agent, ident.profile) == ("root-bot", "k8s-readonly")


APPROVERS = {"sre-oncall": ApproverBinding(users=["alice"]),
             "security": ApproverBinding(users=[1001, "carol"])}


def approver(caller: Caller, as_: str | None = None, token: str | None | bool = False
             ) -> tuple[str, str]:
    return resolve_approver(caller, APPROVERS, as_=as_, token_given=token is not False,
                            token_approver=token or None)  # type: ignore[arg-type]


def test_approver_from_unix_user() -> None:
    assert approver(Caller(1000, "alice"))[0] == "sre-oncall"
    assert approver(Caller(1000, "alice"), as_="sre-oncall")[0] == "sre-oncall"
    assert approver(Caller(1001, "agent"))[0] == "security"


def test_non_root_cannot_name_someone_else() -> None:
    with pytest.raises(IdentityError) as e:
        approver(Caller(1000, "alice"), as_="security")
    assert "--as security refused" in e.value.message and "only root" in e.value.message
    with pytest.raises(IdentityError) as e:
        approver(Caller(65534, "nobody"), as_="sre-oncall")
    assert "bound to no approver" in e.value.message
    with pytest.raises(IdentityError):
        approver(Caller(65534, "nobody"))


def test_token_names_the_approver() -> None:
    assert approver(Caller(65534, "nobody"), token="sre-oncall") == \
        ("sre-oncall", "approver token of sre-oncall")
    with pytest.raises(IdentityError, match="cannot decide as security"):
        approver(Caller(65534, "nobody"), as_="security", token="sre-oncall")
    with pytest.raises(IdentityError, match="not known"):
        approver(Caller(65534, "nobody"), token=None)


def test_root_may_say_as() -> None:
    assert approver(ROOT, as_="anyone")[0] == "anyone"
    with pytest.raises(IdentityError, match="--as NAME"):
        approver(ROOT)


def test_config_models_and_migration() -> None:
    import hashlib

    h = hashlib.sha256(b"tok").hexdigest()
    cfg = Config.model_validate({"approverTokens": {"bob": {"tokenSha256": h}},
                                 "approvers": {"alice": {"users": ["alice"]}}})
    assert cfg.approver_for_token("tok") == "bob"
    assert cfg.approver_for_token("") is None  # alice has no token: never matches empty
    assert set(cfg.all_approvers()) == {"alice", "bob"}
    with pytest.raises(ValueError, match="move its token into"):
        Config.model_validate({"approverTokens": {"bob": {"tokenSha256": h}},
                               "approvers": {"bob": {"users": ["bob"]}}})
    with pytest.raises(ValueError):
        Config.model_validate({"agents": {"x": {"users": ["a"], "profiles": []}}})
    assert Config().agents is None and Config.model_validate({"agents": {}}).agents == {}
