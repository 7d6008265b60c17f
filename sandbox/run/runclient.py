"""`glassbreak run`, in process: render events, run the supervisor, return the exit code.

(The daemon client — issue 5 — plugs in here: same behaviour, output and exit codes.)
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sandbox.errors import GlassbreakError


def make_emit(output: str, fd: int = 2) -> Callable[[Any], None]:
    """The renderer of glassbreak's own events: text lines or JSON lines, written to `fd`."""
    from sandbox.audit import event_json
    from sandbox.cli.render import render_text

    def emit(ev: Any) -> None:
        if output == "json":
            line = event_json(ev)
        else:
            rendered = render_text(ev)
            if rendered is None:
                return
            line = rendered
        try:  # argv bytes that are not UTF-8 are shown as they are
            os.write(fd, (line + "\n").encode("utf-8", "surrogateescape"))
        except OSError:
            pass

    return emit


def run_command(argv: list[str], *, profile: str | None, agent: str | None, reason: str | None,
                mode: str, wait: float | None, degraded: Sequence[str],
                output: str) -> int:
    from sandbox.run import thinclient
    code = thinclient.try_daemon({
        "argv": argv, "profile": profile, "agent": agent, "reason": reason, "mode": mode,
        "wait": None if wait is None else str(max(1, int(wait))),
        "degraded": list(degraded), "output": output})
    if code is not None:
        return code
    if os.geteuid() != 0:
        # cgroups, the eBPF exec tracer and (soon) Landlock need root; a non-root caller is
        # enforced by the daemon, which knows who it is from the kernel (SO_PEERCRED)
        err = GlassbreakError(
            f"no glassbreak daemon is listening on {thinclient.socket_path()}, and a non-root user "
            "cannot run commands in process (the run's cgroup, the eBPF exec tracer and the "
            "filesystem layer need root)",
            hint="ask an administrator to start the daemon (`sudo glassbreak serve`, or the "
            "systemd unit in deploy/), or set GLASSBREAK_SOCKET to its socket; root may run in "
            "process")
        if output == "json":
            import json

            print(json.dumps(err.to_dict()), file=sys.stderr)
        else:
            print(err.render(), file=sys.stderr)
        return err.exit_code
    from sandbox.run.supervisor import RunRequest, Supervisor

    # Everything relative is made absolute BEFORE the eBPF compile starts in its thread: bcc's
    # compile chdir()s the whole process into the kernel headers for a while, so a getcwd()
    # or a relative path during it would name the wrong directory (the run's cwd included).
    cwd = os.getcwd()
    if profile is not None:
        profile = _absolute_profile(profile, cwd)
    try:  # root in process is the operator; the same mapping as the daemon's (recorded)
        from sandbox.run.caller import authorize_run

        ident = authorize_run(os.geteuid(), agent=agent, profile=profile, cwd=cwd)
    except GlassbreakError as e:
        _refused(e, argv, agent, profile, cwd, output)
        return e.exit_code
    for var in ("GLASSBREAK_STATE_DIR", "GLASSBREAK_PROFILE_PATH", "GLASSBREAK_CONFIG"):
        if os.environ.get(var):
            os.environ[var] = ":".join(os.path.join(cwd, p) if p else p
                                       for p in os.environ[var].split(":"))
    sup = Supervisor()
    if "network" not in degraded:
        sup.prewarm_network()  # compiled in the same thread, after the exec tracer
    if "ebpf" not in degraded:
        sup.prewarm()  # compile the eBPF program while the profile loads (cold runs)
    emit = make_emit(output)
    req = RunRequest(argv=argv, profile=ident.profile, agent=ident.agent, reason=reason,
                     mode=mode,  # type: ignore[arg-type]
                     wait=wait, degraded=tuple(degraded), cwd=cwd, user=ident.user,
                     agent_source=ident.how)
    # The terminal's Ctrl-C / Ctrl-\ reach the command directly (same process group); the
    # supervisor must outlive it to account for the exit and end the tree.
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}
    # SIGTERM/SIGHUP to glassbreak end the run cleanly: the supervisor's finally kills the
    # run's cgroup (and PDEATHSIG covers a SIGKILL of glassbreak itself).
    for s in (signal.SIGTERM, signal.SIGHUP):
        old[s] = signal.signal(s, _terminate)
    try:
        res = sup.run(req, emit)
        code = res.exit_code
    except GlassbreakError as e:
        print(e.render(), file=sys.stderr)
        code = e.exit_code
    except Terminated as e:
        print(f"glassbreak: {e}; the run's process tree was ended", file=sys.stderr)
        code = 128 + signal.SIGTERM
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if sup.prewarm_running():
        # A run that ended before it needed the tracer (a pre-check block) leaves bcc's clang
        # compile running in its thread; interpreter shutdown under it crashes (SIGSEGV instead
        # of the run's exit code). Everything is written (os.write, fsync'd audit, committed
        # store): flush Python's own buffers and leave without finalizing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _refused(e: GlassbreakError, argv: list[str], agent: str | None, profile: str | None,
             cwd: str, output: str) -> None:
    """Say why, and write the refusal to the audit log (best effort: the run did not start)."""
    if output == "json":
        import json

        print(json.dumps(e.to_dict()), file=sys.stderr)
    else:
        print(e.render(), file=sys.stderr)
    try:
        from sandbox.audit import AuditLog
        from sandbox.run.caller import refusal_event

        with AuditLog() as log:
            log.write(refusal_event(e, uid=os.geteuid(), agent=agent, profile=profile,
                                    argv=argv, cwd=cwd, via="in-process"))
    except OSError as err:
        print(f"glassbreak: the refusal could not be written to the audit log: {err}",
              file=sys.stderr)


def _absolute_profile(profile: str, cwd: str) -> str:
    """A profile given as a path (as sandbox.policy.loader reads it) made absolute; names
    unchanged."""
    if os.path.isabs(profile):
        return profile
    if "/" in profile or profile.endswith((".yaml", ".yml", ".json")) or \
            os.path.exists(os.path.join(cwd, profile)):
        return os.path.join(cwd, profile)
    return profile


class Terminated(Exception):
    pass


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(f"glassbreak received signal {signum}")
