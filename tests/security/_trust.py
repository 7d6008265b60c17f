"""Helpers for the trust-boundary tests (issue 9): a real root daemon with an operator config,
non-root callers through `setpriv`, the audit log."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GLASSBREAK, is_root, require

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
APPROVER_UID = 64991  # no passwd entry: bound by number


def as_uid(uid: int) -> tuple[str, ...]:
    return ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    sock: Path
    state: Path
    env: dict[str, str]  # the daemon's own environment (root CLI calls reuse it)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def audit(self) -> list[dict[str, Any]]:
        p = self.state / "audit.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def client_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin", **extra)
        for k in ("GLASSBREAK_STATE_DIR", "GLASSBREAK_CONFIG", "GLASSBREAK_NO_DAEMON"):
            env.pop(k, None)
        env["GLASSBREAK_SOCKET"] = str(self.sock)
        return env


def workdir(prefix: str) -> Path:
    """A root-owned 0755 directory (nobody must reach the socket; the config check wants no
    other writer), removed when the test process ends."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    atexit.register(shutil.rmtree, d, True)
    return d


def start_daemon(d: Path, config: dict[str, Any] | None, **env_extra: str) -> Daemon:
    require(is_root(), "the daemon needs root (seccomp user-notification, eBPF, cgroups)")
    state = d / "state"
    state.mkdir(exist_ok=True)
    sock = d / "gb.sock"
    env = dict(os.environ, GLASSBREAK_STATE_DIR=str(state), PATH="/usr/local/bin:/usr/bin:/bin",
               **env_extra)
    env.pop("GLASSBREAK_NO_DAEMON", None)
    if config is not None:
        cfg = d / "config.yaml"
        cfg.write_text(json.dumps(config))
        cfg.chmod(0o644)
        env["GLASSBREAK_CONFIG"] = str(cfg)
    else:
        env.pop("GLASSBREAK_CONFIG", None)
    proc = subprocess.Popen([GLASSBREAK, "serve", "--socket", str(sock), "--no-http"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"the daemon did not start: {proc.stderr.read() if proc.stderr else ''}")
    return Daemon(proc, sock, state, env)


def gb(*args: str, env: dict[str, str], prefix: tuple[str, ...] = (), cwd: str = "/",
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, GLASSBREAK, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def last_json(stderr: str) -> dict[str, Any]:
    lines = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    assert lines, stderr
    return lines[-1]  # type: ignore[no-any-return]


def of(events: list[dict[str, Any]], type_: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == type_ and
            all(e.get(k) == v for k, v in match.items())]
