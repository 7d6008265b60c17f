"""The policy decision: pure data shared by the pre-check, the exec gate and the escalation flow."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"  # escalatable
    DENY = "deny"  # never escalatable

    @property
    def rank(self) -> int:
        return {"allow": 0, "block": 1, "deny": 2}[self.value]


class Layer(StrEnum):
    PRECHECK = "pre-check"
    EXEC_GATE = "exec-gate"  # seccomp user-notification on execve/execveat
    EXEC_TRACE = "exec-trace"  # in-kernel verification at sched_process_exec
    SECCOMP = "seccomp"
    FILESYSTEM = "filesystem"  # Landlock: a read, write or execute the profile does not allow
    LANDLOCK = "landlock"  # Landlock scopes: a signal or socket outside the run, ptrace
    NETWORK = "network"  # cgroup socket hooks and glassbreak's DNS resolver


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule_id: str
    reason: str
    argv: tuple[str, ...] = ()
    binary: str | None = None  # resolved absolute path of the program, if known
    details: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def stricter(self, other: Decision) -> Decision:
        """The stricter of two decisions (deny > block > allow); ties keep self."""
        return other if other.verdict.rank > self.verdict.rank else self

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "argv": list(self.argv),
            "binary": self.binary,
        }
