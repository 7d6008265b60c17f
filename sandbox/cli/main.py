"""The `glassbreak` command line (click). Subcommands are imported lazily: `run` pays only for
what a run needs."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys

import click

from sandbox.errors import (
    EXIT_BLOCKED,
    EXIT_NOT_FOUND,
    EXIT_RUNNER_FAILED,
    EXIT_USAGE,
    GlassbreakError,
)

EXIT_CODES_HELP = f"""\b
Exit codes:
  N        the command's own exit code passes through
  128+N    the command died of signal N (159: killed by a seccomp rule, SIGSYS)
  {EXIT_BLOCKED}      blocked by policy (pre-check); the block says how to ask for escalation
  {EXIT_RUNNER_FAILED}      glassbreak itself failed (bad profile, kernel feature missing, ...)
  {EXIT_NOT_FOUND}      command not found
  {EXIT_USAGE}        usage error
"""

LAZY_COMMANDS = {
    "profile": ("sandbox.cli.profile", "profile", "Author, validate, explain profiles."),
    "doctor": ("sandbox.cli.doctor", "doctor_command",
               "Check the kernel features glassbreak needs."),
    "escalations": ("escalation.cli", "escalations", "List, show, approve, deny escalations."),
    "grants": ("escalation.cli", "grants", "List and revoke grants."),
    "serve": ("escalation.cli", "serve", "Run the daemon / approval API."),
    "mcp": ("sandbox.cli.mcp", "mcp", "Serve glassbreak's tools over MCP (stdio or HTTP)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            mod, attr, _ = LAZY_COMMANDS[name]
            try:
                return getattr(importlib.import_module(mod), attr)  # type: ignore[no-any-return]
            except (ImportError, AttributeError) as e:
                msg = f"the `{name}` command is not available in this build ({e})"

                @click.command(name=name, help=msg, context_settings={
                    "ignore_unknown_options": True, "allow_extra_args": True})
                def _missing() -> None:
                    fail(GlassbreakError(msg, hint="reinstall glassbreak: make setup"))

                return _missing
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, (self.commands[n].get_short_help_str() if n in self.commands
                     else LAZY_COMMANDS[n][2])) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def fail(err: GlassbreakError, output: str = "text") -> None:
    if output == "json":
        click.echo(json.dumps(err.to_dict()), err=True)
    else:
        click.echo(err.render(), err=True)
    sys.exit(err.exit_code)


@click.group(cls=LazyGroup, epilog=EXIT_CODES_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="glassbreak")
def main() -> None:
    """glassbreak: run agent commands under a kernel-enforced profile, and break the glass
    (escalate to a named human) when they need more."""


OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                      show_default=True, help="json: glassbreak's own stderr is JSON lines.")


def _default_profile() -> str | None:
    return os.environ.get("GLASSBREAK_PROFILE")


def _check_profile() -> str:
    return os.environ.get("GLASSBREAK_PROFILE", "readonly")


@main.command(epilog=EXIT_CODES_HELP, context_settings={"allow_interspersed_args": False})
@click.option("--profile", "-p", default=_default_profile,
              show_default="your agent's first bound profile, else readonly",
              help="Profile name ($GLASSBREAK_PROFILE); one of your agent's bound profiles. "
              "A file path: root only (use `check` to try a file).")
@click.option("--agent", "-a", default=lambda: os.environ.get("GLASSBREAK_AGENT"),
              help="Which of your agents ($GLASSBREAK_AGENT); only among the agents the "
              "operator binds to your user (root: any). Grants are per agent.")
@click.option("--reason", "-r", help="Why the agent runs this (shown to approvers).")
@click.option("--mode", type=click.Choice(["enforce", "monitor"]), default="enforce",
              show_default=True, help="monitor: enforce nothing, record every would-be block.")
@click.option("--wait", "wait", is_flag=False, flag_value="30m", default=None,
              metavar="[DURATION]",
              help="On a block, raise the escalation and wait (default 30m) for the decision.")
@click.option("--degraded", multiple=True,
              type=click.Choice(["exec-gate", "ebpf", "landlock", "network"]),
              help="Run without this layer (explicit, recorded in the audit log).")
@OUTPUT
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(profile: str | None, agent: str | None, reason: str | None, mode: str, wait: str | None,
        degraded: tuple[str, ...], output: str, command: tuple[str, ...]) -> None:
    """Run COMMAND under a profile: glassbreak run -p k8s-readonly -- kubectl get pods."""
    from sandbox.policy.profile import parse_duration

    wait_s: float | None = None
    if wait is not None:
        try:
            wait_s = float(parse_duration(wait))
        except ValueError as e:
            fail(GlassbreakError(str(e), hint="e.g. --wait=5m"), output)
    from sandbox.run.runclient import run_command

    sys.exit(run_command(list(command), profile=profile, agent=agent, reason=reason,
                         mode=mode, wait=wait_s, degraded=degraded, output=output))


@main.command(epilog=EXIT_CODES_HELP, context_settings={"allow_interspersed_args": False})
@click.option("--profile", "-p", default=_check_profile, show_default="readonly",
              help="Profile name or path (any file: nothing runs).")
@OUTPUT
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def check(profile: str, output: str, command: tuple[str, ...]) -> None:
    """The decision and matched rule for COMMAND; nothing runs. Exit 0 allow, 126 block/deny."""
    from sandbox.policy.check import check_argv
    from sandbox.policy.loader import load_profile

    try:
        prof = load_profile(profile)
        d = check_argv(prof, list(command), cwd=os.getcwd(), env_path=os.environ.get("PATH"))
    except GlassbreakError as e:
        fail(e, output)
    if output == "json":
        click.echo(json.dumps({"profile": prof.name, "profile_hash": prof.content_hash,
                               **d.to_dict()}))
    else:
        word = {"allow": "ALLOW", "block": "BLOCK (escalatable)", "deny": "DENY (never)"}
        click.echo(f"{word[d.verdict.value]}  rule={d.rule_id}  profile={prof.name}")
        click.echo(f"  {d.reason}")
        if d.binary:
            click.echo(f"  binary: {d.binary}")
    sys.exit(0 if d.allowed else EXIT_BLOCKED)


@main.command()
@click.argument("run_id")
@OUTPUT
def trace(run_id: str, output: str) -> None:
    """Print RUN_ID's process tree with the decision taken at every exec."""
    from sandbox.cli.trace import render_trace

    try:
        text = render_trace(run_id, output=output)
    except GlassbreakError as e:
        fail(e, output)
    click.echo(text)


def entry() -> None:
    main()


if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    entry()
