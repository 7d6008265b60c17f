"""`glassbreak escalations|grants|serve` (click). sandbox.cli.main mounts these objects."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sandbox.cli.render import argv_warnings, quote_arg, quote_argv, show_destination, visible
from sandbox.errors import EscalationError, GlassbreakError, UsageError

F = TypeVar("F", bound=Callable[..., Any])
OUTPUT = click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
                      show_default=True, help="text for people, json for machines")


def _service() -> Any:
    from escalation.service import EscalationService

    return EscalationService.from_env()


def _fail(e: GlassbreakError, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(e.to_dict()), err=True)
    else:
        click.echo(e.render(), err=True)
    sys.exit(e.exit_code)


def guarded(fn: F) -> F:
    """Every GlassbreakError becomes a clear message and its exit code, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except GlassbreakError as e:
            _fail(e, kw.get("output", "text"))
    return wrapper  # type: ignore[return-value]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _dump(obj: Any) -> Any:
    return json.loads(obj.model_dump_json())


@click.group()
def escalations() -> None:
    """List, show, approve and deny escalation requests; flush the webhook outbox."""


@escalations.command("list")
@click.option("--state", type=click.Choice(["pending", "approved", "denied", "expired"]))
@OUTPUT
@guarded
def list_cmd(state: str | None, output: str) -> None:
    recs = _service().list(state)
    if output == "json":
        click.echo(json.dumps([_dump(r) for r in recs]))
        return
    if not recs:
        click.echo("no escalations" + (f" in state {state}" if state else ""))
    for r in recs:
        cmd = quote_argv(r.argv)
        cmd = cmd if len(cmd) <= 80 else cmd[:80] + f"... (+{len(cmd) - 80} characters)"
        warn = f"  [{len(argv_warnings(r.argv))} warning(s): see show]" \
            if argv_warnings(r.argv) else ""
        dest = f"-> {show_destination(r.destination)}  " if r.destination else ""
        click.echo(f"{r.id}  {r.display_state:<16} {_when(r.created_at)}  "
                   f"agent={visible(r.agent or '-')}  profile={visible(r.profile)}  "
                   f"rule={visible(r.rule_id)}  x{r.count}  {dest}{cmd}{warn}")


@escalations.command("show")
@click.argument("esc_id")
@OUTPUT
@guarded
def show_cmd(esc_id: str, output: str) -> None:
    rec = _service().get(esc_id)
    if rec is None:
        raise GlassbreakError(f"no escalation {esc_id}", hint="see `glassbreak escalations list`")
    if output == "json":
        click.echo(json.dumps(_dump(rec)))
        return
    v = visible
    lines = [
        f"escalation {v(rec.id)}: {rec.display_state}" + (f" by {v(rec.decided_by)}"
                                                           if rec.decided_by else ""),
        f"  trigger   {v(rec.layer)} / {v(rec.rule_id)}: {v(rec.rule_reason)}",
        *([f"  dest      {show_destination(rec.destination)} (an approval grants it: scope "
             "destination)"] if rec.destination else []),
        f"  command   {quote_argv(rec.argv)}",
    ]
    lines += [f"  WARNING   {w}" for w in argv_warnings(rec.argv)]
    lines += [
        f"  cwd       {quote_arg(rec.cwd)}",
        f"  binary    {quote_arg(rec.binary or '?')} sha256={v(rec.binary_sha256 or '?')}",
        *([f"  path      {v(rec.fs_access or '?')} {quote_arg(rec.fs_path)} (an approval grants "
             "it: scope path)"] if rec.fs_path else []),
        f"  agent     {v(rec.agent or '-')} on {v(rec.host)}; reason: "
        f"{v(rec.agent_reason or '(none)', 2000)}",
        f"  profile   {v(rec.profile)} ({v(rec.profile_hash[:16])}) relaxed: "
        f"{v(rec.relaxed_profile or '-')}",
        f"  owners    {v(', '.join(rec.owners) or '(none named)')}",
        f"  seen      {rec.count}x, created {_when(rec.created_at)}, pending until "
        f"{_when(rec.expires_at)}",
        f"  grant     {v(rec.grant_id or '-')}",
        "  env       " + (v(" ".join(f"{k}={val}" for k, val in sorted(rec.env.items())), 300)
                          or "-"),
        f"  ancestry  {len(rec.ancestry)} process(es); recent execs: {len(rec.recent_execs)}",
        f"  delivery  {rec.delivery_status}",
    ]
    for d in rec.deliveries:
        lines.append(f"    {d.id} {d.event} -> {v(d.url)} [{d.format}]: {d.state} after "
                     f"{d.attempts} attempt(s)" + (f"; last error: {v(d.last_error, 300)}"
                                                   if d.last_error else "")
                     + (f"; next try {_when(d.next_at)}" if d.next_at else ""))
    lines.append("  history")
    for t in rec.history:
        lines.append(f"    {_when(t.at)} {t.kind:<9} by {v(t.by, 80)}" + (
            f": {v(t.why, 500)}" if t.why else ""))
    click.echo("\n".join(lines))


AS = click.option("--as", "as_", metavar="NAME",
                  help="root (the operator) only: decide as NAME. Anyone else is the approver "
                  "that `approvers:` binds to their unix user, or the one their token proves.")
TOKEN_FILE = click.option("--token-file", type=click.Path(dir_okay=False), metavar="PATH",
                          help="a file holding your approver token (or set "
                          "$GLASSBREAK_APPROVER_TOKEN); the same tokens the HTTP API takes")


def _token(token_file: str | None) -> str | None:
    if token_file:
        try:
            with open(token_file) as f:
                tok = f.read().strip()
        except OSError as e:
            raise GlassbreakError(f"cannot read the approver token from {token_file}: "
                                  f"{e.strerror}", hint="check the path") from None
        if not tok:
            raise GlassbreakError(f"the token file {token_file} is empty")
        return tok
    return os.environ.get("GLASSBREAK_APPROVER_TOKEN", "").strip() or None


def _decision(body: dict[str, Any]) -> dict[str, Any]:
    """Root decides in process (it reads the grant signing key); anyone else asks the daemon,
    which proves who they are from the kernel (SO_PEERCRED) and holds the key."""
    if os.geteuid() == 0:
        from escalation.decide import decide_request
        from sandbox.run.caller import username

        return decide_request(_service(), body, uid=0, user=username(0))
    from sandbox.run import thinclient

    sock = thinclient.connect()
    if sock is None:
        raise GlassbreakError(
            f"decisions by a non-root user go through the glassbreak daemon (it proves who you "
            f"are and holds the grant signing key), and none listens on "
            f"{thinclient.socket_path()}",
            hint="start it (`sudo glassbreak serve`), set GLASSBREAK_SOCKET, or decide through "
            "the HTTP API with your approver token")
    try:
        sock.sendall(json.dumps(body).encode() + b"\n")
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise GlassbreakError(f"lost the connection to the daemon: {e}") from None
    finally:
        sock.close()
    try:
        msg = json.loads(buf.splitlines()[-1])
    except (ValueError, IndexError):
        raise GlassbreakError("the daemon gave no answer",
                              hint="see the daemon's log; is it the same glassbreak version?"
                              ) from None
    if msg.get("exit_code") != 0:
        err = EscalationError(str(msg.get("error") or "refused"), hint=msg.get("hint"))
        err.exit_code = int(msg.get("exit_code") or 1)
        raise err
    return msg["result"]  # type: ignore[no-any-return]


@escalations.command("approve")
@click.argument("esc_id")
@AS
@TOKEN_FILE
@click.option("--ttl", help="grant duration (e.g. 10m); default the profile's ttl, <= maxTtl")
@click.option("--reason")
@click.option("--scope", type=click.Choice(["command", "profile", "path", "destination"]),
              help="profile: the relaxed profile for that agent (default when the profile "
                   "names one); command: only this exact argv + cwd + binary; path: the "
                   "path a filesystem denial names, for that agent's runs (its default); "
                   "destination: the destination a network block names, for that agent's "
                   "runs (its default)")
@click.option("--once", is_flag=True, help="one-shot command grant (used by one run)")
@OUTPUT
@guarded
def approve_cmd(esc_id: str, as_: str | None, token_file: str | None, ttl: str | None,
                reason: str | None, scope: str | None, once: bool, output: str) -> None:
    from sandbox.policy.profile import parse_duration

    try:
        if ttl:
            parse_duration(ttl)
    except ValueError as e:
        raise GlassbreakError(str(e)) from None
    rec = _decision({"op": "decide", "escalation_id": esc_id, "approve": True, "as": as_,
                     "token": _token(token_file), "ttl": ttl, "reason": reason,
                     "scope": scope, "once": once})
    _decided(rec, output)


@escalations.command("deny")
@click.argument("esc_id")
@AS
@TOKEN_FILE
@click.option("--reason", required=True)
@OUTPUT
@guarded
def deny_cmd(esc_id: str, as_: str | None, token_file: str | None, reason: str,
             output: str) -> None:
    _decided(_decision({"op": "decide", "escalation_id": esc_id, "approve": False, "as": as_,
                        "token": _token(token_file), "reason": reason}), output)


def _decided(rec: dict[str, Any], output: str) -> None:
    if output == "json":
        click.echo(json.dumps(rec))
    else:
        extra = f"; grant {rec['grant_id']}" if rec.get("grant_id") else ""
        state = "denied (expired)" if rec["state"] == "expired" else rec["state"]
        click.echo(f"{rec['id']}: {state} by {rec.get('decided_by')}{extra}")


@escalations.command("deliver")
@click.option("--budget", default=30.0, show_default=True, help="seconds to spend at most")
@OUTPUT
@guarded
def deliver_cmd(budget: float, output: str) -> None:
    """Send what is due in the webhook outbox (after a crash, an outage...)."""
    svc = _service()
    svc.sweep()
    done = svc.deliver(budget_s=budget)
    if output == "json":
        click.echo(json.dumps([_dump(d) for d in done]))
        return
    if not done:
        click.echo("outbox: nothing due")
    for d in done:
        click.echo(f"{d.id} ({d.escalation_id}, {d.event}): {d.state} after {d.attempts} "
                   f"attempt(s)" + (f"; {d.last_error}" if d.last_error else ""))


@click.group()
def grants() -> None:
    """List and revoke grants."""


@grants.command("list")
@click.option("--all", "all_", is_flag=True, help="include expired and revoked grants")
@OUTPUT
@guarded
def grants_list(all_: bool, output: str) -> None:
    gs = _service().list_grants(include_ended=all_)
    if output == "json":
        click.echo(json.dumps([_dump(g) | {"status": g.status()} for g in gs]))
        return
    if not gs:
        click.echo("no active grants")
    for g in gs:
        what = visible(g.relaxed_profile or "") if g.scope == "profile" else \
            f"{visible(g.fs_access or '?')} {quote_arg(g.fs_path or '')}" if g.scope == "path" \
            else show_destination(g.destination or "") if g.scope == "destination" \
            else quote_argv(g.argv or [])
        click.echo(f"{g.id}  {g.status():<8} {g.scope:<8} agent={visible(g.agent or '-')} "
                   f"profile={visible(g.profile)} -> {what}  by {visible(g.approver)} until "
                   f"{_when(g.expires_at)}  ({g.escalation_id})"
                   + ("  one-shot" + (" (used)" if g.consumed_at else "") if g.one_shot
                      else ""))


@grants.command("revoke")
@click.argument("grant_id")
@AS
@TOKEN_FILE
@click.option("--reason")
@OUTPUT
@guarded
def grants_revoke(grant_id: str, as_: str | None, token_file: str | None, reason: str | None,
                  output: str) -> None:
    g = _decision({"op": "revoke", "grant_id": grant_id, "as": as_,
                   "token": _token(token_file), "reason": reason})
    if output == "json":
        click.echo(json.dumps(g))
    else:
        click.echo(f"{g['id']}: revoked by {g.get('revoked_by')}; running sessions stop "
                   "honouring it within a second")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address of the approval HTTP API.")
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--socket", "socket_path", default=None, metavar="PATH",
              help="Serve runs on this unix socket (default $GLASSBREAK_SOCKET or "
              "/run/glassbreak/glassbreak.sock).")
@click.option("--no-socket", is_flag=True, help="Do not serve runs (approval API only).")
@click.option("--no-http", is_flag=True, help="Do not serve the approval HTTP API.")
@click.option("--decisions-from", "decisions_from", multiple=True, metavar="CIDR",
              envvar="GLASSBREAK_DECISIONS_FROM",
              help="Client networks whose requests may decide or revoke over HTTP (repeat, or "
              "comma-separate; $GLASSBREAK_DECISIONS_FROM). Default: loopback only "
              "(127.0.0.0/8, ::1). Others get 403, audited.")
@OUTPUT
@guarded
def serve(host: str, port: int, socket_path: str | None, no_socket: bool, no_http: bool,
          decisions_from: tuple[str, ...], output: str) -> None:
    """Run the daemon: warm runs on a unix socket AND the approval HTTP API with the console
    (and the webhook outbox flushed in the background). --no-socket / --no-http turn either
    off."""
    if no_socket and no_http:
        raise UsageError("--no-socket and --no-http leave nothing to serve",
                         hint="drop one of them")
    if no_socket and socket_path:
        raise UsageError("--socket and --no-socket contradict each other",
                         hint="drop one of them")
    from escalation.console.auth import LOOPBACK, parse_networks

    try:
        nets = [str(n) for n in parse_networks(decisions_from or LOOPBACK)]
    except ValueError as e:
        raise UsageError(f"--decisions-from: {e}",
                         hint="e.g. --decisions-from 10.0.0.0/8") from None
    if not nets:
        raise UsageError("--decisions-from names no network", hint="e.g. 127.0.0.1/32")
    svc = _service()
    svc.store.ping()
    _ = svc.config  # a broken GLASSBREAK_CONFIG fails here, at start-up, not at the first POST
    if not no_socket:
        import threading

        from sandbox.run.daemon import open_socket

        daemon = open_socket(socket_path)
        if no_http:
            daemon.serve_forever()
            return
        threading.Thread(target=daemon.serve_forever, daemon=True,
                         name="glassbreak-run-socket").start()
    from escalation.api import serve as run

    shown = f"[{host}]" if ":" in host else host
    msg = {"listening": f"http://{shown}:{port}", "console": f"http://{shown}:{port}/signin",
           "store": svc.store.url.split("@")[-1], "decisions_from": nets}
    click.echo(json.dumps(msg) if output == "json" else
               f"glassbreak approvals and console on http://{shown}:{port} (store "
               f"{msg['store']}; decisions from {', '.join(nets)}); sign in at "
               f"http://{shown}:{port}/signin with an approver token")
    sys.stdout.flush()
    run(svc, host=host, port=port, decisions_from=nets)
