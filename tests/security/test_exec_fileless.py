"""Exec gate vs fileless exec (memfd + execveat(AT_EMPTY_PATH), /proc/self/fd/N) and
environment injection (LD_PRELOAD, BASH_ENV): blocked, and recorded with their rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.kernel

PROFILE = """\
name: gatetest
extends: base
relax: {fileless}
owners: [sec-team]
exec:
  allow: [sh, dash, bash, env, "true", echo, touch, "/usr/bin/python3*"]
  default: block
  allowFileless: {fileless}
"""

MEMFD = """\
import os, sys
fd = os.memfd_create("payload", 0)
os.write(fd, open("/usr/bin/touch", "rb").read())
side = sys.argv[2]
if sys.argv[1] == "procfd":
    os.execv(f"/proc/self/fd/{fd}", ["touch", side])
else:
    os.execve(fd, ["touch", side], dict(os.environ))
"""


def _run(tmp_path: Path, state_dir: Path, *argv: str, fileless: bool = False,
         cwd: Path | None = None) -> tuple[object, list[dict[str, object]]]:
    prof = tmp_path / "gatetest.yaml"
    prof.write_text(PROFILE.format(fileless="true" if fileless else "false"))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir)}
    r = run_cli("run", "--profile", str(prof), "--", *argv, env=env,
                cwd=str(cwd) if cwd else None)
    p = state_dir / "audit.jsonl"
    return r, [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("how", ["procfd", "fexecve"])
def test_memfd_exec_is_blocked(how: str, tmp_path: Path, state_dir: Path) -> None:
    script = tmp_path / "memfd.py"
    script.write_text(MEMFD)
    side = tmp_path / "side-effect"
    r, events = _run(tmp_path, state_dir, "python3", str(script), how, str(side))
    assert not side.exists(), "the fileless payload ran"
    assert "Operation not permitted" in r.stderr  # type: ignore[attr-defined]
    b = [e for e in events if e["type"] == "blocked" and e["rule_id"] == "exec.fileless"]
    assert b, events
    assert b[0]["layer"] == "exec-gate" and b[0]["argv"] == ["touch", str(side)]
    assert "memfd:payload" in str(b[0]["binary"]) and b[0]["pid"]


def test_memfd_exec_allowed_when_the_profile_says_so(tmp_path: Path, state_dir: Path) -> None:
    script = tmp_path / "memfd.py"
    script.write_text(MEMFD)
    work = tmp_path / "work"  # the run writes only beneath its cwd (filesystem defaults)
    work.mkdir()
    side = work / "side-effect"
    r, events = _run(tmp_path, state_dir, "python3", str(script), "fexecve", str(side),
                     fileless=True, cwd=work)
    assert r.returncode == 0, r.stderr  # type: ignore[attr-defined]
    assert side.exists()


@pytest.mark.parametrize("var,cmd", [
    ("LD_PRELOAD", "LD_PRELOAD=/tmp/nonexistent-gb.so /bin/true"),
    ("LD_AUDIT", "LD_AUDIT=/tmp/nonexistent-gb.so /bin/true"),
    ("BASH_ENV", "BASH_ENV=/tmp/gb-bashenv bash -c true"),
    ("LD_PRELOAD", "env LD_PRELOAD=/tmp/nonexistent-gb.so touch /tmp/gb-never"),
])
def test_environment_injection_is_blocked(var: str, cmd: str, tmp_path: Path,
                                          state_dir: Path) -> None:
    r, events = _run(tmp_path, state_dir, "sh", "-c", cmd)
    assert r.returncode != 0  # type: ignore[attr-defined]
    b = [e for e in events if e["type"] == "blocked" and e["rule_id"] == f"env.injection:{var}"]
    assert b, events
    assert b[0]["layer"] == "exec-gate" and b[0]["binary"] and b[0]["argv"]
    assert not Path("/tmp/gb-never").exists()
