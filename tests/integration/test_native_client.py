"""The native client (.venv/bin/glassbreak, C) with no daemon listening execs the Python CLI:
every flag of `glassbreak run` and every exit code must come out exactly as the Python CLI's
own (issue 8: the fallback must lose nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GLASSBREAK, is_root, require

PY_CLI = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'glassbreak'; from sandbox.cli.entry import main; main()"]

# (flags and command after `run`, the exit code both must give)
CASES: list[tuple[list[str], int]] = [
    (["-p", "readonly", "--", "true"], 0),
    (["--profile=readonly", "--", "false"], 1),
    (["--profile", "readonly", "-o", "json", "--", "sh", "-c", "exit 7"], 7),
    (["-p", "readonly", "--output=json", "--", "true"], 0),
    (["-p", "readonly", "--mode", "monitor", "--", "rm", "-f", "/nonexistent/gb-x"], 0),
    (["-p", "readonly", "--mode=enforce", "--", "rm", "-f", "/nonexistent/gb-x"], 126),
    (["-p", "readonly", "-a", "agent-x", "-r", "a reason", "--", "true"], 0),
    (["-p", "readonly", "--agent=agent-x", "--reason=why", "--", "true"], 0),
    (["-p", "readonly", "--degraded", "ebpf", "--", "true"], 0),
    (["-p", "readonly", "--degraded=exec-gate", "--", "true"], 0),
    (["-p", "readonly", "--degraded", "landlock", "--", "true"], 0),
    (["-p", "readonly", "--wait=1s", "--", "rm", "-f", "/nonexistent/gb-x"], 126),
    (["-p", "no-such-profile", "--", "true"], 125),
    (["-p", "readonly", "--bogus", "--", "true"], 2),
    (["-p", "readonly", "--mode", "sideways", "--", "true"], 2),
    (["-p", "readonly", "--", "no-such-command-gb"], 127),
    (["-p", "readonly"], 2),
    (["-p", "readonly", "--", "sh", "-c", "kill -TERM $$"], 143),
]


def _norm(text: str) -> str:
    """Run/escalation ids, timings and pids differ between two runs; the rest must not."""
    import re

    text = re.sub(r"\b(run_|esc-|gr-|dlv-)[0-9a-f]{8,}", r"\1ID", text)
    text = re.sub(r"\"(ts|duration_ms|pid|expires_at)\": ?[0-9.e+-]+", r'"\1": N', text)
    return re.sub(r"\b\d+(\.\d+)? ?(ms|s)\b", "N", text)


@pytest.mark.parametrize("args,code", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_fallback_keeps_every_flag_and_exit_code(args: list[str], code: int,
                                                 tmp_path: Path) -> None:
    require(is_root(), "runs in process need root")
    env = dict(os.environ, GLASSBREAK_SOCKET=str(tmp_path / "absent.sock"),
               GLASSBREAK_STATE_DIR=str(tmp_path / "state"), PATH="/usr/bin:/bin")
    env.pop("GLASSBREAK_NO_DAEMON", None)
    native = subprocess.run([GLASSBREAK, "run", *args], capture_output=True, text=True,
                            timeout=60, env=env)
    python = subprocess.run([*PY_CLI, "run", *args], capture_output=True, text=True, timeout=60,
                            env=env)
    assert native.returncode == code, native.stderr
    assert python.returncode == code, python.stderr
    assert native.stdout == python.stdout
    assert _norm(native.stderr) == _norm(python.stderr)
    if "json" in " ".join(args) and code not in (2,):
        last = json.loads(native.stderr.strip().splitlines()[-1])
        assert last["exit_code"] == code
