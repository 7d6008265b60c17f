"""The network layer: the run's egress, enforced by sandbox.run.network (cgroup socket hooks
and the run's DNS resolver; sandbox.run.layers.base has the interface)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sandbox.run.layers.base import EnforcementLayer, LayerResult, RunContext

if TYPE_CHECKING:
    from sandbox.kernel.child import ChildSpec
    from sandbox.policy.profile import ResolvedProfile
    from sandbox.run.layers.execgate import ExecGateLayer
    from sandbox.run.layers.landlock import LandlockLayer


class NetworkLayer(EnforcementLayer):
    """Egress: the cgroup socket hooks on the run's leaf and the run's DNS resolver
    (sandbox.run.network). Attached and filled before the child exists; every refused connect
    or name is one `blocked` event (layer network), one stderr line and one escalation per
    distinct destination. The stdio of the run must not be an unchecked socket."""

    name = "network"

    def __init__(self, service: Any, gate_layer: ExecGateLayer | None = None,
                 landlock_layer: LandlockLayer | None = None) -> None:
        self._svc = service
        self._gate_layer = gate_layer
        self._landlock = landlock_layer  # prepared before this one (the supervisor's order)
        self.net: Any = None

    def _procs(self, pid: int) -> list[dict[str, Any]]:
        gate = self._gate_layer.gate if self._gate_layer is not None else None
        if gate is None:
            return []
        # a fast-allowed exec's argv reaches the gate's table with its records and the
        # kernel's report: read those first (the process may be a zombie by now: no /proc)
        gate.catch_up()
        return gate.ancestry(pid)  # type: ignore[no-any-return]

    def _recent(self) -> list[dict[str, Any]]:
        gate = self._gate_layer.gate if self._gate_layer is not None else None
        return gate.recent_execs() if gate is not None else []

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        from sandbox.run.network import RunNetwork, check_stdio

        check_stdio((spec.stdin, spec.stdout, spec.stderr))
        uid = run.uid if run.uid is not None else os.getuid()
        # abstract unix names: where the run's Landlock domain scopes them (the default), the
        # scope decides (the run's own names work, every name bound outside is refused); where
        # it does not (a profile or grant names one, or no Landlock), the hooks refuse every
        # name not listed or granted
        scoped = self._landlock is not None and self._landlock.scopes_abstract
        self.net = RunNetwork(self._svc, run, run.effective.network, uid=uid,
                              procs=self._procs, recent=self._recent,
                              grants=run.destination_grants, abstract_deny=not scoped)
        self.net.start()

    def fds(self) -> list[int]:
        if self.net is None:
            return []
        return [self._svc.fileno(), self._svc.event_fd(self.net.cgid)]

    def handle(self, fd: int) -> None:
        self.net.handle()

    def tick(self) -> None:
        if self.net is not None:
            self.net.tick()

    def narrow(self, profile: ResolvedProfile) -> None:
        if self.net is not None:
            self.net.narrow(profile.network)

    def finish(self, run: RunContext, result: LayerResult) -> None:
        if self.net is not None:
            self.net.finish(result)

    def close(self) -> None:
        if self.net is not None:
            self.net.close()
