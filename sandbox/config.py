"""glassbreak's own configuration, the operator's (not part of any profile): who is which agent,
who may approve, where the grant signing keys are, how to reach Redis, the escalation secrets.

File: $GLASSBREAK_CONFIG, else /etc/glassbreak/config.yaml, else <state dir>/config.yaml (YAML
or JSON). Read by the runner (agent bindings, the public grant key) and by the escalation
service (approvers, secrets, the private grant key); `escalation.config` re-exports it.

Trust: when glassbreak runs as root, the file (and every directory above it) must be root's and
not writable by anyone else, or glassbreak refuses to use it (exit 125): whoever can write this
file decides who is which agent and who approves. Environment variables override the secrets:
GLASSBREAK_DECISION_SECRET, GLASSBREAK_SLACK_SIGNING_SECRET, GLASSBREAK_PUBLIC_URL. Secrets are
named by env var or file, never written here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from sandbox.errors import GlassbreakError
from sandbox.policy.profile import ProfileName, Webhook

SYSTEM_CONFIG = Path("/etc/glassbreak/config.yaml")
SYSTEM_SIGNING_KEY = Path("/etc/glassbreak/grant-signing.key")
DOCS = "docs/identity.md"


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


def read_secret(env_name: str | None, file: str | None, what: str) -> str | None:
    """A secret from an environment variable or a file (never from profile text)."""
    if env_name:
        v = os.environ.get(env_name)
        if v:
            return v.strip()
    if file:
        try:
            return Path(file).read_text().strip() or None
        except OSError as e:
            raise GlassbreakError(f"cannot read the {what} from {file}: {e.strerror}",
                                  hint="check the path and its permissions") from None
    if env_name:
        raise GlassbreakError(f"the {what} is not set: environment variable {env_name} is "
                              "empty", hint=f"export {env_name}=... or use a secret file")
    return None


class ApproverToken(_M):
    """A bearer token that proves an approver (HTTP API, `--token-file`) or an agent (MCP over
    HTTP). Store its sha256."""

    tokenEnv: str | None = None
    tokenFile: str | None = None
    tokenSha256: str | None = Field(default=None, description="hex sha256 of the token")

    def has_token(self) -> bool:
        return bool(self.tokenSha256 or self.tokenEnv or self.tokenFile)

    def matches(self, token: str) -> bool:
        if not token:
            return False
        if self.tokenSha256:
            return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(),
                                       self.tokenSha256.lower())
        if not (self.tokenEnv or self.tokenFile):
            return False
        try:
            want = read_secret(self.tokenEnv, self.tokenFile, "approver token")
        except GlassbreakError:
            return False
        return want is not None and hmac.compare_digest(want.encode(), token.encode())


User = str | int


class AgentBinding(ApproverToken):
    """The unix users whose runs ARE this agent, and the profiles it may ask for. A token
    (tokenSha256 / tokenFile / tokenEnv, or several under `tokens:`) lets a remote MCP client
    act as this agent through `glassbreak mcp --http`, which runs as one of `users` and asks
    the daemon to verify the token (docs/mcp.md)."""

    users: list[User] = Field(min_length=1, description="unix user names or uids")
    profiles: list[ProfileName] = Field(min_length=1,
                                        description="what it may ask for; the first is its "
                                        "default")
    tokens: list[ApproverToken] = Field(default_factory=list,
                                        description="more tokens for this agent (rotation)")

    def token_matches(self, token: str) -> bool:
        return any(t.has_token() and t.matches(token) for t in [self, *self.tokens])


class ApproverBinding(ApproverToken):
    """Who IS this approver: unix users (the kernel says who calls) and/or a token."""

    users: list[User] = Field(default_factory=list, description="unix user names or uids")


class GrantSigning(_M):
    """Ed25519 keys that sign grants. Deciders need the private key; runners only the public
    one. Unset: /etc/glassbreak/grant-signing.key if it exists, else a keypair generated in the
    state dir on first use (single host)."""

    privateKeyFile: str | None = None
    publicKeyFile: str | None = None


class RedisOptions(_M):
    """Credentials and TLS for GLASSBREAK_STORE=redis://|rediss://; the URL's own values win."""

    username: str | None = Field(default=None, description="ACL user")
    passwordFile: str | None = None
    passwordEnv: str | None = None
    sslCaCerts: str | None = Field(default=None, description="CA bundle (rediss://)")
    sslCertfile: str | None = Field(default=None, description="client certificate (mTLS)")
    sslKeyfile: str | None = None
    sslCertReqs: Literal["required", "optional", "none"] | None = None

    def connection_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.username:
            kw["username"] = self.username
        pw = read_secret(self.passwordEnv, self.passwordFile, "Redis password") \
            if (self.passwordEnv or self.passwordFile) else None
        if pw:
            kw["password"] = pw
        for key, val in (("ssl_ca_certs", self.sslCaCerts), ("ssl_certfile", self.sslCertfile),
                         ("ssl_keyfile", self.sslKeyfile), ("ssl_cert_reqs", self.sslCertReqs)):
            if val:
                kw[key] = val
        return kw

    def has_password(self) -> bool:
        return bool(self.passwordFile or self.passwordEnv)


class Config(_M):
    decisionSecretEnv: str | None = "GLASSBREAK_DECISION_SECRET"
    decisionSecretFile: str | None = None
    slackSigningSecretEnv: str | None = "GLASSBREAK_SLACK_SIGNING_SECRET"
    slackSigningSecretFile: str | None = None
    publicUrl: str | None = None
    agents: dict[str, AgentBinding] | None = Field(
        default=None, description="agent name -> binding; absent: a non-root caller is the "
        "agent named after its unix user")
    approvers: dict[str, ApproverBinding] = Field(default_factory=dict)
    approverTokens: dict[str, ApproverToken] = Field(
        default_factory=dict, description="older form of approvers: NAME: {tokenSha256: ...}")
    slackUsers: dict[str, str] = Field(default_factory=dict,
                                       description="Slack user id or username -> approver name")
    webhooks: list[Webhook] = Field(default_factory=list, description="sent for every profile")
    grantSigning: GrantSigning = Field(default_factory=GrantSigning)
    redis: RedisOptions = Field(default_factory=RedisOptions)
    credentialsDir: str = Field(
        default="/etc/glassbreak/credentials",
        description="where the credential sources of profiles live (root's, 0700): never "
        "readable in a run (docs/credentials.md)")
    dnsUpstream: str | None = Field(
        default=None, description="the DNS server glassbreak's resolver asks for runs "
        "(host, host:port or [v6]:port); default: the first nameserver of /etc/resolv.conf; "
        "$GLASSBREAK_DNS_UPSTREAM overrides")
    _path: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one_place_per_approver(self) -> Config:
        both = sorted(set(self.approvers) & set(self.approverTokens))
        if both:
            raise ValueError(
                f"approver {both[0]!r} is named under both `approvers:` and `approverTokens:` "
                f"(the older form); move its token into `approvers: {both[0]}: {{tokenSha256: "
                "...}}` and delete the approverTokens entry")
        return self

    @property
    def path(self) -> str:
        return self._path or "(built-in defaults: no config file)"

    def decision_secret(self) -> str | None:
        return _optional(self.decisionSecretEnv, self.decisionSecretFile, "decision secret")

    def slack_secret(self) -> str | None:
        return _optional(self.slackSigningSecretEnv, self.slackSigningSecretFile,
                         "Slack signing secret")

    def public_url(self) -> str | None:
        return os.environ.get("GLASSBREAK_PUBLIC_URL") or self.publicUrl

    def all_approvers(self) -> dict[str, ApproverBinding]:
        """`approvers:` plus the older `approverTokens:` (token only, no unix users)."""
        out = dict(self.approvers)
        for name, t in self.approverTokens.items():
            out[name] = ApproverBinding(**t.model_dump())
        return out

    def approver_for_token(self, token: str) -> str | None:
        for name, t in self.all_approvers().items():
            if t.has_token() and t.matches(token):
                return name
        return None

    def agent_for_token(self, token: str) -> str | None:
        """The agent an MCP agent token belongs to (`agents: NAME: tokenSha256: ...`)."""
        for name, b in (self.agents or {}).items():
            if b.token_matches(token):
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

    for p in (SYSTEM_CONFIG, state_dir() / "config.yaml"):
        if p.exists():
            return p
    return None


def untrusted_reason(path: Path, *, secret: bool = False) -> str | None:
    """Why a non-root user could change (or, for a secret, read) `path`, or None. Checks the
    file and every directory above it (a writable directory lets its owner swap the file;
    a sticky one, like /tmp, does not), for the path as named and for its real path."""
    try:
        chains = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    except OSError as e:
        return f"cannot resolve {path}: {e.strerror}"
    for full in chains:
        for i, p in enumerate([full, *full.parents]):
            try:
                st = os.lstat(p)
            except OSError as e:
                return f"cannot stat {p}: {e.strerror}"
            if stat.S_ISLNK(st.st_mode):
                if st.st_uid != 0:
                    return f"{p} is a symlink owned by uid {st.st_uid}, not root"
                continue
            if st.st_uid != 0:
                return f"{p} is owned by uid {st.st_uid}, not root"
            writable = st.st_mode & 0o022
            if i == 0:
                if writable:
                    return f"{p} is writable by its group or others (mode {st.st_mode & 0o7777:o})"
                if secret and st.st_mode & 0o077:
                    return f"{p} is readable by its group or others (mode " \
                           f"{st.st_mode & 0o7777:o}); a secret key must be 0600"
            elif writable and not st.st_mode & stat.S_ISVTX:
                return f"directory {p} is writable by its group or others (mode " \
                       f"{st.st_mode & 0o7777:o}, not sticky)"
    return None


def require_trusted(path: Path, what: str, *, secret: bool = False) -> None:
    """As root: refuse a file a non-root user could write (or read, for a secret)."""
    if os.geteuid() != 0:
        return
    why = untrusted_reason(path, secret=secret)
    if why:
        raise GlassbreakError(
            f"refusing the {what} {path}: {why}; a file that a non-root user can change "
            f"{'or read ' if secret else ''}cannot be trusted by glassbreak running as root",
            hint=f"chown root:root {path} && chmod {'600' if secret else '644'} {path} "
            f"(and make the directories above it root's, not writable by others); see {DOCS}")


_CACHE: dict[str, tuple[tuple[int, int, int], Config]] = {}


def load_config() -> Config:
    """The operator's config (cached by the file's mtime, size and inode: a long-lived daemon
    sees edits). GlassbreakError (125) when it is unreadable, invalid or, as root, untrusted."""
    p = config_path()
    if p is None:
        return Config()
    try:
        st = os.stat(p)
    except OSError as e:
        raise GlassbreakError(f"cannot read the glassbreak config {p}: {e.strerror}",
                              hint=f"fix the path (GLASSBREAK_CONFIG?); see {DOCS}") from None
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _CACHE.get(str(p))
    require_trusted(p, "glassbreak config")
    if hit and hit[0] == stamp:
        return hit[1]
    import yaml

    try:
        data = yaml.safe_load(p.read_text()) or {}
        cfg = Config.model_validate(data)
    except OSError as e:
        raise GlassbreakError(f"cannot read the glassbreak config {p}: {e.strerror}",
                              hint=f"fix the path or its permissions; see {DOCS}") from None
    except Exception as e:  # noqa: BLE001 - yaml / validation errors, shown with the file
        raise GlassbreakError(f"invalid glassbreak config {p}: {e}",
                              hint=f"see {DOCS} and docs/escalation.md, 'Configuration'"
                              ) from None
    cfg._path = str(p)
    _CACHE[str(p)] = (stamp, cfg)
    return cfg
