"""The enforcement layers of a run, as one list the supervisor iterates.

A layer is one object with one small interface:

  prepare(run, spec)   in the parent, before the child exists: build what the kernel needs
                       (a compiled filter, a Landlock ruleset, a cgroup hook) and put the
                       child's part into the ChildSpec (filters, ruleset fd, ...)
  started(run, child)  in the parent, once the child holds its filters and before its first
                       exec is answered (the exec gate takes the seccomp listener here)
  fds() / handle(fd)   the supervisor's event loop: what to watch and who reads it
  fatal                a reason to end the run now (fail closed), or None
  narrow(profile)      the grant's window closed: judge by this (strict) profile from now on
  finish(run, result)  the child exited: drain what is still queued, fill the result
  explain_death(...)   the child died of a signal this layer caused: say which rule
  close()              always called, in reverse order, even after an error

What each layer does in the CHILD is fixed by the child's step order (sandbox.kernel.child,
STEPS): no_new_privs, then Landlock, then seccomp (always last: its filter also governs the
child's own final execve), then execve. Layers only hand the child data; they never add steps.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sandbox.events import SyscallKilled
from sandbox.policy.decision import Decision

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


@dataclass
class LayerResult:
    """What the layers found, for the run result."""

    execs: int = 0
    blocked: int = 0
    first_block: tuple[str, str, str, str | None] | None = None  # rule, reason, layer, esc id
    reason: str | None = None
    layer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


class SeccompLayer(EnforcementLayer):
    """The profile's syscall filter (compiled once per exact policy, cached by the caller),
    plus execve/execveat as user-notifications when the exec gate is on. Reports the syscall
    that killed a process (kernel log)."""

    name = "seccomp"

    def __init__(self, compile_filter: Callable[[ResolvedProfile], Any]) -> None:
        self._compile = compile_filter
        self._kmsg: Any = None

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        from sandbox.kernel.kmsg import KmsgWatcher

        filt = self._compile(run.effective)
        spec.filters = [*filt.extra, filt.bpf]
        spec.notify = filt.notify
        self._kmsg = KmsgWatcher()

    def explain_death(self, run: RunContext, pid: int, sig: int,
                      result: LayerResult) -> bool:
        if sig != signal.SIGSYS or self._kmsg is None:
            return False
        found = self._kmsg.find_seccomp_kill(pid, timeout=0.3)
        if found:
            nr, name, arch = found
            run.record(SyscallKilled(pid=pid, syscall=name, nr=nr, arch=arch, signal=sig),
                       sync=True)
            result.reason = f"killed by seccomp: syscall {name} ({nr}, {arch})"
        else:
            result.reason = "killed by seccomp (SIGSYS); the kernel did not log the syscall"
        result.layer = "seccomp"
        return True

    def close(self) -> None:
        if self._kmsg is not None:
            self._kmsg.close()
            self._kmsg = None


class ExecGateLayer(EnforcementLayer):
    """Every exec of the tree: the seccomp user-notification gate and the in-kernel exec
    verification (sandbox.run.execgate). One escalation per distinct block, one stderr line per
    distinct block."""

    name = "exec-gate"

    def __init__(self, tracer: Any | None, use_notify: bool) -> None:
        self._tracer = tracer
        self._notify = use_notify
        self.gate: Any = None
        self._watching: int | None = None

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        if self._tracer is not None:
            # watching before the child can exec: from now on every exec in the run's cgroup
            # needs the gate's expectation (enforce), or is only reported (monitor; trace: no
            # gate, judged after the fact)
            mode = "trace" if not self._notify else run.mode
            self._tracer.watch(run.cgroup.id, mode)
            self._watching = run.cgroup.id

    def started(self, run: RunContext, child: Child) -> None:
        from sandbox.run.execgate import ExecGate

        raised: dict[tuple[str, tuple[str, ...]], str | None] = {}

        def on_block(info: Any) -> str | None:
            d: Decision = info.decision
            key = (d.rule_id, tuple(info.argv or d.argv))
            if key not in raised:  # the same block again in this run (a shell retrying PATH
                raised[key] = run.on_block(info)  # entries, both layers): one request
            return raised[key]

        shown: set[tuple[str, tuple[str, ...]]] = set()

        def emit(ev: Any) -> None:
            visible = user_visible(ev)
            if getattr(ev, "type", "") == "blocked":  # one line per distinct block
                key = (ev.rule_id, tuple(ev.argv[1:]))
                visible = key not in shown
                shown.add(key)
            run.record(ev, show=visible, sync=user_visible(ev))

        self.gate = ExecGate(profile=run.effective, mode=run.mode, run_id=run.run_id,
                             listener_fd=child.listener_fd if self._notify else None,
                             tracer=self._tracer, cgroup_id=run.cgroup.id, emit=emit,
                             on_block=on_block)

    def fds(self) -> list[int]:
        return self.gate.fds() if self.gate is not None else []

    def handle(self, fd: int) -> None:
        self.gate.handle(fd)

    @property
    def fatal(self) -> str | None:
        return self.gate.fatal if self.gate is not None else None

    @property
    def lost(self) -> int:
        return int(getattr(self.gate, "lost", 0) or 0)

    def narrow(self, profile: ResolvedProfile) -> None:
        if self.gate is not None:
            self.gate.set_profile(profile)

    def finish(self, run: RunContext, result: LayerResult) -> None:
        if self.gate is None:
            return
        self.gate.drain()  # trace events not read yet count in the result
        result.execs += self.gate.stats.execs
        result.blocked += self.gate.stats.blocked
        first = getattr(self.gate.stats, "first_block", None)
        if first is not None and result.first_block is None:
            result.first_block = first
        if self._tracer is not None and self._watching is not None:
            result.extra["kernel"] = self._tracer.counters(self._watching)

    def close(self) -> None:
        try:
            if self.gate is not None:
                self.gate.close()
        finally:
            if self._watching is not None and self._tracer is not None:
                self._tracer.unwatch(self._watching)
                self._watching = None


def user_visible(ev: Any) -> bool:
    return getattr(ev, "type", "") in ("blocked", "events_lost", "syscall_killed", "degraded")
