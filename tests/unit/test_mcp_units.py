"""The pure parts of `glassbreak mcp` (issue 15): bounded output capture, agent tokens in the
operator's config, the daemon's ops scoped to the caller's own agents, and `glassbreak run`
never paying for the MCP SDK."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.config import Config
from sandbox.errors import IdentityError
from sandbox.mcp.capture import Capture

H = hashlib.sha256


def test_capture_keeps_the_head_counts_the_rest_and_says_so() -> None:
    c = Capture("stdout", 10)
    assert c.add(b"hello ") == "hello "
    c.add(b"world, and more")
    assert c.total == 21 and c.truncated
    text = c.text()
    assert text.startswith("hello worl\n")
    assert text.endswith("[glassbreak: stdout truncated: showing the first 10 of 21 bytes; "
                          "11 bytes not shown]")
    small = Capture("stderr", 100)
    small.add(b"ok\n")
    assert small.text() == "ok\n" and not small.truncated


def test_capture_streams_split_utf8_whole() -> None:
    c = Capture("stdout", 1 << 16)
    data = "é€".encode()
    assert c.add(data[:1]) == ""  # half a character waits for its other half
    assert c.add(data[1:]) == "é€"
    assert c.text() == "é€"
    z = Capture("stdout", 0)
    z.add(b"x")
    assert z.truncated and "showing the first 0 of 1 bytes" in z.text()


def test_agent_tokens_in_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GB_TEST_AGENT_TOKEN", "from-env")
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    cfg = Config.model_validate({"agents": {
        "a": {"users": ["nobody"], "profiles": ["readonly"],
              "tokenSha256": H(b"inline").hexdigest(),
              "tokens": [{"tokenSha256": H(b"rotated").hexdigest()},
                         {"tokenFile": str(f)}]},
        "b": {"users": [1234], "profiles": ["readonly"], "tokenEnv": "GB_TEST_AGENT_TOKEN"},
        "c": {"users": [1235], "profiles": ["readonly"]}}})
    assert cfg.agent_for_token("inline") == "a"
    assert cfg.agent_for_token("rotated") == "a"
    assert cfg.agent_for_token("from-file") == "a"
    assert cfg.agent_for_token("from-env") == "b"
    for bad in ("", "INLINE", "inline ", "nope"):
        assert cfg.agent_for_token(bad) is None  # c has no token: never matches empty
    assert Config().agent_for_token("x") is None
    with pytest.raises(ValueError):
        Config.model_validate({"agents": {"a": {"users": ["x"], "profiles": ["readonly"],
                                                "token": "plaintext"}}})  # only hashes/refs


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(json.dumps({"agents": {
        "mcp-bot": {"users": ["nobody"], "profiles": ["readonly", "base"],
                    "tokenSha256": H(b"good").hexdigest()},
        "two": {"users": [65534], "profiles": ["readonly"]},
        "other": {"users": [64990], "profiles": ["base"],
                  "tokenSha256": H(b"other").hexdigest()}}}))
    p.chmod(0o644)
    monkeypatch.setenv("GLASSBREAK_CONFIG", str(p))
    return p


def test_my_agents_are_the_callers_own(config: Path) -> None:
    from sandbox.run.ops import my_agents, whoami

    assert my_agents(65534, None) == {"mcp-bot": ["readonly", "base"], "two": ["readonly"]}
    assert my_agents(65534, "two") == {"two": ["readonly"]}
    with pytest.raises(IdentityError, match="agent other refused"):
        my_agents(65534, "other")
    with pytest.raises(IdentityError, match="bound to no agent"):
        my_agents(64000, None)
    assert set(my_agents(0, None)) == {"mcp-bot", "two", "other"}  # root: the operator
    me = whoami(65534, "mcp-bot")
    assert me["default_agent"] == "mcp-bot" and me["user"] == "nobody"
    profs = me["agents"]["mcp-bot"]["profiles"]
    assert [p["name"] for p in profs] == ["readonly", "base"] and profs[0]["default"]
    assert profs[0]["description"].startswith("everyday read-only tools")


def test_check_is_scoped_like_a_run(config: Path) -> None:
    from sandbox.run.ops import check, show_profile

    ok = check(65534, "mcp-bot", None, ["cat", "/etc/hostname"], cwd="/", path="/usr/bin:/bin",
               explain=True)
    assert ok["verdict"] == "allow" and ok["profile"] == "readonly" and ok["steps"]
    missing = check(65534, None, None, ["no-such-cmd-xyz"], cwd="/", path="/usr/bin",
                    explain=False)
    assert missing["verdict"] == "error" and missing["exit_code"] == 127
    with pytest.raises(IdentityError, match="profile k8s-readonly refused"):
        check(65534, None, "k8s-readonly", ["true"], cwd="/", path=None, explain=False)
    with pytest.raises(IdentityError, match="only root may run under a profile file"):
        check(65534, None, "/etc/passwd", ["true"], cwd="/", path=None, explain=False)
    assert show_profile(65534, None, "base")["name"] == "base"
    with pytest.raises(IdentityError):
        show_profile(65534, "mcp-bot", "k8s-readonly")


def test_agent_token_binds_to_the_callers_uid(config: Path) -> None:
    from sandbox.run.ops import agent_token

    assert agent_token(65534, "good") == {"agent": "mcp-bot",
                                          "profiles": ["readonly", "base"]}
    with pytest.raises(IdentityError, match="the token is agent other's, and uid 65534"):
        agent_token(65534, "other")
    with pytest.raises(IdentityError, match="matches no agent"):
        agent_token(65534, "guess")
    with pytest.raises(IdentityError, match="matches no agent"):
        agent_token(65534, "")
    with pytest.raises(IdentityError, match="not verified for root"):
        agent_token(0, "good")


def test_run_never_imports_the_mcp_sdk() -> None:
    code = ("import sys\n"
            "from sandbox.cli import main, entry\n"
            "from sandbox.run import runclient, thinclient, daemon, ops\n"
            "from sandbox.mcp import client, capture\n"
            "main.main.list_commands(None)\n"
            "bad = [m for m in sys.modules if m == 'mcp' or m.startswith(('mcp.', 'anyio'))]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ), timeout=60)
    assert r.returncode == 0, r.stderr
