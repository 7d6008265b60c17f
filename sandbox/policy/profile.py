"""Profile models: the format security engineers write (YAML or JSON).
Why this module is long: the profile format as pydantic models, one per section (exec, safeBins,
filesystem, network, credentials, escalation): the schema and its validation messages, read as one
document.

Pure data. Loading (files, `extends`, search path, file:line errors) lives in
`sandbox.policy.loader`.
Field names are camelCase on disk, as in the seed design's `safeBins` object.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str | int | float) -> int:
    """'5m', '1h30m', '90s', '2d' or a number of seconds -> seconds (int, > 0)."""
    if isinstance(text, int | float):
        if text <= 0:
            raise ValueError(f"duration must be positive, got {text}")
        return int(text)
    s = text.strip()
    if s.isdigit():
        return parse_duration(int(s))
    m = DURATION_RE.match(s)
    if not s or not m or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 1h30m, 2d)")
    d, h, mi, se = (int(g) if g else 0 for g in m.groups())
    total = d * 86400 + h * 3600 + mi * 60 + se
    if total <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return total


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Examples(Model):
    """Example command lines checked when the profile loads; a wrong example is a load error."""

    allow: list[str] = Field(default_factory=list)
    block: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


Dialect = Literal["getopt", "cobra"]


class SafeBin(Model):
    """argv rules for one binary (the argv models are in sandbox.policy.argv).

    - dialect: how the program parses its argv: `getopt` (GNU getopt_long: coreutils, grep,
      sed, find, git-like tools), `cobra` (spf13/cobra on spf13/pflag: kubectl, helm, gh,
      docker). Not given: every model reads the argv and the strictest decision wins.
    - allowedValueFlags / allowedFlags: when either is given, they form an allowlist: any
      other flag blocks (fail closed). An entry `--flag=value` allows the flag only with that
      exact value.
    - forbiddenFlags (alias deniedFlags): these flags, in any spelling, block.
    - restrictedCommands: subcommands (first operand, or a space-separated path like
      "config set") that need an escalation: block.
    - deniedCommands: subcommands that are never allowed: deny.
    - allowedCommands: when given, any other subcommand blocks.
    - minPositional / maxPositional: bounds on the number of operands.
    - onViolation: the verdict for flag violations (block, or deny to make them unescalatable).
    """

    dialect: Dialect | None = None
    allowedValueFlags: list[str] | None = None
    allowedFlags: list[str] | None = None
    forbiddenFlags: list[str] = Field(default_factory=list)
    deniedFlags: list[str] = Field(default_factory=list)
    restrictedCommands: list[str] = Field(default_factory=list)
    deniedCommands: list[str] = Field(default_factory=list)
    allowedCommands: list[str] | None = None
    valueFlags: list[str] = Field(
        default_factory=list,
        description="flags known to take a value without being allowed (so that their value "
        "is not mistaken for the subcommand); useful with forbiddenFlags-only rules",
    )
    minPositional: int | None = Field(default=None, ge=0)
    maxPositional: int | None = Field(default=None, ge=0)
    onViolation: Literal["block", "deny"] = "block"
    description: str | None = None
    examples: Examples = Field(default_factory=Examples)

    @field_validator(
        "allowedValueFlags", "allowedFlags", "forbiddenFlags", "deniedFlags", "valueFlags"
    )
    @classmethod
    def _flags_look_like_flags(cls, v: list[str] | None) -> list[str] | None:
        for f in v or []:
            if not f.startswith("-") or f in ("-", "--") or " " in f:
                raise ValueError(f"{f!r} is not a flag (flags start with '-' or '--')")
        return v

    @property
    def all_forbidden(self) -> list[str]:
        return [*self.forbiddenFlags, *self.deniedFlags]

    @property
    def has_flag_allowlist(self) -> bool:
        return self.allowedValueFlags is not None or self.allowedFlags is not None


ExecDefault = Literal["allow", "block", "deny"]


class ExecPolicy(Model):
    """Which programs may run at all (besides those with a safeBins rule).

    allow: absolute paths or globs (fnmatch) of the resolved binary, or bare names that are
    resolved in the trusted directories. deny: never allowed (never escalatable).
    default: what happens to a program matched by nothing.
    """

    allow: list[str] = Field(default_factory=list)
    block: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)
    default: ExecDefault = "block"
    allowFileless: bool = Field(
        default=False, description="allow memfd / execveat(AT_EMPTY_PATH) / /proc/self/fd execs"
    )
    trustedDirs: list[str] = Field(
        default_factory=lambda: ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                 "/sbin", "/bin"],
        description="directories whose binaries are identified by path; a ruled binary's "
        "content found elsewhere is still ruled (identity by sha256)",
    )
    examples: Examples = Field(default_factory=Examples)


FS_VARIABLES = ("CWD", "HOME", "TMPDIR")
_FS_PATH_RE = re.compile(r"^(?:/|~(?:/|$)|\$(?:\{(\w+)\}|(\w+))(?:/|$))")


def fs_path_problem(path: str) -> str | None:
    """Why `path` is not a valid filesystem rule path (None when it is)."""
    m = _FS_PATH_RE.match(path)
    if not m or "\0" in path:
        return (f"{path!r} is not an absolute path: start it with /, ~, or one of "
                + ", ".join("$" + v for v in FS_VARIABLES))
    var = m.group(1) or m.group(2)
    if var is not None and var not in FS_VARIABLES:
        return f"{path!r}: unknown variable ${var} (use " + ", ".join(
            "$" + v for v in FS_VARIABLES) + ")"
    if "$" in path[m.end():]:
        return f"{path!r}: a variable may only start a path"
    if any(part == ".." for part in path.split("/")):
        return f"{path!r}: '..' is not allowed in a rule path"
    return None


class FilesystemPolicy(Model):
    """What a run may read, write and execute (Landlock; docs/profiles.md, "filesystem").

    Paths are absolute, or start with ~ or $CWD, $HOME, $TMPDIR (the run's cwd, its user's
    home from the password database, and the run's private temp dir). A rule on a directory
    covers everything beneath it; where rules nest, the most specific one wins. Whatever a
    profile says, glassbreak's own config, profiles, state and install are never writable and
    its secrets and state never readable (docs/filesystem.md).
    """

    read: list[str] | None = Field(
        default=None, description="trees or files the run may read (default: [\"/\"], the "
        "whole system but devices); the first profile of a chain that lists them defines them")
    write: list[str] | None = Field(
        default=None, description="trees or files the run may create, change and delete in "
        "(and read) (default: [\"$CWD\", \"$TMPDIR\"])")
    execute: list[str] | None = Field(
        default=None, description="trees or files where any file may be executed, beyond the "
        "exec envelope (exec.allow, safeBins, their interpreters and the loader); the exec gate "
        "still judges every exec (default: none)")
    hidden: list[str] = Field(
        default_factory=list, description="neither readable nor writable (names stay listable); "
        "a more specific read or write entry beneath one re-opens that path")
    default: Literal["block", "deny"] = Field(
        default="block", description="a denied access: block (reported and escalatable: an "
        "approval grants that path for the window) or deny (reported, never escalatable)")

    @field_validator("read", "write", "execute", "hidden")
    @classmethod
    def _paths(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            problem = fs_path_problem(p)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("write")
    @classmethod
    def _no_devices(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            q = p.rstrip("/") or "/"
            shm = "/dev/shm"  # noqa: S108 - a path rule, not a temporary file
            if (q == "/dev" or q.startswith("/dev/")) and not (
                    q == shm or q.startswith(shm + "/")):
                raise ValueError(f"{p!r}: devices are never writable in a run; under /dev only "
                                 f"{shm} (POSIX shared memory) may be listed")
        return v


SECCOMP_ACTION_RE = re.compile(
    r"^(allow|kill_process|kill_thread|kill|log|trap|notify|errno:[A-Z0-9]+|errno:\d+)$"
)


class ArgCondition(Model):
    """A syscall argument condition, as libseccomp's (arg index, op, value[, mask])."""

    arg: int = Field(ge=0, le=5)
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "masked_eq"]
    value: int
    mask: int | None = None

    @model_validator(mode="after")
    def _mask_only_for_masked_eq(self) -> ArgCondition:
        if (self.op == "masked_eq") != (self.mask is not None):
            raise ValueError("'mask' is required with op masked_eq and only with it")
        return self


class SeccompRule(Model):
    action: str
    syscalls: list[str] = Field(min_length=1)
    args: list[ArgCondition] = Field(default_factory=list)
    reason: str | None = None
    id: str | None = None

    @field_validator("action")
    @classmethod
    def _action(cls, v: str) -> str:
        if not SECCOMP_ACTION_RE.match(v):
            raise ValueError(
                f"unknown seccomp action {v!r}: use allow, errno:NAME (e.g. errno:EPERM), "
                "kill_process, log or trap"
            )
        return v


class SeccompPolicy(Model):
    defaultAction: str = "allow"
    rules: list[SeccompRule] = Field(default_factory=list)

    @field_validator("defaultAction")
    @classmethod
    def _default_action(cls, v: str) -> str:
        return SeccompRule._action(v)


NetworkDefault = Literal["allow", "block", "deny"]


class NetworkPolicy(Model):
    """Which destinations a run may reach (sandbox.policy.network has the entry format).

    default: what happens to a destination no entry allows: block (refused, escalatable),
    deny (refused, never escalatable) or allow (everything but the sensitive addresses:
    metadata, link-local, this host's own, loopback). allow: "host:port" entries (names,
    `*.` wildcards, addresses, CIDRs, `localhost`, port ranges, `udp:`/`any:` prefixes).
    unix: pathname unix sockets (absolute; $UID is the run's uid) and @abstract names.
    """

    default: NetworkDefault = "block"
    allow: list[str] = Field(default_factory=list)
    unix: list[str] = Field(default_factory=list)

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        from sandbox.policy.network import parse_allow

        for e in v:
            parse_allow(e)
        return v

    @field_validator("unix")
    @classmethod
    def _unix(cls, v: list[str]) -> list[str]:
        from sandbox.policy.network import check_unix

        for e in v:
            check_unix(e)
        return v


class Webhook(Model):
    url: str
    format: Literal["generic", "slack", "n8n"] = "generic"
    secretEnv: str | None = Field(default=None, description="env var holding the HMAC secret")
    secretFile: str | None = Field(default=None, description="file holding the HMAC secret")
    timeout: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s)://, got {v!r}")
        return v


class AutoApprove(Model):
    """Low-risk requests granted without a human (still audited and notified)."""

    commands: list[str] = Field(min_length=1, description="fnmatch patterns over the joined argv")
    maxPerHour: int = Field(default=10, ge=1)
    ttl: str = "5m"
    scope: Literal["command", "profile"] = "command"

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        parse_duration(v)
        return v


class EscalationPolicy(Model):
    relaxedProfile: str | None = None
    ttl: str = "5m"
    maxTtl: str = "30m"
    pendingTtl: str = "30m"
    approvers: list[str] = Field(default_factory=list, description="in addition to owners")
    webhooks: list[Webhook] = Field(default_factory=list)
    autoApprove: list[AutoApprove] = Field(default_factory=list)
    onExpiry: Literal["kill", "keep"] = Field(
        default="kill", description="processes started under a grant when the window closes"
    )

    @field_validator("ttl", "maxTtl", "pendingTtl")
    @classmethod
    def _durations(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _ttl_within_max(self) -> EscalationPolicy:
        if parse_duration(self.ttl) > parse_duration(self.maxTtl):
            raise ValueError(f"ttl {self.ttl} exceeds maxTtl {self.maxTtl}")
        return self

    @property
    def ttl_seconds(self) -> int:
        return parse_duration(self.ttl)

    @property
    def max_ttl_seconds(self) -> int:
        return parse_duration(self.maxTtl)

    @property
    def pending_ttl_seconds(self) -> int:
        return parse_duration(self.pendingTtl)


ProfileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]

# ----------------------------------------------------------------------------- credentials
MINT_PLACEHOLDERS = ("ttl", "ttl_s", "agent", "grant_id")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# variables that change how programs start or where they look: never a credential's
RESERVED_ENV = frozenset({"PATH", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS", "PS4",
                          "PROMPT_COMMAND", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
                          "PERL5LIB", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS", "TMPDIR", "HOME"})
RESERVED_ENV_PREFIXES = ("LD_", "GLASSBREAK_", "BASH_FUNC_")


class Credential(Model):
    """One named credential handed to a run (docs/credentials.md): exactly one source, how the
    run gets it, optionally a template around it.

    Sources, all the operator's (profiles that carry them must come from the trusted profile
    directories; the caller's environment is never read):
    - file: an absolute path, root's and not readable by others (e.g. under credentialsDir);
    - daemonEnv: an environment variable of the glassbreak daemon (of root, in process);
    - mint: a command glassbreak runs outside the sandbox, as the daemon, when a run under a
      grant needs the credential; {ttl} (e.g. 900s), {ttl_s} (900), {agent} and {grant_id}
      are substituted per argument; its stdout is the credential. The grant's remaining window
      is the most {ttl} can be; the result is cached per grant (never per agent beyond it).
    Delivery: `deliver: file` (default) writes it to a file in the run's private directory
    (0700, the run's user's, removed when the run or the grant's window ends) and sets `env` to
    the file's path; `deliver: env` sets `env` to the value itself.
    """

    file: str | None = Field(default=None, description="an operator-owned file (absolute path)")
    daemonEnv: str | None = Field(default=None, description="an environment variable of the "
                                  "daemon, never of the caller")
    mint: str | list[str] | None = Field(
        default=None, description="a command run as the daemon, outside the sandbox, for a "
        "grant's window: a string (split like a shell, no shell runs it) or an argv list; "
        "placeholders {ttl}, {ttl_s}, {agent}, {grant_id}")
    timeout: str = Field(default="10s", description="how long a mint command may take")
    template: str | None = Field(default=None, description="the credential's content, with "
                                 "{token} replaced by the source's value (e.g. a kubeconfig)")
    templateFile: str | None = Field(default=None, description="the same, from an "
                                     "operator-owned file")
    env: str = Field(description="the run's environment variable: the file's path "
                     "(deliver: file) or the value (deliver: env)")
    deliver: Literal["file", "env"] = "file"
    fileName: str | None = Field(default=None, description="the file's name in the run's "
                                 "credential directory (default: the credential's name)")
    description: str | None = None

    @field_validator("env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not _ENV_NAME.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        if v.upper() in RESERVED_ENV or v.upper().startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"{v} cannot carry a credential: it changes how programs start or "
                             "where they look (choose another variable)")
        return v

    @field_validator("daemonEnv")
    @classmethod
    def _daemon_env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @field_validator("file", "templateFile")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or "\0" in v):
            raise ValueError(f"{v!r}: a credential source is an absolute path (the operator's, "
                             "e.g. /etc/glassbreak/credentials/NAME)")
        return v

    @field_validator("fileName")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        if v is not None and not _FILE_NAME.match(v):
            raise ValueError(f"{v!r} is not a plain file name (letters, digits, . _ -; no /)")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        if parse_duration(v) > 300:
            raise ValueError(f"timeout {v} is longer than 5m (a run waits for its mint)")
        return v

    @field_validator("mint")
    @classmethod
    def _mint(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is None:
            return v
        argv = mint_argv(v)
        if not argv or not argv[0]:
            raise ValueError("an empty mint command")
        for a in argv:
            for name in _PLACEHOLDER.findall(a):
                if name not in MINT_PLACEHOLDERS:
                    known = ", ".join("{" + p + "}" for p in MINT_PLACEHOLDERS)
                    raise ValueError(f"unknown placeholder {{{name}}} in the mint command "
                                     f"(known: {known})")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Credential:
        given = [k for k in ("file", "daemonEnv", "mint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a credential has exactly one source: file, daemonEnv or mint"
                             + (f" (got {', '.join(given)})" if given else ""))
        if "timeout" in self.model_fields_set and self.mint is None:
            raise ValueError("timeout is for mint commands only")
        if self.template is not None and self.templateFile is not None:
            raise ValueError("template and templateFile: give one")
        if self.template is not None and "{token}" not in self.template:
            raise ValueError("template has no {token} (where the source's value goes)")
        if self.fileName is not None and self.deliver != "file":
            raise ValueError("fileName is for deliver: file only")
        return self

    @property
    def source(self) -> Literal["file", "daemonEnv", "mint"]:
        return "file" if self.file is not None else "daemonEnv" if self.daemonEnv is not None \
            else "mint"

    @property
    def timeout_seconds(self) -> int:
        return parse_duration(self.timeout)


def mint_argv(mint: str | list[str]) -> list[str]:
    """A mint command as argv: a string is split like a shell would (no shell runs it)."""
    if isinstance(mint, list):
        return list(mint)
    import shlex

    try:
        return shlex.split(mint)
    except ValueError as e:
        raise ValueError(f"cannot split the mint command like a shell: {e}") from None


def _check_credential_set(creds: dict[str, Credential]) -> None:
    """Two credentials of one profile must not set the same variable or file."""
    envs: dict[str, str] = {}
    files: dict[str, str] = {}
    for name, c in creds.items():
        if c.env in envs:
            raise ValueError(f"credentials {envs[c.env]} and {name} both set {c.env}")
        envs[c.env] = name
        if c.deliver == "file":
            f = c.fileName or name
            if f in files:
                raise ValueError(f"credentials {files[f]} and {name} both write the file {f}")
            files[f] = name




class Profile(Model):
    """One profile as written on disk (before `extends` is resolved)."""

    name: ProfileName
    description: str | None = None
    version: str | None = None
    extends: str | list[str] | None = None
    relax: bool = Field(
        default=False,
        description="this profile may loosen what it extends (explicit opt-in; used by the "
        "relaxed profiles that grants switch to)",
    )
    owners: list[str] = Field(default_factory=list)
    safeBins: dict[str, SafeBin] = Field(default_factory=dict)
    exec: ExecPolicy | None = None
    seccomp: SeccompPolicy | None = None
    filesystem: FilesystemPolicy | None = None
    escalation: EscalationPolicy | None = None
    credentials: dict[ProfileName, Credential | None] | None = Field(
        default=None, description="named credentials handed to the run (docs/credentials.md); "
        "under extends a child adds credentials, and only with relax: true replaces one of its "
        "parent's; `NAME: null` removes an inherited one")
    examples: Examples = Field(default_factory=Examples)
    network: NetworkPolicy | None = None

    @field_validator("credentials")
    @classmethod
    def _credential_set(cls, v: dict[str, Credential | None] | None
                        ) -> dict[str, Credential | None] | None:
        _check_credential_set({k: c for k, c in (v or {}).items() if c is not None})
        return v

    @property
    def parents(self) -> list[str]:
        if self.extends is None:
            return []
        return [self.extends] if isinstance(self.extends, str) else list(self.extends)


class GrantedCommand(Model):
    """A command-scope grant in force for one run: exactly this argv and binary content."""

    grant_id: str
    argv: list[str]
    binary_sha256: str | None = None


class ResolvedProfile(Model):
    """A profile with its `extends` chain merged: what the policy code consumes."""

    name: str
    description: str | None = None
    chain: list[str] = Field(default_factory=list, description="names, child first")
    sources: list[str] = Field(default_factory=list, description="files, child first")
    content_hash: str = ""
    owners: list[str] = Field(default_factory=list)
    safeBins: dict[str, SafeBin] = Field(default_factory=dict)
    exec: ExecPolicy = Field(default_factory=ExecPolicy)
    seccomp: SeccompPolicy = Field(default_factory=SeccompPolicy)
    filesystem: FilesystemPolicy = Field(default_factory=FilesystemPolicy)
    escalation: EscalationPolicy = Field(default_factory=EscalationPolicy)
    examples: Examples = Field(default_factory=Examples)
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    grantedCommands: list[GrantedCommand] = Field(
        default_factory=list,
        description="set by the runner from command-scope grants, never by profile files",
    )
    credentials: dict[str, Credential] = Field(default_factory=dict)
    credentialOrigins: dict[str, str] = Field(
        default_factory=dict,
        description="credential name -> the file that defined it; set by the loader, never "
        "by profile files (only trusted profile files may carry credential sources)",
    )

    @property
    def approvers(self) -> list[str]:
        return sorted(set(self.owners) | set(self.escalation.approvers))
