"""`glassbreak mcp` end to end (issue 15): a real MCP client from the SDK drives the server as a
subprocess, as a non-root user (`setpriv --reuid=nobody`), against a real root daemon started
here with its own socket, state dir, profiles and an operator config that binds `nobody` to
agent mcp-bot. Over stdio and over streamable HTTP (an agent token); the approval goes
through the CLI as a uid bound to the profile's owner. Every process is ended by pid."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests._sandbox_helpers import alive
from tests.conftest import GLASSBREAK, free_port
from tests.security._trust import (
    APPROVER_UID,
    NOBODY,
    Daemon,
    as_uid,
    gb,
    of,
    start_daemon,
    workdir,
)

pytestmark = pytest.mark.kernel

OTHER_UID = 64990
TOKEN = "mcp-bot-token-" + "a" * 16
OTHER_TOKEN = "other-bot-token-" + "b" * 16
PROFILE = """\
name: {name}
description: the MCP tests' profile ({name})
extends: base
owners: [mcp-approver]
exec:
  allow: [sh, dash, echo, cat, "true", sleep, seq, id, pwd]
  default: block
escalation:
  ttl: 5m
  maxTtl: 30m
"""
CONFIG = {
    "agents": {
        "mcp-bot": {"users": ["nobody"], "profiles": ["mcp-test", "readonly"],
                    "tokenSha256": hashlib.sha256(TOKEN.encode()).hexdigest()},
        "other-bot": {"users": [OTHER_UID], "profiles": ["mcp-other"],
                      "tokens": [{"tokenSha256":
                                  hashlib.sha256(OTHER_TOKEN.encode()).hexdigest()}]},
    },
    "approvers": {"mcp-approver": {"users": [APPROVER_UID]}},
}


@pytest.fixture(scope="module")
def dm() -> Iterator[Daemon]:
    d = workdir("gb-mcp-")
    prof = d / "profiles"
    prof.mkdir()
    for name in ("mcp-test", "mcp-other"):
        (prof / f"{name}.yaml").write_text(PROFILE.format(name=name))
    (d / "work").mkdir()  # the MCP server's cwd: nobody may enter it
    os.chmod(d / "work", 0o755)
    (d / "private").mkdir(mode=0o700)  # root's: nobody may not
    daemon = start_daemon(d, CONFIG, GLASSBREAK_PROFILE_PATH=str(prof))
    try:
        yield daemon
    finally:
        daemon.stop()


def workdir_of(dm: Daemon) -> Path:
    return dm.sock.parent / "work"


def mcp_env(dm: Daemon) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_SOCKET": str(dm.sock),
            "HOME": "/nonexistent"}


@asynccontextmanager
async def stdio_client(dm: Daemon, *args: str) -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=NOBODY[0], args=[*NOBODY[1:], GLASSBREAK, "mcp",
                                                            *args],
                                   env=mcp_env(dm), cwd=str(workdir_of(dm)))
    async with Client(params, read_timeout_seconds=120) as c:
        yield c


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 180))


class Progress:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.values: list[float] = []
        self.seen = asyncio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.values.append(progress)
        self.messages.append(message or "")
        self.seen.set()


def approve(dm: Daemon, esc: str) -> subprocess.CompletedProcess[str]:
    """An owner of the profile approves through the CLI: a uid bound to approver mcp-approver,
    proven by the daemon (SO_PEERCRED)."""
    return gb("escalations", "approve", esc, "--reason", "looked fine", env=dm.client_env(),
              prefix=as_uid(APPROVER_UID))


async def block_approve_rerun(c: Any, dm: Daemon, argv: list[str]) -> None:
    """The glass-break loop through MCP: blocked with an escalation id, pending, an owner
    approves through the CLI while the agent waits (progress), approved, the rerun passes."""
    r = await c.call_tool("run", {"argv": argv, "reason": "need the kernel version"})
    assert not r.is_error, r.content
    res = r.structured_content
    assert res["decision"] == "block" and res["exit_code"] == 126, res
    blk = res["block"]
    assert blk["layer"] == "pre-check" and blk["rule_id"] == "exec.default"
    assert blk["argv"] == argv and blk["profile"] == "mcp-test"
    esc = blk["escalation_id"]
    assert re.fullmatch(r"esc-[0-9a-f]+", esc) and "wait_for_decision" in blk["how_to_wait"]

    st = (await c.call_tool("escalation_status", {"escalation_id": esc})).structured_content
    assert st["state"] == "pending" and "mcp-approver" in st["owners"]
    assert st["agent"] == "mcp-bot" and st["argv"] == argv
    assert "wait_for_decision" in st["next_step"]

    prog = Progress()
    waiting = asyncio.create_task(c.call_tool("wait_for_decision",
                                              {"escalation_id": esc, "timeout": 60},
                                              progress_callback=prog))
    await asyncio.wait_for(prog.seen.wait(), 30)  # still pending: progress while it waits
    assert "still pending" in prog.messages[0] and "mcp-approver" in prog.messages[0]
    a = await asyncio.to_thread(approve, dm, esc)
    assert a.returncode == 0 and "approved by mcp-approver" in a.stdout, a.stderr
    w = (await waiting).structured_content
    assert w["state"] == "approved" and w["decided_by"] == "mcp-approver", w
    assert w["grant"]["status"] == "active" and w["grant"]["scope"] == "command"
    assert "run the same command again" in w["next_step"] and w["waited_s"] > 0

    again = (await c.call_tool("run", {"argv": argv})).structured_content
    assert again["decision"] == "allow" and again["exit_code"] == 0, again
    assert again["stdout"].startswith("Linux") and again["block"] is None
    assert any("grant" in n and "mcp-approver" in n for n in again["notes"]), again["notes"]
    started = of(dm.audit(), "run_started", argv=argv)
    assert started[-1]["agent"] == "mcp-bot" and started[-1]["uid"] == 65534
    assert started[-1]["grant_id"] == w["grant"]["id"]


# -- stdio ------------------------------------------------------------------------------------
def test_stdio_tools_and_an_allowed_run(dm: Daemon) -> None:
    async def main() -> None:
        async with stdio_client(dm) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert set(tools) == {"run", "check", "explain", "escalation_status",
                                  "wait_for_decision", "list_profiles"}
            for t in tools.values():  # every tool: a JSON Schema in, structured results out
                assert t.input_schema["type"] == "object" and t.output_schema
            assert tools["run"].input_schema["required"] == ["argv"]
            assert set(tools["run"].input_schema["properties"]) == {
                "argv", "cwd", "reason", "timeout", "profile"}  # no agent, no env, no file

            prog = Progress()
            r = await c.call_tool("run", {"argv": ["sh", "-c", "echo hi; id -u; pwd; "
                                                   "echo oops >&2; exit 3"]},
                                  progress_callback=prog)
            res = r.structured_content
            assert not r.is_error and res["decision"] == "allow", r.content
            assert res["exit_code"] == 3
            assert res["stdout"] == f"hi\n65534\n{workdir_of(dm)}\n"  # as nobody, its cwd
            assert res["stderr"] == "oops\n" and not res["stdout_truncated"]
            assert res["stdout_bytes"] == len(res["stdout"]) and res["run_id"].startswith("run_")
            streamed = "".join(prog.messages)
            assert "[stdout] hi" in streamed and "[stderr] oops" in streamed
            assert prog.values == sorted(prog.values)  # progress only grows

            lp = (await c.call_tool("list_profiles", {})).structured_content
            assert lp["agent"] == "mcp-bot" and lp["user"] == "nobody"
            assert [p["name"] for p in lp["profiles"]] == ["mcp-test", "readonly"]
            assert lp["profiles"][0]["default"] and not lp["any_profile"]
            res_list = await c.list_resources()
            assert "glassbreak://profiles" in [str(x.uri) for x in res_list.resources]
            body = await c.read_resource("glassbreak://profiles/mcp-test")
            prof = json.loads(body.contents[0].text)
            assert prof["name"] == "mcp-test" and "seq" in prof["exec"]["allow"]

            other = (await c.call_tool("run", {"argv": ["pwd"], "cwd": "/tmp"}))
            assert other.structured_content["stdout"] == "/tmp\n"
            private = str(dm.sock.parent / "private")  # root's, 0700: not a cwd for nobody
            bad = await c.call_tool("run", {"argv": ["pwd"], "cwd": private})
            assert bad.is_error and "Permission denied" in bad.content[0].text
            bad = await c.call_tool("check", {"argv": ["pwd"], "cwd": private})
            assert bad.is_error and "Permission denied" in bad.content[0].text

    run(main())


def test_stdio_check_and_explain_run_nothing(dm: Daemon) -> None:
    async def main() -> None:
        async with stdio_client(dm) as c:
            ok = (await c.call_tool("check", {"argv": ["true"]})).structured_content
            assert ok["verdict"] == "allow" and ok["allowed"] and ok["profile"] == "mcp-test"
            no = (await c.call_tool("check", {"argv": ["uname", "-r", "mcp-check"]}))
            blk = no.structured_content
            assert blk["verdict"] == "block" and blk["rule_id"] == "exec.default"
            assert blk["binary"] == "/usr/bin/uname" and blk["steps"] is None
            ex = (await c.call_tool("explain", {"argv": ["uname", "-r", "mcp-check"]}))
            steps = ex.structured_content["steps"]
            assert steps and steps[0].startswith("profile mcp-test") and "block" in steps[-1]
            ro = (await c.call_tool("check", {"argv": ["uname"], "profile": "readonly"}))
            assert ro.structured_content["profile"] == "readonly"

    run(main())
    assert not of(dm.audit(), "run_started", argv=["uname", "-r", "mcp-check"])
    assert not of(dm.audit(), "escalation_raised", argv=["uname", "-r", "mcp-check"])


def test_stdio_block_escalation_approval_wait_rerun(dm: Daemon) -> None:
    async def main() -> None:
        async with stdio_client(dm) as c:
            await block_approve_rerun(c, dm, ["uname", "-s"])

    run(main())


def test_stdio_cancellation_ends_the_runs_processes(dm: Daemon) -> None:
    pids: list[int] = []

    async def main() -> None:
        async with stdio_client(dm) as c:
            prog = Progress()
            call = asyncio.create_task(c.call_tool(
                "run", {"argv": ["sh", "-c", "sleep 300 & echo $$ $!; wait"], "timeout": 600},
                progress_callback=prog))
            await asyncio.wait_for(prog.seen.wait(), 30)
            pids.extend(int(p) for p in re.findall(r"\d+", prog.messages[0]))
            assert len(pids) == 2 and all(alive(p) for p in pids)
            call.cancel()  # the SDK sends notifications/cancelled
            with pytest.raises(asyncio.CancelledError):
                await call
            deadline = time.monotonic() + 15
            while any(alive(p) for p in pids) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not any(alive(p) for p in pids), pids
            # the server keeps serving
            r = await c.call_tool("run", {"argv": ["echo", "after"]})
            assert r.structured_content["stdout"] == "after\n"

    run(main())
    ended = [e for e in of(dm.audit(), "run_result") if e.get("signal") == signal.SIGKILL]
    assert ended, "the cancelled run's result (killed) is in the audit log"


def test_stdio_timeout_ends_the_run_and_says_so(dm: Daemon) -> None:
    async def main() -> None:
        async with stdio_client(dm) as c:
            t0 = time.monotonic()
            r = await c.call_tool("run", {"argv": ["sh", "-c", "echo started; sleep 300"],
                                          "timeout": 1})
            res = r.structured_content
            assert time.monotonic() - t0 < 20
            assert res["ended"] == "timeout" and "timeout" in res["reason"]
            assert res["exit_code"] == 128 + signal.SIGTERM and res["stdout"] == "started\n"

    run(main())


def test_stdio_oversized_output_is_truncated_with_a_marker(dm: Daemon) -> None:
    async def main() -> None:
        async with stdio_client(dm, "--max-output", "1000") as c:
            prog = Progress()
            r = await c.call_tool("run", {"argv": ["seq", "1", "200000"]},
                                  progress_callback=prog)
            res = r.structured_content
            total = len("".join(f"{i}\n" for i in range(1, 200001)))
            assert res["exit_code"] == 0 and res["stdout_truncated"], res["stderr"]
            assert res["stdout_bytes"] == total  # every byte counted, none kept past 1000
            kept, marker = res["stdout"].rsplit("\n[glassbreak:", 1)
            assert "1\n2\n3\n".startswith(kept[:6]) and len(kept.encode()) <= 1000
            assert f"stdout truncated: showing the first 1000 of {total} bytes" in marker
            assert not res["stderr_truncated"]
            assert sum(len(m) for m in prog.messages) < 2 * 1024 * 1024  # streaming bounded

    run(main())


def test_stdio_another_agents_profile_or_escalation_is_refused(dm: Daemon) -> None:
    # other-bot (uid OTHER_UID) raises an escalation of its own through the CLI
    r = gb("run", "-o", "json", "--", "uname", "-n", env=dm.client_env(),
           prefix=as_uid(OTHER_UID))
    assert r.returncode == 126, r.stderr
    other_esc = [json.loads(x) for x in r.stderr.splitlines() if '"blocked"' in x][-1][
        "escalation_id"]

    async def main() -> None:
        async with stdio_client(dm) as c:
            for tool in ("run", "check", "explain"):
                res = await c.call_tool(tool, {"argv": ["true"], "profile": "mcp-other"})
                text = res.content[0].text
                assert res.is_error and "profile mcp-other refused" in text, text
                assert "may ask for mcp-test, readonly" in text
            for path in ("/etc/passwd", "../mcp-other.yaml"):
                res = await c.call_tool("run", {"argv": ["true"], "profile": path})
                assert res.is_error and "only root may run under a profile file" in \
                    res.content[0].text
            res = await c.call_tool("run", {"argv": ["true"], "profile": "k8s-ops-escalated"})
            assert res.is_error and "it is a relaxed profile" in res.content[0].text
            from mcp.shared.exceptions import MCPError

            with pytest.raises(MCPError, match="profile mcp-other refused"):
                await c.read_resource("glassbreak://profiles/mcp-other")
            st = await c.call_tool("escalation_status", {"escalation_id": other_esc})
            assert st.is_error and f"no escalation {other_esc} of agent(s) mcp-bot" in \
                st.content[0].text
            st = await c.call_tool("wait_for_decision", {"escalation_id": other_esc,
                                                         "timeout": 1})
            assert st.is_error

    run(main())
    refused = of(dm.audit(), "run_refused", uid=65534, profile="mcp-other")
    assert refused and any(e["argv"] == ["true"] for e in refused)
    assert of(dm.audit(), "run_refused", uid=65534, argv=["(op escalation)"])
    assert not of(dm.audit(), "run_started", profile="mcp-other", uid=65534)


def test_stdio_another_agent_by_name_is_refused_at_start(dm: Daemon) -> None:
    r = subprocess.run([*NOBODY, GLASSBREAK, "mcp", "--agent", "other-bot"],
                       capture_output=True, text=True, env=mcp_env(dm), timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 125, r.stderr
    assert "agent other-bot refused" in r.stderr and "mcp-bot" in r.stderr


# -- streamable HTTP ----------------------------------------------------------------------------
class HttpServer:
    def __init__(self, dm: Daemon) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.err = dm.sock.parent / f"mcp-http-{self.port}.stderr"
        with self.err.open("w") as ef:
            self.proc = subprocess.Popen(
                [*NOBODY, GLASSBREAK, "mcp", "--http", "--port", str(self.port)],
                stdout=subprocess.PIPE, stderr=ef, text=True, env=mcp_env(dm),
                cwd=str(workdir_of(dm)))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert json.loads(line)["mcp"] == self.url, self.err.read_text()
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"the MCP HTTP server did not answer: {self.err.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http(dm: Daemon) -> Iterator[HttpServer]:
    s = HttpServer(dm)
    try:
        yield s
    finally:
        s.stop()


@asynccontextmanager
async def http_client(url: str, token: str) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    hc = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with Client(streamable_http_client(url, http_client=hc),
                      read_timeout_seconds=120) as c:
        yield c


def test_http_flow_with_an_agent_token(dm: Daemon, http: HttpServer) -> None:
    async def main() -> None:
        async with http_client(http.url, TOKEN) as c:
            prog = Progress()
            r = await c.call_tool("run", {"argv": ["sh", "-c", "id -u; pwd"]},
                                  progress_callback=prog)
            res = r.structured_content
            assert res["decision"] == "allow" and res["stdout"] == \
                f"65534\n{workdir_of(dm)}\n", res
            assert any("[stdout] 65534" in m for m in prog.messages)
            lp = (await c.call_tool("list_profiles", {})).structured_content
            assert lp["agent"] == "mcp-bot"
            bad = await c.call_tool("run", {"argv": ["true"], "profile": "mcp-other"})
            assert bad.is_error and "profile mcp-other refused" in bad.content[0].text
            await block_approve_rerun(c, dm, ["uname", "--kernel-name"])

    run(main())


def test_http_cancellation_ends_the_runs_processes(dm: Daemon, http: HttpServer) -> None:
    async def main() -> None:
        async with http_client(http.url, TOKEN) as c:
            prog = Progress()
            call = asyncio.create_task(c.call_tool(
                "run", {"argv": ["sh", "-c", "echo $$; exec sleep 300"]},
                progress_callback=prog))
            await asyncio.wait_for(prog.seen.wait(), 30)
            pid = int(re.findall(r"\d+", prog.messages[0])[0])
            assert alive(pid)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            deadline = time.monotonic() + 15
            while alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not alive(pid)

    run(main())


def test_http_wrong_token_gets_401(dm: Daemon, http: HttpServer) -> None:
    import httpx

    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in (None, "Bearer wrong-token", f"Bearer {OTHER_TOKEN}", f"Basic {TOKEN}"):
        h = dict(headers, **({"Authorization": auth} if auth else {}))
        r = httpx.post(http.url, json=hello, headers=h, timeout=30)
        assert r.status_code == 401, (auth, r.status_code, r.text)
        assert r.json()["error"] == "invalid_token"
    ok = httpx.post(http.url, json=hello, headers=dict(headers, Authorization=f"Bearer {TOKEN}"),
                    timeout=30)
    assert ok.status_code == 200, ok.text
    # other-bot's token is valid, but for another unix user: this server (nobody) refuses it
    log = http.err.read_text()
    assert "the token is agent other-bot's, and uid 65534 (nobody) is not bound" in log
    assert "matches no agent" in log

    async def sdk_client() -> None:
        async with http_client(http.url, "wrong-token") as c:
            await c.list_tools()

    with pytest.raises(Exception):  # noqa: B017 - the SDK's own error for a 401
        run(sdk_client())


def test_http_refuses_to_serve_as_root(dm: Daemon) -> None:
    r = subprocess.run([GLASSBREAK, "mcp", "--http", "--port", str(free_port())],
                       capture_output=True, text=True, env=mcp_env(dm), timeout=60)
    assert r.returncode == 125 and "refuses to run as root" in r.stderr, r.stderr


# -- the protocol underneath ------------------------------------------------------------------
PROBE = """
import json, os, sys
from sandbox.mcp import client
kind, claimed = sys.argv[1], sys.argv[2] or None
fd = os.open("/etc/hostname", os.O_RDONLY) if kind == "file" else client.open_dir(sys.argv[3])
r, w = os.pipe()
s = client.start_run({"argv": ["pwd"], "cwd": claimed, "env": {"PATH": "/usr/bin:/bin"}},
                     stdin=0, stdout=w, stderr=w, cwd_fd=fd)
os.close(w)
buf = b""
while chunk := s.recv(65536):
    buf += chunk
print(json.dumps({"lines": [json.loads(x) for x in buf.splitlines()],
                  "out": os.read(r, 65536).decode()}))
"""


@pytest.mark.parametrize("kind,claimed,dirname,ok", [
    ("dir", "", "/tmp", True),
    ("dir", "/tmp", "/tmp", True),
    ("dir", "/var", "/tmp", False),  # a claimed cwd must be the directory carried
    ("file", "", "", False),  # not a directory
])
def test_protocol_the_cwd_is_the_directory_the_caller_opened(dm: Daemon, kind: str,
                                                             claimed: str, dirname: str,
                                                             ok: bool) -> None:
    r = subprocess.run([*NOBODY, os.path.join(os.path.dirname(GLASSBREAK), "python"), "-c",
                        PROBE, kind, claimed, dirname], capture_output=True, text=True,
                       env=mcp_env(dm), cwd=str(workdir_of(dm)), timeout=60)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    final = res["lines"][-1]
    if ok:
        assert final == {"exit_code": 0} and res["out"] == "/tmp\n", res
        assert any(x.get("event", {}).get("type") == "run_result" for x in res["lines"])
    else:  # refused before anything ran; said on the connection, nothing on the stdio
        assert final["exit_code"] == 125 and res["out"] == "", res
        err = [x["error"] for x in res["lines"] if "error" in x][0]
        assert "cwd" in err["message"]
