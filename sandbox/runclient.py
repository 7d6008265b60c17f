"""`glassbreak run`, in process: render events, run the supervisor, return the exit code.

(The daemon client — issue 5 — plugs in here: same behaviour, output and exit codes.)
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sandbox.errors import GlassbreakError


def run_command(argv: list[str], *, profile: str, agent: str | None, reason: str | None,
                mode: str, wait: float | None, degraded: Sequence[str], output: str) -> int:
    from sandbox.render import render_text
    from sandbox.supervisor import RunRequest, Supervisor

    def emit(ev: Any) -> None:
        if output == "json":
            line = ev.model_dump_json()
        else:
            rendered = render_text(ev)
            if rendered is None:
                return
            line = rendered
        try:
            os.write(2, (line + "\n").encode())
        except OSError:
            pass

    req = RunRequest(argv=argv, profile=profile, agent=agent, reason=reason,
                     mode=mode,  # type: ignore[arg-type]
                     wait=wait, degraded=tuple(degraded))
    # The terminal's Ctrl-C / Ctrl-\ reach the command directly (same process group); the
    # supervisor must outlive it to account for the exit and end the tree.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    # SIGTERM/SIGHUP to glassbreak end the run cleanly: the supervisor's finally kills the
    # run's cgroup (and PDEATHSIG covers a SIGKILL of glassbreak itself).
    for s in (signal.SIGTERM, signal.SIGHUP):
        old[s] = signal.signal(s, _terminate)
    try:
        res = Supervisor().run(req, emit)
    except GlassbreakError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except Terminated as e:
        print(f"glassbreak: {e}; the run's process tree was ended", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return res.exit_code


class Terminated(Exception):
    pass


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(f"glassbreak received signal {signum}")
