"""The exec gate's handling of the kernel's reports, with a stand-in tracer (no kernel): a
verified exec is recorded with the argv the gate judged; a mismatch becomes a block with what
was judged and what the kernel saw, raising an escalation when the kernel killed it; a kill the
kernel could not send, a skipped verifier run or a lost report ends the run (fail closed)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sandbox.kernel.ebpf import ExecEvent, LostEvent
from sandbox.policy.decision import Decision, Verdict
from sandbox.policy.profile import ResolvedProfile
from sandbox.run.execgate import ExecGate
from sandbox.run.execjudge import Judged

CG = 4242


class FakeTracer:
    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.key = b"k" * 16
        self.expect_map_fd = -1
        self._efd = os.eventfd(0)

    def event_fd(self, cgid: int) -> int:
        return self._efd

    def fileno(self) -> int:
        return self._efd

    def consume(self, cgid: int, check_lost: bool = False) -> list[Any]:
        out, self.queue = self.queue, []
        return out

    def counters(self, cgid: int) -> dict[str, int]:
        return {"execs": 1, "kills": 0, "lost": 0, "ns": 4000}


@pytest.fixture
def gate() -> tuple[ExecGate, FakeTracer, list[Any], list[Any]]:
    tracer = FakeTracer()
    events: list[Any] = []
    raised: list[Any] = []

    def on_block(info: Any) -> str:
        raised.append(info)
        return "esc-1"

    g = ExecGate(profile=ResolvedProfile(name="p"), mode="enforce", run_id="run_x",
                 listener_fd=None, tracer=tracer, cgroup_id=CG, emit=events.append,  # type: ignore[arg-type]
                 on_block=on_block)
    g._listener = object()  # type: ignore[assignment]  # as if the gate were on (no after-the-fact)
    return g, tracer, events, raised


def _ev(**kw: Any) -> ExecEvent:
    base = dict(pid=100, old_pid=101, filename="/usr/bin/kubectl", cgroup_id=CG, ts=0.0)
    return ExecEvent(**{**base, **kw})


def test_verified_exec_is_recorded_with_the_judged_argv(gate) -> None:  # type: ignore
    g, tracer, events, raised = gate
    d = Decision(Verdict.ALLOW, "exec.allow:kubectl", "ok", (), "/usr/bin/kubectl")
    g._pending[101] = [Judged(d, ["kubectl", "get", "pods"], "/usr/bin/kubectl")]
    tracer.queue = [_ev()]
    g._trace()
    (ex,) = [e for e in events if e.type == "exec"]
    assert ex.argv == ["kubectl", "get", "pods"] and ex.decision == "allow" and ex.pid == 100
    assert not raised and g.fatal is None


def test_argv_changed_is_a_block_with_both_argvs(gate) -> None:  # type: ignore
    g, tracer, events, raised = gate
    d = Decision(Verdict.ALLOW, "safeBins.kubectl", "ok", (), "/usr/bin/kubectl")
    g._pending[101] = [Judged(d, ["kubectl", "get", "pods"], "/usr/bin/kubectl")]
    tracer.queue = [_ev(verdict="hash", killed=True, args=b"kubectl\0delete\0pods\0",
                        arg_len=20)]
    g._trace()
    (b,) = [e for e in events if e.type == "blocked"]
    assert b.layer == "exec-trace" and b.rule_id == "exec.argv-changed" and b.enforced
    assert b.argv == ["kubectl", "delete", "pods"]
    assert "judged [kubectl get pods]" in b.reason and "copied [kubectl delete pods]" in b.reason
    assert "killed before its first instruction" in b.reason and b.escalation_id == "esc-1"
    assert raised and raised[0].layer == "exec-trace" and g.fatal is None


def test_identity_mismatch_names_both_files(gate) -> None:  # type: ignore
    g, tracer, events, raised = gate
    d = Decision(Verdict.ALLOW, "exec.allow:cat", "ok", (), "/usr/bin/cat")
    g._pending[101] = [Judged(d, ["cat"], "/usr/bin/cat")]
    tracer.queue = [_ev(verdict="identity", killed=True, seen=(os.makedev(8, 1), 7),
                        expected=(os.makedev(8, 1), 9), filename="/usr/bin/cat")]
    g._trace()
    (b,) = [e for e in events if e.type == "blocked"]
    assert b.rule_id == "exec.identity-mismatch" and "inode 7" in b.reason
    assert "inode 9" in b.reason and "/usr/bin/cat" in b.reason


def test_an_exec_nobody_judged_is_unexpected(gate) -> None:  # type: ignore
    g, tracer, events, raised = gate
    tracer.queue = [_ev(verdict="no-expectation", killed=True)]
    g._trace()
    (b,) = [e for e in events if e.type == "blocked"]
    assert b.rule_id == "exec.unexpected" and b.binary == "/usr/bin/kubectl"


@pytest.mark.parametrize("source,words", [("kill failed", "could not kill"),
                                          ("verifier skipped", "skipped the exec verifier"),
                                          ("ring buffer", "dropped")])
def test_fail_closed_reports_end_the_run(gate, source: str, words: str) -> None:  # type: ignore
    g, tracer, events, raised = gate
    evs: list[Any] = [LostEvent(1, CG, source)]
    if source == "kill failed":
        evs.insert(0, _ev(verdict="hash", kill_failed=True))
    tracer.queue = evs
    g._trace()
    assert g.fatal is not None and words in g.fatal


def test_monitor_mode_records_and_escalates_nothing(gate) -> None:  # type: ignore
    g, tracer, events, raised = gate
    g.mode = "monitor"
    tracer.queue = [_ev(verdict="hash", killed=False)]
    g._trace()
    (b,) = [e for e in events if e.type == "blocked"]
    assert not b.enforced and "not killed (monitor mode)" in b.reason and not raised
    assert g.stats.would_block == 1
