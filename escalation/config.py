"""glassbreak's configuration now lives in sandbox.config (the runner reads it too: agent
bindings, the public grant key); re-exported here for the escalation package."""

from sandbox.config import (
    AgentBinding,
    ApproverBinding,
    ApproverToken,
    Config,
    GrantSigning,
    RedisOptions,
    config_path,
    load_config,
    read_secret,
)

__all__ = ["AgentBinding", "ApproverBinding", "ApproverToken", "Config", "GrantSigning",
           "RedisOptions", "config_path", "load_config", "read_secret"]
