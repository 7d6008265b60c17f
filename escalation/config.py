"""glassbreak's own configuration for escalations (not part of any profile).

File: $GLASSBREAK_CONFIG, else /etc/glassbreak/config.yaml, else <state dir>/config.yaml
(YAML or JSON). Environment variables override: GLASSBREAK_DECISION_SECRET,
GLASSBREAK_SLACK_SIGNING_SECRET, GLASSBREAK_PUBLIC_URL. Secrets are named by env var or file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from escalation.signing import read_secret
from sandbox.errors import GlassbreakError
from sandbox.policy.profile import Webhook


class ApproverToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenEnv: str | None = None
    tokenFile: str | None = None
    tokenSha256: str | None = Field(default=None, description="hex sha256 of the token")

    def matches(self, token: str) -> bool:
        if self.tokenSha256:
            return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(),
                                       self.tokenSha256.lower())
        try:
            want = read_secret(self.tokenEnv, self.tokenFile, "approver token")
        except GlassbreakError:
            return False
        return want is not None and hmac.compare_digest(want.encode(), token.encode())


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decisionSecretEnv: str | None = "GLASSBREAK_DECISION_SECRET"
    decisionSecretFile: str | None = None
    slackSigningSecretEnv: str | None = "GLASSBREAK_SLACK_SIGNING_SECRET"
    slackSigningSecretFile: str | None = None
    publicUrl: str | None = None
    approverTokens: dict[str, ApproverToken] = Field(default_factory=dict)
    slackUsers: dict[str, str] = Field(default_factory=dict,
                                       description="Slack user id or username -> approver name")
    webhooks: list[Webhook] = Field(default_factory=list, description="sent for every profile")
    dnsUpstream: str | None = Field(
        default=None, description="the DNS server glassbreak's resolver asks for runs "
        "(host, host:port or [v6]:port); default: the first nameserver of /etc/resolv.conf; "
        "$GLASSBREAK_DNS_UPSTREAM overrides")

    def decision_secret(self) -> str | None:
        return _optional(self.decisionSecretEnv, self.decisionSecretFile, "decision secret")

    def slack_secret(self) -> str | None:
        return _optional(self.slackSigningSecretEnv, self.slackSigningSecretFile,
                         "Slack signing secret")

    def public_url(self) -> str | None:
        return os.environ.get("GLASSBREAK_PUBLIC_URL") or self.publicUrl

    def approver_for_token(self, token: str) -> str | None:
        for name, t in self.approverTokens.items():
            if t.matches(token):
                return name
        return None


def _optional(env: str | None, file: str | None, what: str) -> str | None:
    if env and os.environ.get(env):
        return os.environ[env].strip()
    if file:
        return read_secret(None, file, what)
    return None


def config_path() -> Path | None:
    env = os.environ.get("GLASSBREAK_CONFIG")
    if env:
        return Path(env)
    from sandbox.paths import state_dir

    for p in (Path("/etc/glassbreak/config.yaml"), state_dir() / "config.yaml"):
        if p.exists():
            return p
    return None


def load_config() -> Config:
    p = config_path()
    if p is None:
        return Config()
    import yaml

    try:
        data = yaml.safe_load(p.read_text()) or {}
        return Config.model_validate(data)
    except OSError as e:
        raise GlassbreakError(f"cannot read the glassbreak config {p}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - yaml / validation errors, shown with the file
        raise GlassbreakError(f"invalid glassbreak config {p}: {e}",
                              hint="see docs/escalation.md, 'Configuration'") from None
