"""The exec-gate layer: every exec of the run's tree, judged by sandbox.run.execgate
(sandbox.run.layers.base has the interface)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox.policy.decision import Decision
from sandbox.run.layers.base import EnforcementLayer, LayerResult, RunContext

if TYPE_CHECKING:
    from sandbox.kernel.child import Child, ChildSpec
    from sandbox.policy.profile import ResolvedProfile


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
                             on_block=on_block, attrs=run.attr_gate)
        run.recent_execs = self.gate.recent_execs

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
