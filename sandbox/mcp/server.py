"""The MCP tools and resources of `glassbreak mcp`, on the official `mcp` SDK (MCPServer).
Why this module is long: the MCP surface in one place: the structured results the tools return, the
tools and resources (build), one run's stream (_Run) and the HTTP token check all speak the SDK's
types, and only this module imports the SDK (kept out of `glassbreak run`).

Every tool is a thin client of the daemon (sandbox.mcp.client): the daemon says who the caller
is from the kernel (SO_PEERCRED: this process's uid) and which agent and profiles that is
(the operator's bindings). The agent is fixed per server (stdio: `--agent`, as for the CLI)
or per HTTP request (the agent whose token the daemon verified); an MCP client only ever
names a profile, which the daemon accepts only among that agent's bound profiles.

This module imports the SDK (~0.7 s): only `glassbreak mcp` loads it, never `glassbreak run`.
"""

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import BaseModel, Field

from sandbox.mcp import client
from sandbox.mcp.capture import Capture

DEFAULT_MAX_OUTPUT = 64 * 1024  # bytes kept per stream in a result
STREAM_BUDGET = 1024 * 1024  # bytes of output streamed as progress notifications per run
WAIT_SLICE = 2.0  # seconds per daemon wait while wait_for_decision reports progress
INSTRUCTIONS = """\
glassbreak runs your commands in a kernel-enforced sandbox under the profiles the operator
bound to your agent. `run` a command; if the result says decision "block", the block names the
rule and an escalation id: call `wait_for_decision` with that id (an approver decides; you
cannot), then run the same command again. `check`/`explain` say what a command would get
without running it. Your profiles are listed by `list_profiles` and as resources."""


# -- structured results ---------------------------------------------------------------------
class Block(BaseModel):
    layer: str = Field(description="which layer blocked: pre-check, exec-gate, seccomp, ebpf")
    verdict: str = Field(description="block (an approver can grant it) or deny (never)")
    rule_id: str
    reason: str
    argv: list[str] = Field(description="the exact command that was blocked (may be a "
                            "nested exec of your command)")
    binary: str | None = None
    profile: str
    escalation_id: str | None = Field(default=None, description="the escalation raised for "
                                      "an approver; null for a deny")
    how_to_wait: str | None = None


class RunResult(BaseModel):
    run_id: str | None = None
    decision: Literal["allow", "block", "deny", "error"]
    exit_code: int = Field(description="the command's own code; 126 blocked by policy; 125 "
                           "glassbreak failed; 127 not found; 128+N killed by signal N")
    signal: int | None = None
    stdout: str
    stderr: str
    stdout_bytes: int = Field(description="bytes the command wrote (all of them, kept or not)")
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    block: Block | None = None
    ended: Literal["timeout"] | None = Field(default=None, description="timeout: the run "
                                             "outlived its timeout and its process tree was "
                                             "ended")
    reason: str | None = Field(default=None, description="why it ended this way, when known")
    hint: str | None = None
    notes: list[str] = Field(default_factory=list, description="glassbreak's other messages "
                             "(a grant used, a layer degraded, ...)")
    duration_ms: float | None = None


class CheckResult(BaseModel):
    agent: str | None
    profile: str
    profile_hash: str
    verdict: Literal["allow", "block", "deny", "error"]
    allowed: bool
    rule_id: str | None
    reason: str
    argv: list[str]
    binary: str | None = None
    hint: str | None = None
    steps: list[str] | None = Field(default=None, description="explain: how the decision "
                                    "was reached, step by step")


class ProfileInfo(BaseModel):
    name: str
    description: str = ""
    default: bool = False
    uri: str


class Profiles(BaseModel):
    agent: str | None
    uid: int
    user: str | None
    any_profile: bool = Field(description="true without agent bindings: any non-relaxed "
                              "profile by name")
    profiles: list[ProfileInfo]


class GrantInfo(BaseModel):
    id: str
    scope: str
    status: str
    expires_at: float
    one_shot: bool = False
    relaxed_profile: str | None = None


class EscalationStatus(BaseModel):
    id: str
    state: Literal["pending", "approved", "denied", "expired"]
    display_state: str
    agent: str | None = None
    profile: str
    owners: list[str] = Field(description="who may approve it")
    layer: str
    rule_id: str
    rule_reason: str
    argv: list[str]
    cwd: str
    created_at: float
    expires_at: float = Field(description="when a pending request expires (denied)")
    decided_by: str | None = None
    decision_reason: str | None = None
    grant: GrantInfo | None = None
    waited_s: float | None = None
    next_step: str


# -- the server -------------------------------------------------------------------------------
Argv = Annotated[list[str], Field(min_length=1, description="the command and its arguments, "
                                  "one string each (no shell parsing): [\"ls\", \"-la\"]")]
Cwd = Annotated[str | None, Field(description="directory to run in (absolute, or relative to "
                                  "the server's); default the server's")]
ProfileArg = Annotated[str | None, Field(description="one of your bound profiles "
                                         "(list_profiles); default your agent's first")]


class Glassbreak:
    """The state of one server: the agent (stdio) or how to find it (HTTP), output bounds."""

    def __init__(self, *, agent: str | None, profile: str | None, http: bool,
                 max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self.agent, self.profile, self.http, self.max_output = agent, profile, http, max_output
        self.base = os.getcwd()

    def who(self) -> str | None:
        """The agent of this request: the server's own (stdio), or the verified token's."""
        if not self.http:
            return self.agent
        tok = get_access_token()
        if tok is None:  # never without the auth middleware; fail closed all the same
            raise ToolError("no verified agent token on this request")
        return tok.client_id

    def cwd(self, cwd: str | None) -> str:
        return os.path.normpath(os.path.join(self.base, cwd)) if cwd else self.base

    async def op(self, body: dict[str, Any], *, cwd: str | None = None,
                 err: Callable[[str], Exception] = ToolError) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            fd = client.open_dir(cwd) if cwd is not None else None
            try:
                return client.op(body, cwd_fd=fd)
            finally:
                if fd is not None:
                    os.close(fd)

        try:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except client.DaemonError as e:
            raise err(e.render()) from None
        except OSError as e:
            raise err(f"cannot use directory {cwd}: {e.strerror}") from None

    # -- run ------------------------------------------------------------------------------------
    async def run(self, ctx: Context, argv: list[str], cwd: str | None, reason: str | None,
                  timeout: float, profile: str | None) -> RunResult:
        where = self.cwd(cwd)
        body = {"argv": argv, "profile": profile or self.profile, "agent": self.who(),
                "reason": reason, "mode": "enforce", "wait": None, "degraded": [],
                "output": "json", "cwd": where, "env": dict(os.environ)}
        fds: list[int] = []
        try:
            dirfd = client.open_dir(where)
            fds.append(dirfd)
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            fds.append(null)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            fds += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds += [err_r, err_w]
            for r in (out_r, err_r):  # our ends only: the command's stay blocking
                os.set_blocking(r, False)
            sock = client.start_run(body, stdin=null, stdout=out_w, stderr=err_w, cwd_fd=dirfd)
        except OSError as e:
            _close(fds)
            raise ToolError(f"cannot run in {where}: {e.strerror}") from None
        except client.DaemonError as e:
            _close(fds)
            raise ToolError(e.render()) from None
        _close([dirfd, null, out_w, err_w])  # the daemon holds its own copies now
        sock.setblocking(False)
        try:
            return await _Run(self, ctx, argv, sock, out_r, err_r).wait(timeout)
        finally:
            sock.close()
            _close([out_r, err_r])

    # -- escalations ----------------------------------------------------------------------------
    async def escalation(self, esc_id: str, wait: float) -> EscalationStatus:
        res = await self.op({"op": "escalation", "escalation_id": esc_id,
                             "agent": self.who(), "wait": wait or None})
        return _status(res)


class _Run:
    """One run in flight: drains the command's pipes (bounded capture, streamed as progress),
    reads glassbreak's events on the daemon connection, ends the run on timeout or when the
    client cancels the request (a signal line, then the connection closes: the daemon kills
    the run's cgroup)."""

    def __init__(self, gb: Glassbreak, ctx: Context, argv: list[str], sock: Any, out_r: int,
                 err_r: int) -> None:
        self.gb, self.ctx, self.argv, self.sock = gb, ctx, argv, sock
        self.pipes = {out_r: Capture("stdout", gb.max_output),
                      err_r: Capture("stderr", gb.max_output)}
        self.open_pipes = len(self.pipes)
        self.drained = anyio.Event()
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self.streamed = 0
        self.stream_note = False

    async def wait(self, timeout: float) -> RunResult:
        ended = None
        try:
            async with anyio.create_task_group() as tg:
                for fd in self.pipes:
                    tg.start_soon(self._drain, fd)
                with anyio.move_on_after(timeout) as scope:
                    await self._read_daemon()
                if scope.cancelled_caught:
                    ended = "timeout"
                    self._signal(signal.SIGTERM)  # the daemon kills the run's cgroup
                    with anyio.move_on_after(15):
                        await self._read_daemon()
                with anyio.move_on_after(5):  # the daemon closes its ends of the pipes last
                    await self.drained.wait()
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            # the client cancelled the request: end the run's tree (the signal line; the
            # connection then closes, and the daemon kills the run's cgroup either way)
            with anyio.CancelScope(shield=True):
                self._signal(signal.SIGTERM)
                print("glassbreak mcp: a run was cancelled by the client; its process tree "
                      f"was ended: {json.dumps(self.argv)}", file=sys.stderr, flush=True)
            raise
        return self._result(ended)

    def _signal(self, sig: int) -> None:
        try:
            self.sock.send(client.signal_line(sig))
        except OSError:
            pass

    async def _drain(self, fd: int) -> None:
        cap = self.pipes[fd]
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    await anyio.wait_readable(fd)
                    continue
                if not data:
                    return
                await self._stream(cap.name, cap.add(data), len(data))
        finally:
            self.open_pipes -= 1
            if self.open_pipes == 0:
                self.drained.set()

    async def _stream(self, name: str, text: str, n: int) -> None:
        if self.streamed >= STREAM_BUDGET:
            if not self.stream_note:
                self.stream_note = True
                await self.ctx.report_progress(self.streamed + 1, None,
                                               f"[glassbreak: more than {STREAM_BUDGET} bytes of "
                                               "output; the rest is not streamed]")
            return
        self.streamed += n
        if text:
            await self.ctx.report_progress(self.streamed, None, f"[{name}] {text}")

    async def _read_daemon(self) -> None:
        while self.final is None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
                continue
            except OSError:
                data = b""
            if not data:
                if self.final is None:
                    self.errors.append({"message": "the daemon closed the connection without "
                                        "a result (it died?); the run was ended",
                                        "hint": "see the daemon's log", "exit_code": 125})
                    self.final = {"exit_code": 125}
                return
            self.buf += data
            while b"\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\n")
                self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if isinstance(msg.get("event"), dict):
            self.events.append(msg["event"])
        elif isinstance(msg.get("error"), dict):
            self.errors.append(msg["error"])
        elif isinstance(msg.get("exit_code"), int):
            self.final = msg
            if msg.get("error"):  # the daemon refused the request itself
                self.errors.append({"message": msg["error"], "hint": msg.get("hint"),
                                    "exit_code": msg["exit_code"]})

    def _result(self, ended: str | None) -> RunResult:
        out, err = self.pipes.values()
        final = self.final or {"exit_code": 128 + signal.SIGTERM}
        code = int(final["exit_code"])
        exited = next((e for e in reversed(self.events) if e.get("type") == "run_result"), None)
        if exited is None and self.errors and ended is None:
            # refused before anything ran (another agent's profile, a bad cwd...): an error
            e = self.errors[-1]
            raise ToolError(f"refused (exit {code}): {e.get('message')}"
                            + (f" (hint: {e['hint']})" if e.get("hint") else ""))
        blocked = next((e for e in self.events if e.get("type") == "blocked"), None)
        notes = [_note(e) for e in self.events
                 if e.get("type") not in ("run_result", "blocked", "exec")]
        res = RunResult(
            run_id=(exited or {}).get("run_id"), decision="error", exit_code=code,
            stdout=out.text(), stderr=err.text(), stdout_bytes=out.total,
            stderr_bytes=err.total, stdout_truncated=out.truncated,
            stderr_truncated=err.truncated, ended=ended,  # type: ignore[arg-type]
            notes=[n for n in notes if n])
        if exited is not None:
            res.decision = exited.get("decision") or "error"
            res.signal = exited.get("signal")
            res.reason, res.hint = exited.get("reason"), exited.get("hint")
            res.duration_ms = exited.get("duration_ms")
        if self.errors:
            e = self.errors[-1]
            res.decision = "error"
            res.reason, res.hint = e.get("message"), e.get("hint")
        if blocked is not None:
            esc = blocked.get("escalation_id")
            res.block = Block(
                layer=blocked.get("layer", "?"), verdict=blocked.get("verdict", "block"),
                rule_id=blocked.get("rule_id", "?"), reason=blocked.get("reason", ""),
                argv=list(blocked.get("argv") or []), binary=blocked.get("binary"),
                profile=blocked.get("profile", "?"), escalation_id=esc,
                how_to_wait=(f"escalation {esc} waits for an approver (you cannot decide it): "
                             f"call wait_for_decision(escalation_id={esc!r}), and once it is "
                             "approved run the same command again" if esc else
                             "this rule is never escalatable (deny); choose another command"))
            if res.decision == "allow":
                res.decision = "block"
        if ended == "timeout":
            res.reason = "the run outlived its timeout; its process tree was ended"
        elif final.get("ended_by"):
            res.reason = f"ended by signal {final['ended_by']}; the run's process tree was ended"
        return res


def _note(ev: dict[str, Any]) -> str:
    t = ev.get("type")
    if t == "degraded":
        return f"degraded {ev.get('what')}: {ev.get('why')}"
    if t == "grant_used":
        until = time.strftime("%H:%M:%S", time.localtime(ev.get("expires_at") or 0))
        return (f"grant {ev.get('grant_id')} by {ev.get('approver')} used: profile "
                f"{ev.get('relaxed_profile')} until {until}")
    if t == "grant_ended":
        return f"grant {ev.get('grant_id')} {ev.get('why')}; processes started under it ended"
    if t == "grant_rejected":
        return f"grant {ev.get('grant_id')} not honoured: {ev.get('why')}"
    if t == "syscall_killed":
        return f"pid {ev.get('pid')} killed by seccomp: syscall {ev.get('syscall')}"
    if t == "events_lost":
        return f"events lost ({ev.get('source')}): {ev.get('action')}"
    return json.dumps(ev)


def _close(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _status(res: dict[str, Any], waited: float | None = None) -> EscalationStatus:
    state = res.get("state", "pending")
    esc = res.get("id", "?")
    if state == "approved":
        nxt = "approved: run the same command again (the grant applies to your new runs)"
    elif state == "pending":
        nxt = (f"pending: an approver ({', '.join(res.get('owners') or []) or 'none named'}) "
               f"must decide; call wait_for_decision(escalation_id={esc!r}) to wait")
    elif state == "denied":
        nxt = "denied: do not retry this command; " + (res.get("decision_reason") or "")
    else:
        nxt = "expired: nobody decided in time (counts as denied); run it again to ask anew"
    grant = res.get("grant")
    return EscalationStatus(
        id=esc, state=state, display_state=res.get("display_state", state),
        agent=res.get("agent"), profile=res.get("profile", "?"), owners=res.get("owners") or [],
        layer=res.get("layer", "?"), rule_id=res.get("rule_id", "?"),
        rule_reason=res.get("rule_reason", ""), argv=res.get("argv") or [],
        cwd=res.get("cwd", ""), created_at=res.get("created_at", 0.0),
        expires_at=res.get("expires_at", 0.0), decided_by=res.get("decided_by"),
        decision_reason=res.get("decision_reason"),
        grant=GrantInfo(**grant) if isinstance(grant, dict) else None, waited_s=waited,
        next_step=nxt)


def _check(res: dict[str, Any]) -> CheckResult:
    verdict = res.get("verdict", "error")
    return CheckResult(agent=res.get("agent"), profile=res.get("profile", "?"),
                       profile_hash=res.get("profile_hash", ""), verdict=verdict,
                       allowed=verdict == "allow", rule_id=res.get("rule_id"),
                       reason=res.get("reason", ""), argv=res.get("argv") or [],
                       binary=res.get("binary"), hint=res.get("hint"), steps=res.get("steps"))


def build(gb: Glassbreak) -> MCPServer:
    """The MCP server: tools and resources, all answered by the daemon for gb's agent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("glassbreak")
    except PackageNotFoundError:
        ver = "0"
    server = MCPServer("glassbreak", title="glassbreak sandbox", version=ver,
                       instructions=INSTRUCTIONS, log_level="WARNING", **_auth(gb))

    @server.tool(title="Run a command in the sandbox")
    async def run(ctx: Context, argv: Argv, cwd: Cwd = None,
                  reason: Annotated[str | None, Field(description="why you run it (shown to "
                                                      "approvers if it is blocked)")] = None,
                  timeout: Annotated[float, Field(gt=0, le=86400, description="seconds; then "
                                                  "the run's process tree is ended")] = 600,
                  profile: ProfileArg = None) -> RunResult:
        """Run a command under your agent's profile, with every exec of its process tree
        checked in the kernel. Returns the exit code, stdout and stderr (bounded; truncation
        is said), the decision and, when blocked, the layer, rule, reason and the escalation
        id to wait on. Output is streamed as progress notifications while it runs;
        cancelling the request ends the run's processes."""
        return await gb.run(ctx, argv, cwd, reason, timeout, profile)

    @server.tool(title="Check a command (nothing runs)")
    async def check(argv: Argv, cwd: Cwd = None, profile: ProfileArg = None) -> CheckResult:
        """The decision (allow / block / deny), rule and reason your profile gives this
        command's top-level exec; nothing runs."""
        return _check(await gb.op({"op": "check", "argv": argv, "agent": gb.who(),
                                   "profile": profile or gb.profile,
                                   "path": os.environ.get("PATH")}, cwd=gb.cwd(cwd)))

    @server.tool(title="Explain a decision (nothing runs)")
    async def explain(argv: Argv, cwd: Cwd = None, profile: ProfileArg = None) -> CheckResult:
        """Like check, with the steps that led to the decision (which rule matched, how the
        arguments were read); nothing runs."""
        return _check(await gb.op({"op": "check", "argv": argv, "agent": gb.who(),
                                   "profile": profile or gb.profile, "explain": True,
                                   "path": os.environ.get("PATH")}, cwd=gb.cwd(cwd)))

    @server.tool(title="Escalation status")
    async def escalation_status(escalation_id: str) -> EscalationStatus:
        """The state of one of your escalations (pending, approved, denied, expired), who
        may approve it, who decided and the grant's window."""
        return await gb.escalation(escalation_id, 0)

    @server.tool(title="Wait for an approver's decision")
    async def wait_for_decision(
            ctx: Context, escalation_id: str,
            timeout: Annotated[float, Field(ge=0, le=86400, description="seconds to wait at "
                                            "most")] = 300) -> EscalationStatus:
        """Wait until an approver decides one of your escalations (or timeout seconds pass;
        then it is returned still pending). Reports progress while it waits. Once approved,
        run the same command again."""
        start = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - start)
            st = await gb.escalation(escalation_id, max(0.0, min(WAIT_SLICE, left)))
            waited = round(time.monotonic() - start, 3)
            if st.state != "pending" or left <= WAIT_SLICE:
                st.waited_s = waited
                return st
            await ctx.report_progress(waited, timeout, f"escalation {escalation_id} is still "
                                      f"pending after {waited:.0f} s (approvers: "
                                      f"{', '.join(st.owners) or 'none named'})")

    @server.tool(title="Your profiles")
    async def list_profiles() -> Profiles:
        """Your agent and the profiles you may ask for (the first is the default)."""
        return await _profiles(gb, ToolError)

    @server.resource("glassbreak://profiles", name="profiles", mime_type="application/json",
                     description="your agent and the profiles you may ask for")
    async def profiles_resource() -> str:
        return (await _profiles(gb, ResourceError)).model_dump_json(indent=2)

    @server.resource("glassbreak://profiles/{name}", name="profile",
                     mime_type="application/json",
                     description="one of your bound profiles, merged (what it enforces)")
    async def profile_resource(name: str) -> str:
        res = await gb.op({"op": "profile", "profile": name, "agent": gb.who()},
                          err=ResourceError)
        return json.dumps(res["profile"], indent=2)

    return server


async def _profiles(gb: Glassbreak, err: Callable[[str], Exception]) -> Profiles:
    agent = gb.who()
    res = await gb.op({"op": "whoami", "agent": agent}, err=err)
    name = agent or res.get("default_agent")
    mine = (res.get("agents") or {}).get(name) or {"profiles": [], "any_profile": False}
    return Profiles(agent=name, uid=res["uid"], user=res.get("user"),
                    any_profile=bool(mine.get("any_profile")),
                    profiles=[ProfileInfo(**p, uri=f"glassbreak://profiles/{p['name']}")
                              for p in mine["profiles"]])


# -- HTTP: agent tokens, verified by the daemon ---------------------------------------------------
class DaemonTokenVerifier:
    """A bearer token is an agent's when the daemon says so: it matches `agents: NAME:
    tokenSha256|tokenFile|tokenEnv|tokens` in the operator's config AND that agent is bound to
    this server's unix user (SO_PEERCRED). Verified on every HTTP request (an edited config
    takes effect at once); the SDK answers 401 to anything else."""

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            res = await anyio.to_thread.run_sync(client.op, {"op": "agent_token",
                                                            "token": token})
        except client.DaemonError as e:
            print(f"glassbreak mcp: refused an HTTP request: {e.message}", file=sys.stderr,
                  flush=True)
            return None
        import hashlib

        return AccessToken(token="sha256:" + hashlib.sha256(token.encode()).hexdigest(),
                           client_id=str(res["agent"]), scopes=[])


def _auth(gb: Glassbreak) -> dict[str, Any]:
    if not gb.http:
        return {}
    from mcp.server.auth.settings import AuthSettings
    from pydantic import AnyHttpUrl

    # issuer_url is required by the SDK's settings; no OAuth routes are served (no provider,
    # no resource_server_url): tokens are the operator's static agent tokens
    return {"token_verifier": DaemonTokenVerifier(),
            "auth": AuthSettings(issuer_url=AnyHttpUrl("http://127.0.0.1"),
                                 resource_server_url=None)}


def serve_stdio(gb: Glassbreak) -> None:
    build(gb).run("stdio")


def serve_http(gb: Glassbreak, host: str, port: int) -> None:
    import uvicorn

    app = build(gb).streamable_http_app(host=host)
    print(json.dumps({"mcp": f"http://{host}:{port}/mcp", "pid": os.getpid()}), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
