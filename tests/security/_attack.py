"""Helpers for the attack tests: attackers compiled from tests/security/csrc, a world-readable
scratch dir (so `nobody` can run what the test put there), a daemon serving a test profile
directory, and the audit log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GLASSBREAK, is_root, require

CSRC = Path(__file__).resolve().parent / "csrc"
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def world_dir(prefix: str) -> Path:
    """A fresh directory every user can read and search (its parent, /tmp, is 1777)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    return d


def attacker(name: str, dest: Path, *flags: str) -> Path:
    """tests/security/csrc/NAME.c built statically into dest/NAME (mode 0755)."""
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc is needed to build the attackers (make setup installs it)")
    assert gcc is not None
    out = dest / name
    subprocess.run([gcc, "-O2", "-static", "-o", str(out), str(CSRC / f"{name}.c"), *flags],
                   check=True, capture_output=True)
    out.chmod(0o755)
    return out


def audit(state_dir: Path) -> list[dict[str, object]]:
    p = state_dir / "audit.jsonl"
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def blocks(events: list[dict[str, object]], layer: str | None = None,
           rule: str | None = None) -> list[dict[str, object]]:
    return [e for e in events if e["type"] == "blocked"
            and (layer is None or e["layer"] == layer)
            and (rule is None or str(e["rule_id"]).startswith(rule))]


def result_line(out: str) -> dict[str, int]:
    """The attacker's `RESULT k=v ...` line as a dict."""
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}


class Daemon:
    """`glassbreak serve --socket` as a real process (ended by pid), serving the profiles in
    `profiles` by name, with its own state dir."""

    def __init__(self, home: Path, profiles: Path) -> None:
        self.home = home
        self.state = home / "state"
        self.state.mkdir(exist_ok=True)
        self.sock = home / "gb.sock"
        env = dict(os.environ, GLASSBREAK_STATE_DIR=str(self.state),
                   GLASSBREAK_PROFILE_PATH=str(profiles))
        self.proc = subprocess.Popen([GLASSBREAK, "serve", "--socket", str(self.sock),
                                      "--no-http"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"the daemon did not start: {err}")
        assert json.loads(line)["socket"] == str(self.sock)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, profile: str, *argv: str, as_nobody: bool = True, timeout: float = 120,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin",
                   GLASSBREAK_SOCKET=str(self.sock))
        for v in ("GLASSBREAK_STATE_DIR", "GLASSBREAK_PROFILE_PATH", "GLASSBREAK_NO_DAEMON"):
            env.pop(v, None)
        prefix = NOBODY if as_nobody else ()
        return subprocess.run([*prefix, GLASSBREAK, "run", "-p", profile, "--", *argv],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd or str(self.home))

    def audit(self) -> list[dict[str, object]]:
        return audit(self.state)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def daemon_with(profiles: dict[str, str]) -> Iterator[Daemon]:
    """A daemon serving these profiles (name -> YAML text); for module-scoped fixtures."""
    require(is_root(), "the daemon needs root (seccomp user-notification, eBPF, cgroups)")
    home = world_dir("gb-attack-")
    pdir = home / "profiles"
    pdir.mkdir()
    for name, text in profiles.items():
        (pdir / f"{name}.yaml").write_text(text)
    dm = Daemon(home, pdir)
    try:
        yield dm
    finally:
        dm.stop()
        shutil.rmtree(home, ignore_errors=True)
