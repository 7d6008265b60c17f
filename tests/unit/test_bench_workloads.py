"""The real-workload suite's pure parts (bench/workloads.py): a sandboxed run that differs from
bare or records a block is a FALSE BLOCK, never a PASS; exec events are sorted by how they were
decided; glassbreak's JSON events are told apart from the command's own stderr."""

from __future__ import annotations

import json
from types import ModuleType

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def wl() -> ModuleType:
    return load_bench("workloads")


BLOCK = {"type": "blocked", "layer": "exec-gate", "verdict": "deny",
         "rule_id": "exec.argv-too-large", "reason": "argv/envp too large",
         "argv": ["echo", *map(str, range(10))]}


def _line(ev: dict[str, object]) -> str:
    return json.dumps({"ts": 1.0, **ev})


def test_split_stderr_keeps_the_commands_own_lines(wl: ModuleType) -> None:
    text = ("xargs: echo: Operation not permitted\n" + _line(BLOCK) + "\n"
            '{"not": "an event"}\n' + _line({"type": "run_result", "execs": 5}) + "\n")
    own, events = wl.split_stderr(text)
    assert own == 'xargs: echo: Operation not permitted\n{"not": "an event"}\n'
    assert [e["type"] for e in events] == ["blocked", "run_result"]
    # the event written while the command was half-way through a line of its own
    own, events = wl.split_stderr("xargs: " + _line(BLOCK) + "\necho: Operation not permitted\n")
    assert [e["type"] for e in events] == ["blocked"]
    assert own == "xargs: echo: Operation not permitted\n"


def test_judge_and_verdict(wl: ModuleType) -> None:
    ref = wl.Outcome(0.1, 0, "2\n", "")
    assert wl.judge(ref, wl.Outcome(0.2, 0, "2\n", "")) == []
    blocked = wl.Outcome(0.05, 0, "0\n", "xargs: echo: Operation not permitted\n", [BLOCK])
    problems = wl.judge(ref, blocked)
    assert problems[0].startswith("FALSE BLOCK [exec-gate] deny rule=exec.argv-too-large")
    assert "echo 0 1 2 3 4 ... (11 args)" in problems[0]
    assert any("output differs" in p for p in problems)
    assert wl.judge(ref, wl.Outcome(0.1, 1, "2\n", "boom\n")) == [
        "exit code 1, bare 0", "stderr: boom"]
    # a blocked run is fast: never a PASS
    assert wl.verdict("x", 0.3, 1.05, problems)["status"] == "FALSE BLOCK"
    assert wl.verdict("x", 1.04, 1.05, [])["status"] == "PASS"
    assert wl.verdict("x", 1.06, 1.05, [])["status"] == "MISS"
    assert wl.verdict("x", None, 1.05, [], "no daemon")["status"] == "n/a"


def test_pytest_durations_are_normalized(wl: ModuleType) -> None:
    assert wl.strip_durations("192 passed, 1 skipped in 1.49s\n") == \
        wl.strip_durations("192 passed, 1 skipped in 12.01s\n")
    assert wl.strip_durations("1 failed in 1.49s") != wl.strip_durations("1 passed in 1.49s")


def test_exec_profile_sorts_execs_by_how_they_were_decided(wl: ModuleType) -> None:
    def ev(binary: str, layer: str, rule: str, decision: str = "allow") -> dict[str, str]:
        return {"type": "exec", "binary": binary, "layer": layer, "rule_id": rule,
                "decision": decision}

    events = [ev("/usr/bin/echo", "exec-gate", "exec.allow:echo"),
              ev("/usr/bin/as", "exec-trace", "exec.fast-allow"),
              ev("/usr/bin/git", "exec-trace", "safeBins.git"),
              ev("/usr/bin/git", "exec-trace", "safeBins.git"),
              ev("?", "exec-gate", "exec.argv-too-large", "deny"),
              {"type": "run_result"}]
    p = wl.exec_profile(events)
    assert (p["execs"], p["fast"], p["held"], p["refused"]) == (5, 2, 2, 1)
    assert p["by_binary"]["held"] == {"/usr/bin/git": 2}


def test_paired_ratios_and_render_of_an_na_workload(wl: ModuleType) -> None:
    assert wl.paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    text = wl.render({"workloads": {"pytest": {"status": "n/a", "profile": "python-dev",
                                               "reason": "sdist missing"}}, "notes": ["n"]})
    assert "pytest" in text and "n/a: sdist missing" in text and "note: n" in text
