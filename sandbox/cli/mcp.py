"""`glassbreak mcp`: glassbreak as an MCP server (sandbox/mcp, docs/mcp.md). The SDK is
imported only when the command runs."""

from __future__ import annotations

import os
import sys

import click

from sandbox.errors import GlassbreakError, UsageError


@click.command()
@click.option("--agent", "-a", default=lambda: os.environ.get("GLASSBREAK_AGENT"),
              help="stdio: which of your agents ($GLASSBREAK_AGENT); only among the agents the "
              "operator binds to your user, as for `glassbreak run`. Over HTTP the token says.")
@click.option("--profile", "-p", default=lambda: os.environ.get("GLASSBREAK_PROFILE"),
              help="Default profile for runs ($GLASSBREAK_PROFILE); one of your agent's bound "
              "profiles (a tool call may name another of them).")
@click.option("--http", "http", is_flag=True,
              help="Serve streamable HTTP instead of stdio. Run it as the agent's unix user; "
              "clients send `Authorization: Bearer TOKEN`, an agent token of the operator's "
              "config bound to that user (verified by the daemon; anything else: 401).")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address.")
@click.option("--port", default=8788, show_default=True, type=int, help="HTTP: port.")
@click.option("--max-output", default=64 * 1024, show_default=True, type=click.IntRange(0),
              metavar="BYTES", help="Bytes of stdout and of stderr kept in a run's result; "
                                    "the rest is counted and said.")
def mcp(agent: str | None, profile: str | None, http: bool, host: str, port: int,
        max_output: int) -> None:
    """Serve glassbreak's tools over MCP: run, check, explain, escalation_status,
    wait_for_decision, list_profiles (and your profiles as resources). A client of the
    daemon: who you are comes from the kernel, what you may run from the operator."""
    from sandbox.cli.main import fail

    try:
        if http:
            if os.geteuid() == 0:
                raise GlassbreakError(
                    "`glassbreak mcp --http` refuses to run as root: every client's commands "
                    "would run as root", hint="run it as the agent's unix user (systemd "
                    "User=, or setpriv/sudo -u); docs/mcp.md")
            if agent:
                raise UsageError("--agent is for stdio; over HTTP each client's token names "
                                 "its agent", hint="drop --agent")
        from sandbox.mcp import client

        try:  # fail fast, with the daemon's words, before a harness sees a half-working server
            client.op({"op": "whoami", "agent": agent})
        except client.DaemonError as e:
            raise GlassbreakError(e.message, hint=e.hint) from None
        try:
            from sandbox.mcp import server
        except ImportError as e:
            raise GlassbreakError(f"the MCP SDK is not installed ({e})",
                                  hint="pip install 'mcp>=2.3,<3' (a glassbreak dependency); "
                                  "make setup") from None
    except GlassbreakError as e:
        fail(e)
    gb = server.Glassbreak(agent=None if http else agent, profile=profile, http=http,
                           max_output=max_output)
    if http:
        server.serve_http(gb, host, port)
    else:
        server.serve_stdio(gb)
    sys.exit(0)
