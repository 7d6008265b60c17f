"""What approving an escalation opens, as a person should read it before saying yes.

- scope `command`: exactly this argv, cwd and binary content (one run, with one-shot);
- scope `profile`: the relaxed profile for that agent until the grant ends: shown as a plain
  unified diff of the enforced policy, strict profile against relaxed (informational fields
  such as descriptions and examples left out), both loaded from this server's trusted profile
  directories, as a runner would load them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from escalation.console.auth import NAME_RE

_INFO_KEYS = {"name", "description", "chain", "sources", "content_hash", "examples",
              "grantedCommands", "escalation", "version", "owners"}


@dataclass
class ProfileDiff:
    strict: str
    relaxed: str | None
    lines: list[str] = field(default_factory=list)   # unified diff, without the file headers
    error: str | None = None
    strict_hash_now: str | None = None
    added: int = 0
    removed: int = 0


def _policy(p: Any) -> dict[str, Any]:
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("examples", "description")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    data = p.model_dump(mode="json")
    return {k: strip(v) for k, v in data.items() if k not in _INFO_KEYS}


def flatten(data: Any, path: str = "") -> list[str]:
    """One self-describing line per enforced value (`safeBins.kubectl.allowedFlags: --wait`),
    sorted: a diff of these lines reads on its own, without context lines."""
    if isinstance(data, dict):
        if not data:
            return [f"{path}: {{}}"] if path else []
        out: list[str] = []
        for k in sorted(data):
            out += flatten(data[k], f"{path}.{k}" if path else str(k))
        return out
    if isinstance(data, list):
        if not data:
            return [f"{path}: []"]
        out = []
        for i, v in enumerate(data):
            out += flatten(v, f"{path}[{i}]") if isinstance(v, (dict, list)) else \
                [f"{path}: {v}"]
        return sorted(out)
    return [f"{path}: {data}"]


def profile_diff(strict: str, relaxed: str | None) -> ProfileDiff:
    out = ProfileDiff(strict, relaxed)
    if not relaxed:
        out.error = f"profile {strict} names no escalation.relaxedProfile: only command " \
                    "grants are possible"
        return out
    if not (NAME_RE.match(strict) and NAME_RE.match(relaxed)):
        out.error = "the request names a profile that is not a plain profile name"
        return out
    from sandbox.errors import GlassbreakError
    from sandbox.policy.loader import load_profile

    try:
        s, r = load_profile(strict), load_profile(relaxed)
    except GlassbreakError as e:
        out.error = f"cannot load the profiles here: {e.message}"
        return out
    out.strict_hash_now = s.content_hash
    a, b = flatten(_policy(s)), flatten(_policy(r))
    diff = list(difflib.unified_diff(a, b, fromfile=strict, tofile=relaxed, n=0, lineterm=""))
    out.lines = [x for x in diff[2:] if not x.startswith("@@")]
    out.added = sum(1 for x in out.lines if x.startswith("+"))
    out.removed = sum(1 for x in out.lines if x.startswith("-"))
    return out
