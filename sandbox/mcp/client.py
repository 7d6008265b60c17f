"""The daemon protocol as `glassbreak mcp` speaks it (docs/daemon.md): ops (one request line,
one answer line) and runs whose output and events come back separately ("report": "socket",
the command's stdout and stderr on pipes of ours, the cwd as an fd we opened). Standard
library only."""

from __future__ import annotations

import array
import json
import os
import socket
from typing import Any

from sandbox.run import thinclient


class DaemonError(Exception):
    """The daemon refused (an identity, a profile, an unknown escalation) or is not there."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 125,
                 kind: str = "error") -> None:
        super().__init__(message)
        self.message, self.hint, self.exit_code, self.kind = message, hint, exit_code, kind

    def render(self) -> str:
        return self.message + (f" (hint: {self.hint})" if self.hint else "")


def connect() -> socket.socket:
    sock = thinclient.connect()
    if sock is None:
        raise DaemonError(
            f"no glassbreak daemon is listening on {thinclient.socket_path()}: `glassbreak mcp` "
            "is a client of the daemon (it says who you are from the kernel and runs the "
            "commands)", hint="start it (`sudo glassbreak serve`), or set GLASSBREAK_SOCKET")
    return sock


def op(body: dict[str, Any], *, cwd_fd: int | None = None,
       timeout: float | None = None) -> dict[str, Any]:
    """One op (whoami, check, profile, escalation, agent_token): the daemon's result, or
    DaemonError with its message and hint. Blocking (the caller uses a worker thread)."""
    sock = connect()
    try:
        sock.settimeout(timeout)
        data = json.dumps(body).encode() + b"\n"
        fds = [cwd_fd] if cwd_fd is not None else []
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
            if fds else []
        sent = sock.sendmsg([data], anc)
        if sent < len(data):
            sock.sendall(data[sent:])
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise DaemonError(f"lost the connection to the daemon: {e}",
                          hint="see the daemon's log") from None
    finally:
        sock.close()
    try:
        msg = json.loads(buf.splitlines()[-1])
    except (ValueError, IndexError):
        raise DaemonError("the daemon gave no answer",
                          hint="is it the same glassbreak version? see its log") from None
    if msg.get("exit_code") != 0:
        raise DaemonError(str(msg.get("error") or "refused"), msg.get("hint"),
                          int(msg.get("exit_code") or 125))
    result = msg.get("result")
    return result if isinstance(result, dict) else {}


def open_dir(path: str) -> int:
    """An O_PATH fd of directory `path`, opened as we are: proof for the daemon that we may
    search every component (`path/.` is looked up in `path` itself)."""
    return os.open(os.path.join(path, "."), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def start_run(body: dict[str, Any], *, stdin: int, stdout: int, stderr: int,
              cwd_fd: int) -> socket.socket:
    """Send a run request carrying our fds (the command's stdio and cwd); the connection then
    carries {"event"}/{"error"} lines and the final {"exit_code"} (report: socket), and our
    {"signal": N} lines back. Closing it ends the run (fail closed)."""
    sock = connect()
    body = dict(body, report="socket", cwd_fd=True)
    data = json.dumps(body).encode() + b"\n"
    fds = array.array("i", [stdin, stdout, stderr, cwd_fd])
    try:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        if sent < len(data):
            sock.sendall(data[sent:])
    except OSError as e:
        sock.close()
        raise DaemonError(f"could not send the run to the daemon: {e}") from None
    return sock


def signal_line(sig: int) -> bytes:
    return json.dumps({"signal": sig}).encode() + b"\n"
