"""The interface every enforcement layer of a run implements, and what layers share.

A layer is one object with one small interface:

  prepare(run, spec)   in the parent, before the child exists: build what the kernel needs
                       (a compiled filter, a Landlock ruleset, a cgroup hook) and put the
                       child's part into the ChildSpec (filters, ruleset fd, ...)
  started(run, child)  in the parent, once the child holds its filters and before its first
                       exec is answered (the exec gate takes the seccomp listener here)
  fds() / handle(fd)   the supervisor's event loop: what to watch and who reads it
  fatal                a reason to end the run now (fail closed), or None
  tick()               about once a second from the supervisor's loop (timers: grant windows)
  narrow(profile)      the grant's window closed: judge by this (strict) profile from now on
  finish(run, result)  the child exited: drain what is still queued, fill the result
  explain_death(...)   the child died of a signal this layer caused: say which rule
  close()              always called, in reverse order, even after an error

What each layer does in the CHILD is fixed by the child's step order (sandbox.kernel.child,
STEPS): no_new_privs, then Landlock, then seccomp (always last: its filter also governs the
child's own final execve), then execve. Layers only hand the child data; they never add steps.

The supervisor prepares them in list order: CredentialsLayer (when the run has credentials,
sandbox.run.credentials), LandlockLayer, SeccompLayer, ExecGateLayer, NetworkLayer (one module
each in this package). This module imports no layer and no mechanism: the mechanisms'
run sides (sandbox.run.credentials, sandbox.run.network) take RunContext and LayerResult from
here, and the layers that drive them import them, so the dependency runs one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from sandbox.kernel.cgroup import RunCgroup
    from sandbox.kernel.child import Child, ChildSpec
    from sandbox.policy.profile import ResolvedProfile

Mode = Literal["enforce", "monitor"]


@dataclass
class RunContext:
    """What a layer may know about the run it enforces."""

    run_id: str
    mode: Mode
    strict: ResolvedProfile
    effective: ResolvedProfile
    cgroup: RunCgroup
    env: dict[str, str]
    cwd: str
    record: Callable[..., None]
    # raise an escalation for a block seen by a layer; returns its id (or None)
    on_block: Callable[[Any], str | None]
    uid: int | None = None
    # the run's private credential directory (sandbox.run.credentials), once prepared: the
    # filesystem layer lets the run read it (and no other run's)
    credentials_dir: str | None = None
    argv: list[str] = field(default_factory=list)
    # the run's recent execs (the exec gate sets it), for the context of other layers' blocks
    recent_execs: Callable[[], list[dict[str, Any]]] | None = None
    agent: str | None = None
    # the agent's active destination grants for the strict profile (network layer); raises
    # when the store is unreachable (then no destination grant is honoured)
    destination_grants: Callable[[], list[Any]] | None = None
    # a root run's chmod/chown/utime mediator (sandbox.run.attrgate): made by the filesystem
    # layer (it knows what the run may write), compiled into the filter by the seccomp layer,
    # answered by the exec gate (the listener's owner)
    attr_gate: Any = None


@dataclass
class LayerResult:
    """What the layers found, for the run result."""

    execs: int = 0
    blocked: int = 0
    first_block: tuple[str, str, str, str | None] | None = None  # rule, reason, layer, esc id
    reason: str | None = None
    layer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # the top process's wait status, when it exited


class EnforcementLayer:
    """Base class: every hook is a no-op, so a layer implements only what it uses."""

    name = "layer"

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        pass

    def started(self, run: RunContext, child: Child) -> None:
        pass

    def fds(self) -> list[int]:
        return []

    def handle(self, fd: int) -> None:
        pass

    @property
    def fatal(self) -> str | None:
        return None

    def tick(self) -> None:
        pass

    def narrow(self, profile: ResolvedProfile) -> None:
        pass

    def finish(self, run: RunContext, result: LayerResult) -> None:
        pass

    def explain_death(self, run: RunContext, pid: int, sig: int,
                      result: LayerResult) -> bool:
        """The child died of `sig`: if this layer caused it, say so in `result`, return True."""
        return False

    def close(self) -> None:
        pass
