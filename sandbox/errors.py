"""The error tree of glassbreak, with the exit code each error maps to.

Exit codes (documented in README and `glassbreak --help`):
  0..124   the command's own exit code passes through
  125      the runner itself failed (bad profile, kernel feature missing, internal error)
  126      blocked by policy (the pre-check refused the command; nothing ran)
  127      command not found
  128+N    the command died of signal N (159 = SIGSYS: killed by a seccomp rule; the
           syscall is reported on stderr and in the audit log)
  2        usage error (bad command line)
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_RUNNER_FAILED = 125
EXIT_BLOCKED = 126
EXIT_NOT_FOUND = 127
EXIT_SIGNAL_BASE = 128


class GlassbreakError(Exception):
    """Base of every error a user may see. `hint` says what to do next."""

    exit_code = EXIT_RUNNER_FAILED
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"glassbreak: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {"error": self.kind, "message": self.message, "hint": self.hint,
                "exit_code": self.exit_code}


class UsageError(GlassbreakError):
    exit_code = EXIT_USAGE
    kind = "usage"


class ProfileError(GlassbreakError):
    """A profile could not be found, parsed or validated (file:line in the message)."""

    kind = "profile"


class KernelFeatureMissing(GlassbreakError):
    kind = "kernel"


class RunnerError(GlassbreakError):
    kind = "runner"


class CommandNotFound(GlassbreakError):
    exit_code = EXIT_NOT_FOUND
    kind = "not_found"


class PolicyBlocked(GlassbreakError):
    exit_code = EXIT_BLOCKED
    kind = "blocked"


class StoreError(GlassbreakError):
    """The state/grant store is unreachable or corrupt (fail closed: strict profile)."""

    kind = "store"


class EscalationError(GlassbreakError):
    """An escalation decision was refused (forged, stale, replayed, not an owner...)."""

    kind = "escalation"
    exit_code = 1


class IdentityError(GlassbreakError):
    """A caller asked for an identity or a policy it does not have (another agent, a relaxed
    profile by name, a profile file, someone else's approver name). Recorded in the audit log."""

    kind = "identity"
