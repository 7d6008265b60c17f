"""20 concurrent sandboxed runs through ONE real `glassbreak serve --socket --no-http` daemon
(ended by pid), the real console script as client, the real kernel: every run's audit events
(by run_id) hold exactly its own 5 marker execs, none lost, none of another run, and each run's
stdout is its own. The checker itself is shown to catch a crossed and a lost event."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import is_root, load_bench, require

pytestmark = pytest.mark.kernel

RUNS = 20


@pytest.fixture(scope="module")
def conc() -> ModuleType:
    return load_bench("concurrency")


@pytest.fixture(scope="module")
def daemon(conc: ModuleType) -> Iterator[Any]:
    require(is_root(), "the daemon needs root (seccomp user-notification, eBPF, cgroups)")
    work = Path(tempfile.mkdtemp(prefix="gb-conc-"))
    dp = conc.start_daemon(work)
    try:
        yield dp
    finally:
        dp.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_concurrent_runs_keep_their_own_events(conc: ModuleType, daemon: Any) -> None:
    conc.one_run(daemon.sock, "warmup", 0)
    tag, outs, wall = conc.run_concurrent(daemon.sock, RUNS)
    problems = conc.check_isolation(tag, outs, daemon.state / "audit.jsonl")
    assert not problems, "\n".join(problems[:20])
    assert len({o.run_id for o in outs}) == RUNS
    # the audit log really holds RUNS x 5 marker execs under the right run ids
    audit = [json.loads(x) for x in (daemon.state / "audit.jsonl").read_text().splitlines()]
    marked = [e for e in audit if e["type"] == "exec" and f"gbm-{tag}-" in " ".join(e["argv"])]
    assert len(marked) == RUNS * conc.EXECS_PER_RUN
    assert wall < 30, f"{RUNS} concurrent runs took {wall:.1f} s"
    assert daemon.proc.poll() is None, "the daemon must survive the burst"


def test_checker_catches_a_crossed_and_a_lost_event(conc: ModuleType, daemon: Any,
                                                    tmp_path: Path) -> None:
    """The isolation check must be able to fail: move one exec event to another run's id and
    drop another; both are reported."""
    tag, outs, _ = conc.run_concurrent(daemon.sock, 3)
    audit = daemon.state / "audit.jsonl"
    assert not conc.check_isolation(tag, outs, audit)
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    ex = [e for e in lines if e["type"] == "exec" and e["run_id"] in {o.run_id for o in outs}]
    crossed = next(e for e in ex if e["run_id"] == outs[0].run_id and e["argv"][0] == "/bin/echo")
    crossed["run_id"] = outs[1].run_id
    lost = next(e for e in ex if e["run_id"] == outs[2].run_id and e["argv"][0] == "/bin/true")
    lines.remove(lost)
    forged = tmp_path / "audit.jsonl"
    forged.write_text("".join(json.dumps(e) + "\n" for e in lines))
    problems = conc.check_isolation(tag, outs, forged)
    assert any(f"run 0 ({outs[0].run_id})" in p for p in problems), problems
    assert any(f"run 1 ({outs[1].run_id})" in p for p in problems), problems
    assert any(f"run 2 ({outs[2].run_id})" in p for p in problems), problems
    assert any("recorded under" in p for p in problems), problems


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
