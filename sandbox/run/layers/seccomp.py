"""The seccomp layer: the run's syscall filter, and the report of a syscall that killed a
process (sandbox.run.layers.base has the interface)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.events import SyscallKilled
from sandbox.run.layers.base import EnforcementLayer, LayerResult, RunContext

if TYPE_CHECKING:
    from sandbox.kernel.child import ChildSpec
    from sandbox.policy.profile import ResolvedProfile


class SeccompLayer(EnforcementLayer):
    """The profile's syscall filter (compiled once per exact policy, cached by the caller),
    plus execve/execveat as user-notifications when the exec gate is on. Reports the syscall
    that killed a process (kernel log). What root loses in a run is here too (Landlock has no
    right for it, and it holds with `--degraded landlock`): runs as uid 0 get the root guard
    (xattr writes, setuid/setgid creation: EPERM; chmod, chown and utime go to the supervisor,
    which performs them on files the run may write: sandbox.run.attrgate; EPERM without the
    filesystem layer or the exec gate), and every run loses the capabilities in
    sandbox.kernel.child.DROPPED_CAPS (bounding, effective, permitted, inheritable, ambient)."""

    name = "seccomp"

    def __init__(self, compile_filter: Callable[[ResolvedProfile, bool, bool], Any]) -> None:
        self._compile = compile_filter
        self._kmsg: Any = None

    def prepare(self, run: RunContext, spec: ChildSpec) -> None:
        from sandbox.kernel.child import DROP_MASK
        from sandbox.kernel.kmsg import KmsgWatcher

        root = (run.uid if run.uid is not None else os.geteuid()) == 0
        filt = self._compile(run.effective, root, root and run.attr_gate is not None)
        spec.filters = [*filt.extra, filt.bpf]
        spec.notify = filt.notify
        spec.drop_caps = DROP_MASK
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
