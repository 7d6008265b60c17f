"""The thin client of the glassbreak daemon: standard library only (no click, pydantic, httpx,
redis, yaml or bcc), so a warm `glassbreak run` costs a Python start and one socket round trip.

It sends one request line plus its own stdin/stdout/stderr fds (SCM_RIGHTS), forwards SIGINT,
SIGQUIT, SIGTERM and SIGHUP as {"signal": N} lines, and exits with the daemon's {"exit_code": N}.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

DEFAULT_SOCKET = "/run/glassbreak/glassbreak.sock"  # same as sandbox.run.daemon (kept import-free)
EXIT_RUNNER_FAILED = 125
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
OPTIONS = {"--profile": "profile", "-p": "profile", "--agent": "agent", "-a": "agent",
           "--reason": "reason", "-r": "reason", "--mode": "mode", "--output": "output",
           "-o": "output", "--degraded": "degraded"}
CHOICES = {"mode": ("enforce", "monitor"), "output": ("text", "json"),
           "degraded": ("exec-gate", "ebpf", "landlock", "network")}


def socket_path() -> str:
    return os.environ.get("GLASSBREAK_SOCKET") or DEFAULT_SOCKET


def connect() -> socket.socket | None:
    """A connection to the daemon, or None when there is none (then glassbreak runs in
    process). GLASSBREAK_NO_DAEMON=1 forces the in-process runner."""
    if os.environ.get("GLASSBREAK_NO_DAEMON") == "1":
        return None
    path = socket_path()
    if not os.path.exists(path):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    return s


def parse_run(args: list[str]) -> dict[str, Any] | None:
    """The options of `glassbreak run` (after `run`), or None for anything this tiny parser
    does not understand (then the full click CLI handles it, with its own messages)."""
    body: dict[str, Any] = {
        "profile": os.environ.get("GLASSBREAK_PROFILE"),  # None: the caller's default
        "agent": os.environ.get("GLASSBREAK_AGENT"), "reason": None, "mode": "enforce",
        "wait": None, "degraded": [], "output": "text"}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            body["argv"] = args[i + 1:]
            return body if body["argv"] else None
        if a == "--wait":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or not nxt.startswith("-"):
                return None  # `--wait 5m` vs `--wait CMD`: let click decide
            body["wait"] = "30m"
            i += 1
            continue
        name, eq, val = a.partition("=")
        if name == "--wait" and eq:
            body["wait"] = val
            i += 1
            continue
        key = OPTIONS.get(name)
        if key is None or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            val = args[i + 1]
            i += 1
        if key in CHOICES and val not in CHOICES[key]:
            return None
        if key == "degraded":
            body["degraded"].append(val)
        else:
            body[key] = val
        i += 1
    return None  # no `--`: click decides where the command starts


def run(sock: socket.socket, body: dict[str, Any]) -> int:
    """Send the request with our stdio, forward signals, return the command's exit code."""
    body = dict(body)
    body.setdefault("cwd", os.getcwd())
    body.setdefault("env", dict(os.environ))
    data = json.dumps(body).encode() + b"\n"
    fds = array.array("i", [0, 1, 2])
    try:
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[0]
    except OSError:
        pid = 0
    old: dict[signal.Signals, Any] = {}

    def forward(signum: int, _frame: object) -> None:
        try:
            sock.sendall(json.dumps({"signal": signum}).encode() + b"\n")
        except OSError:
            pass

    try:
        for s in FORWARDED:
            old[s] = signal.signal(s, forward)
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        if sent < len(data):
            sock.sendall(data[sent:])
        buf = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
        for line in buf.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and isinstance(msg.get("exit_code"), int):
                if msg.get("error"):  # the daemon refused the request itself
                    _say(f"glassbreak: the daemon refused the request: {msg['error']}"
                         + (f"\n  hint: {msg['hint']}" if msg.get("hint") else ""))
                return int(msg["exit_code"])
    except OSError as e:
        _say(f"glassbreak: lost the connection to the daemon at {socket_path()} ({e}); "
             "the run was ended")
        return EXIT_RUNNER_FAILED
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
    who = f"(pid {pid}) " if pid else ""
    _say(f"glassbreak: the daemon {who}at {socket_path()} died; the run was ended\n"
         "  hint: restart it (`glassbreak serve --socket PATH`), or run in process with "
         "GLASSBREAK_NO_DAEMON=1")
    return EXIT_RUNNER_FAILED


def try_daemon(body: dict[str, Any]) -> int | None:
    """Run through the daemon if one is listening; None means: run in process."""
    sock = connect()
    if sock is None:
        return None
    return run(sock, body)


def _say(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except OSError:
        pass
