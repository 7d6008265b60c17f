"""A `glassbreak serve` daemon started by a benchmark (and by the tests that reuse them): its own
socket and state dir, ended by pid. Shared by bench/concurrency.py and bench/latency.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GLASSBREAK = str(Path(sys.executable).parent / "glassbreak")


@dataclass
class DaemonProc:
    """A `glassbreak serve` process started here; ended by pid (or by its netns-exec pid)."""

    proc: subprocess.Popen[str]
    sock: Path
    state: Path
    stderr_path: Path
    announced: list[dict[str, Any]] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def start_daemon(workdir: Path, *, glassbreak: str = GLASSBREAK, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None, http: tuple[str, int] | None = None,
                 timeout: float = 30) -> DaemonProc:
    """Start `[prefix...] glassbreak serve --socket workdir/gb.sock` with its own state dir and
    wait until it announces the socket (and, with `http`, the approval API)."""
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    sock = workdir / "gb.sock"
    full_env = dict(os.environ, GLASSBREAK_STATE_DIR=str(state)) if env is None else dict(env)
    full_env.setdefault("GLASSBREAK_STATE_DIR", str(state))
    cmd = [*prefix, glassbreak, "serve", "--socket", str(sock), "-o", "json"]
    cmd += ["--host", http[0], "--port", str(http[1])] if http else ["--no-http"]
    err = workdir / "daemon.stderr"
    with err.open("w") as ef:  # a file, not a pipe: a chatty daemon never blocks on it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ef, text=True, env=full_env)
    dp = DaemonProc(proc, sock, Path(full_env["GLASSBREAK_STATE_DIR"]), err)
    want = {"socket", "listening"} if http else {"socket"}
    got: set[str] = set()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            dp.announced.append(msg)
            got.update(k for k in want if k in msg)
            if got == want:
                ready.set()  # keep draining stdout so the daemon never blocks on it
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout)
    if got != want:
        dp.stop()
        raise RuntimeError(f"glassbreak serve did not start within {timeout:.0f} s "
                           f"(saw {''.join(lines)!r}); stderr: {dp.stderr_tail()}")
    if http:  # the socket thread announces first; wait until the HTTP port really answers
        _wait_http(prefix, http, timeout)
    return dp


def _wait_http(prefix: Sequence[str], http: tuple[str, int], timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    url = f"http://{http[0]}:{http[1]}/healthz"
    while time.monotonic() < deadline:
        if prefix:  # another netns: ask from inside it
            r = subprocess.run([*prefix, sys.executable, "-c",
                                f"import urllib.request as u; u.urlopen({url!r}, timeout=1)"],
                               capture_output=True)
            if r.returncode == 0:
                return
        else:
            try:
                urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 - our own 127.0.0.1
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"the approval API did not answer on {url} within {timeout:.0f} s")
