"""The glassbreak daemon's run socket (issue 5): warm runs for any local user.
Why this module is long: one socket server. Daemon (~275 lines) holds the accept loop, the request
kinds (run, decision, op) and the table of live runs they share; the helpers beside it (fd passing,
peer credentials, the caller's cwd) serve only it.

Protocol (unix SOCK_STREAM, JSON lines):
  client -> daemon  one request line {"argv", "profile", "agent", "reason", "mode", "wait",
                    "degraded", "output", "cwd", "env"}, sent with the caller's stdin, stdout and
                    stderr fds attached (SCM_RIGHTS); then any number of {"signal": N} lines.
  daemon -> client  {"exit_code": N}, then the daemon closes the connection.

Permission model: the socket is 0666 in a 0755 directory, so any local user may run. The daemon
is the enforcement point for non-root callers. The caller's identity comes from the kernel
(SO_PEERCRED), never from the request: the command runs as the caller's uid, gid and
supplementary groups (a non-root caller never runs anything as root), in the caller's real cwd
(checked against /proc/PID/cwd). Its agent and profile come from the operator's bindings
(sandbox.run.caller, sandbox.policy.identity): `--agent` only picks among the caller's own
agents, `-p` only among their bound profiles, never a relaxed profile (a grant switches to it)
nor a profile file (root only). Profiles come from the daemon's own search path. Only root may
switch layers off (--degraded). Every refusal is written to the audit log.

Decisions (`glassbreak escalations approve|deny`, `grants revoke` by a non-root user) come as
{"op": "decide"|"revoke", ...} without fds: the daemon holds the grant signing key, proves the
approver from SO_PEERCRED (or the approver token sent), and answers {"exit_code", "result"}.
An agent's questions (`glassbreak mcp`: whoami, check, profile, escalation status and wait,
agent_token) are ops too, answered for the caller's own agents only (sandbox.run.ops).

For programs that capture a run's output (`glassbreak mcp`), a run request may say
"report": "socket" (glassbreak's own events come back on the connection as {"event": ...} and
{"error": ...} lines instead of on the caller's stderr) and "cwd_fd": true (a 4th fd, a
directory the caller opened, is the run's cwd instead of the caller's own cwd).

If the daemon dies its runs die with it: each child has PDEATHSIG (it is forked from the run's
thread, which lives until the child is reaped) and the cgroup watchdog kills the rest.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import EXIT_RUNNER_FAILED, EXIT_SIGNAL_BASE, EXIT_USAGE, GlassbreakError
from sandbox.run.supervisor import RunRequest, Supervisor

DEFAULT_SOCKET = "/run/glassbreak/glassbreak.sock"
MAX_REQUEST = 4 * 1024 * 1024
MAX_CONNECTIONS = 256  # connections served at once; more are told to retry
REQUEST_TIMEOUT = 10.0  # seconds for the request line to arrive
INTERACTIVE = (signal.SIGINT, signal.SIGQUIT)  # like a terminal: to every process of the run
ENDING = (signal.SIGTERM, signal.SIGHUP)  # like in process: end the run's tree


def socket_path() -> str:
    return os.environ.get("GLASSBREAK_SOCKET") or DEFAULT_SOCKET


@dataclass
class _Run:
    child_pid: int | None = None
    cg: Any = None
    pending: list[int] = field(default_factory=list)
    ended_by: int | None = None
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, child_pid: int, cg: Any) -> None:
        with self.lock:
            self.child_pid, self.cg = child_pid, cg
            pending, self.pending = self.pending, []
        for s in pending:
            self.deliver(s)

    def deliver(self, sig: int) -> None:
        with self.lock:
            if self.cg is None:
                if sig in ENDING:
                    self.ended_by = self.ended_by or sig
                self.pending.append(sig)
                return
            cg, pid = self.cg, self.child_pid
        if sig in ENDING or sig == signal.SIGKILL:
            if sig in ENDING:
                self.ended_by = self.ended_by or sig
            cg.kill()
            return
        pids: list[int] = list(cg.pids()) if sig in INTERACTIVE else []
        if not pids and pid is not None:
            pids = [pid]
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass


def peer_creds(conn: socket.socket) -> tuple[int, int, int, list[int]]:
    """(pid, uid, gid, groups) of the connected process, from the kernel."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups: list[int] = []
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups = [int(g) for g in line.split()[1:]]
                    break
    except OSError:
        groups = [gid]
    return pid, uid, gid, groups


class ProtocolError(Exception):
    """A connection that does not speak the protocol: answered with a clear error line."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


HINT_PROTOCOL = "use the glassbreak client (`glassbreak run`); the protocol is in docs/daemon.md"


def recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int], bytes]:
    """The first JSON line and the fds that came with it; returns leftover bytes too. Raises
    ProtocolError (fds closed) for anything but one JSON object on one line."""
    fds = array.array("i")
    buf = b""
    try:
        while b"\n" not in buf:
            data, anc, _flags, _addr = conn.recvmsg(65536,
                                                    socket.CMSG_SPACE(16 * fds.itemsize))
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
            if not data:
                raise ProtocolError("the connection ended before a complete request line "
                                    "(JSON and a newline) arrived", HINT_PROTOCOL)
            buf += data
            if len(buf) > MAX_REQUEST:
                raise ProtocolError(f"the request line is longer than {MAX_REQUEST >> 20} MiB",
                                    "pass less environment, or fewer/shorter arguments")
        line, _, rest = buf.partition(b"\n")
        try:
            req = json.loads(line)
        except ValueError as e:
            raise ProtocolError(f"the request line is not JSON ({e})", HINT_PROTOCOL) from None
        if not isinstance(req, dict):
            raise ProtocolError(f"the request must be a JSON object, not "
                                f"{type(req).__name__}", HINT_PROTOCOL)
        return req, list(fds), rest
    except TimeoutError:
        _close_all(fds)
        raise ProtocolError(f"no complete request within {REQUEST_TIMEOUT:.0f} s",
                            HINT_PROTOCOL) from None
    except BaseException:
        _close_all(fds)
        raise


def _close_all(fds: Any) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Daemon:
    def __init__(self, path: str | None = None, *, tracer: Any | None = None,
                 network: Any | None = None) -> None:
        self.path = path or socket_path()
        self.sup = Supervisor(tracer=tracer, network=network)
        self.sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def bind(self) -> None:
        d = os.path.dirname(self.path) or "."
        os.makedirs(d, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
                probe.close()
                raise GlassbreakError(f"another glassbreak daemon is serving {self.path}",
                                      hint="stop it first, or use --socket PATH")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.path)  # stale socket of a dead daemon
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        os.chmod(self.path, 0o666)  # noqa: S103 - any local user may run (see top)
        s.listen(128)
        self.sock = s

    def serve_forever(self) -> None:
        assert self.sock is not None
        while True:
            conn, _ = self.sock.accept()
            if not self._slots.acquire(blocking=False):
                _reply(conn, EXIT_RUNNER_FAILED, error=f"the daemon is serving {MAX_CONNECTIONS} "
                       "connections already", hint="retry in a moment")
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True,
                             name="glassbreak-conn").start()

    # -- one connection -----------------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            pid, uid, gid, groups = peer_creds(conn)
            conn.settimeout(REQUEST_TIMEOUT)  # a silent client never holds a thread forever
            try:
                body, fds, rest = recv_request(conn)
            except ProtocolError as e:
                _reply(conn, EXIT_USAGE, error=e.message, hint=e.hint)
                return
            except OSError:
                return
            conn.settimeout(None)
            if body.get("op") in ("decide", "revoke"):
                self._serve_decision(conn, body, uid)
                return
            if body.get("op") is not None:
                self._serve_op(conn, body, fds, pid, uid)
                return
            want = 4 if body.get("cwd_fd") is True else 3
            if len(fds) != want:
                _reply(conn, EXIT_USAGE, error=f"the request carried {len(fds)} file "
                       "descriptors; it must carry the caller's stdin, stdout and stderr "
                       "(SCM_RIGHTS)" + (", then the cwd's" if want == 4 else ""),
                       hint=HINT_PROTOCOL)
                return
            ended: list[int] = []
            code = self._serve_run(conn, body, fds, rest, pid, uid, gid, groups, ended)
            _reply(conn, code, ended_by=ended[0] if ended else None)
        except Exception as e:  # noqa: BLE001 - one bad connection never ends the daemon
            print(f"glassbreak daemon: connection failed: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()
            self._slots.release()

    def _serve_run(self, conn: socket.socket, body: dict[str, Any], fds: list[int],
                   rest: bytes, pid: int, uid: int, gid: int, groups: list[int],
                   ended: list[int] | None = None) -> int:
        from sandbox.run.runclient import make_emit

        output = "json" if body.get("output") == "json" else "text"
        report = _SocketReport(conn) if body.get("report") == "socket" else None
        emit = report.event if report is not None else make_emit(output, fds[2])

        def say(e: GlassbreakError) -> None:
            if report is not None:
                report.error(e)
            else:
                _write_error(fds[2], e, output)

        try:
            req = self._request(body, fds, pid, uid, gid, groups)
        except GlassbreakError as e:
            say(e)
            if e.exit_code != EXIT_USAGE:
                self._audit_refusal(e, body, pid, uid)
            return e.exit_code
        ignored = _ignored_state_vars(req.env or {})
        if ignored:
            from sandbox.events import Degraded

            emit(Degraded(what="daemon", why=(
                "this run goes through the glassbreak daemon, which keeps its own state dir, "
                f"store and profile path; ignored from your environment: {', '.join(ignored)} "
                "(set GLASSBREAK_NO_DAEMON=1 to run in process with them)")))
        run = _Run()
        req.on_spawn = run.attach
        result: dict[str, int] = {}

        def work() -> None:
            try:
                result["code"] = self.sup.run(req, emit).exit_code
            except GlassbreakError as e:
                say(e)
                result["code"] = e.exit_code
            except Exception as e:  # noqa: BLE001
                say(GlassbreakError(
                    f"internal error in the daemon: {type(e).__name__}: {e}",
                    hint="see the daemon's log; rerun with GLASSBREAK_NO_DAEMON=1"))
                result["code"] = EXIT_RUNNER_FAILED
            finally:
                run.done.set()
                try:
                    conn.shutdown(socket.SHUT_RD)  # wakes the signal reader below
                except OSError:
                    pass

        t = threading.Thread(target=work, daemon=True, name="glassbreak-run")
        t.start()
        try:
            self._read_signals(conn, rest, run)
        finally:
            t.join()
        code = result.get("code", EXIT_RUNNER_FAILED)
        if run.ended_by is not None and code != 0:
            sig = run.ended_by
            msg = f"glassbreak: glassbreak received signal {sig}; the run's process tree was ended"
            if report is not None and ended is not None:
                ended.append(sig)
            else:
                _write_line(fds[2], msg)
            return EXIT_SIGNAL_BASE + signal.SIGTERM
        return code

    def _audit_refusal(self, e: GlassbreakError, body: dict[str, Any], pid: int,
                       uid: int) -> None:
        from sandbox.run.caller import refusal_event

        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = None
        try:
            self.sup.audit.write(refusal_event(e, uid=uid, agent=body.get("agent"),
                                               profile=body.get("profile"),
                                               argv=body.get("argv"), cwd=cwd, via="daemon"))
        except OSError as err:
            print(f"glassbreak daemon: could not audit a refused run: {err}", file=sys.stderr,
                  flush=True)

    def _serve_decision(self, conn: socket.socket, body: dict[str, Any], uid: int) -> None:
        """A decision by a local user: the approver is proven here (uid or token)."""
        from sandbox.run.caller import username

        try:
            from escalation.decide import decide_request

            result = decide_request(self.sup.escalations(), body, uid=uid, user=username(uid))
        except GlassbreakError as e:
            _reply(conn, e.exit_code, error=e.message, hint=e.hint)
            return
        except Exception as e:  # noqa: BLE001 - one bad request never ends the daemon
            _reply(conn, EXIT_RUNNER_FAILED, error=f"internal error in the daemon: "
                   f"{type(e).__name__}: {e}", hint="see the daemon's log")
            return
        _reply_result(conn, result)

    def _serve_op(self, conn: socket.socket, body: dict[str, Any], fds: list[int], pid: int,
                  uid: int) -> None:
        """An agent's question (sandbox.run.ops), answered for the caller's own agents; an
        identity refusal is audited like a refused run."""
        from sandbox.errors import EscalationError, IdentityError
        from sandbox.run.ops import serve_op

        try:
            cwd = _fd_cwd(fds[0], body.get("cwd")) if len(fds) == 1 else \
                _caller_cwd(pid, body.get("cwd"))
            result = serve_op(self.sup, body, uid=uid, cwd=cwd)
        except GlassbreakError as e:
            # not yours: audited; a bad agent token is not (an unauthenticated HTTP client
            # must not make the daemon fsync; the HTTP server logs it)
            if isinstance(e, IdentityError | EscalationError) and body.get("op") != "agent_token":
                self._audit_refusal(e, {**body, "argv": body.get("argv") or
                                        [f"(op {body.get('op')})"]}, pid, uid)
            _reply(conn, e.exit_code, error=e.message, hint=e.hint)
            return
        except Exception as e:  # noqa: BLE001 - one bad request never ends the daemon
            _reply(conn, EXIT_RUNNER_FAILED, error=f"internal error in the daemon: "
                   f"{type(e).__name__}: {e}", hint="see the daemon's log")
            return
        _reply_result(conn, result)

    def _read_signals(self, conn: socket.socket, buf: bytes, run: _Run) -> None:
        while True:
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                try:
                    sig = int(json.loads(line).get("signal"))
                except (ValueError, TypeError, AttributeError):
                    continue
                if 0 < sig < signal.NSIG:
                    run.deliver(sig)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                if not run.done.is_set():  # the client went away: fail closed, end the run
                    run.deliver(signal.SIGKILL)
                return
            buf += data

    def _request(self, body: dict[str, Any], fds: list[int], pid: int, uid: int, gid: int,
                 groups: list[int]) -> RunRequest:
        from sandbox.errors import UsageError

        argv = body.get("argv")
        env = body.get("env")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise UsageError("no command given", hint="glassbreak run --profile P -- CMD ARGS...")
        if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in env.items())):
            raise UsageError("the request's environment is malformed",
                             hint="upgrade the glassbreak client to match the daemon")
        degraded = tuple(str(d) for d in body.get("degraded") or ())
        if degraded and uid != 0:
            raise GlassbreakError(
                f"--degraded {','.join(degraded)} is refused: only root may switch a layer off "
                f"through the daemon (you are uid {uid})",
                hint="run without --degraded, or ask an administrator to run it as root")
        cwd = _fd_cwd(fds[3], body.get("cwd")) if len(fds) == 4 else \
            _caller_cwd(pid, body.get("cwd"))
        from sandbox.run.caller import authorize_run

        asked_agent, asked_profile = body.get("agent"), body.get("profile")
        ident = authorize_run(uid, agent=asked_agent if isinstance(asked_agent, str) else None,
                              profile=asked_profile if isinstance(asked_profile, str) else None,
                              cwd=cwd)
        wait: float | None = None
        if body.get("wait") is not None:
            from sandbox.policy.profile import parse_duration

            try:
                wait = float(parse_duration(str(body["wait"])))
            except ValueError as e:
                raise GlassbreakError(str(e), hint="e.g. --wait=5m") from None
        mode = body.get("mode") or "enforce"
        if mode not in ("enforce", "monitor"):
            raise UsageError(f"unknown --mode {mode!r}", hint="choose enforce or monitor")
        root = uid == 0
        return RunRequest(
            argv=list(argv), profile=ident.profile, agent=ident.agent,
            reason=body.get("reason") if isinstance(body.get("reason"), str) else None,
            user=ident.user, agent_source=ident.how,
            mode=mode,  # type: ignore[arg-type]
            wait=wait, degraded=degraded, env=dict(env), cwd=cwd,
            stdin=fds[0], stdout=fds[1], stderr=fds[2],
            uid=None if root else uid, gid=None if root else gid,
            groups=None if root else groups,
        )


OWN_STATE_VARS = ("GLASSBREAK_STATE_DIR", "GLASSBREAK_STORE", "GLASSBREAK_PROFILE_PATH")


def _ignored_state_vars(env: dict[str, str]) -> list[str]:
    """The caller's state settings that differ from the daemon's own (and so are not used)."""
    return [f"{v}={env[v]}" for v in OWN_STATE_VARS if env.get(v) and env[v] != os.environ.get(v)]


def _caller_cwd(pid: int, claimed: Any) -> str:
    """The caller's real cwd (the kernel's view); a claimed cwd must be the same directory.
    When the kernel's view cannot be read (the process that connected has exited, e.g. a
    child that connected and left the socket to its parent) nothing is believed: a claimed
    cwd would be entered by root, before the run drops privileges."""
    try:
        real = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        real = None
    if isinstance(claimed, str) and claimed and real is not None:
        try:
            if os.path.samefile(claimed, real):
                return claimed
        except OSError:
            pass
    if real is None:
        raise GlassbreakError(f"could not read the caller's working directory (/proc/{pid}/cwd: "
                              "the process that connected is gone?)",
                              hint="send the request from the process that connected, or pass "
                              "the cwd as an fd (\"cwd_fd\", docs/daemon.md)")
    return real


def _fd_cwd(fd: int, claimed: Any) -> str:
    """The directory of an fd the caller opened (O_PATH is enough: opening `DIR/.` proved it
    may search every component, as chdir needs). A claimed cwd must be the same directory."""
    import stat as stat_

    try:
        st = os.fstat(fd)
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as e:
        raise GlassbreakError(f"the cwd the request carried is unusable ({e.strerror})",
                              hint="pass an O_PATH fd of an existing directory") from None
    if not stat_.S_ISDIR(st.st_mode) or not real.startswith("/") or real.endswith(" (deleted)"):
        raise GlassbreakError("the cwd the request carried is not an existing directory",
                              hint="pass an O_PATH fd of an existing directory")
    if isinstance(claimed, str) and claimed.startswith("/"):
        try:
            if os.path.samefile(claimed, real):
                return real
        except OSError:
            pass
        raise GlassbreakError(f"the claimed cwd {claimed} is not the directory the request "
                              f"carried ({real})", hint=HINT_PROTOCOL)
    return real


class _SocketReport:
    """glassbreak's own events and errors for one run, as JSON lines on the connection
    ("report": "socket"): the caller's stderr then carries only the command's own output."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def _send(self, data: bytes) -> None:
        with self.lock:
            try:
                self.conn.sendall(data)
            except OSError:
                pass  # the client went away; the signal reader ends the run

    def event(self, ev: Any) -> None:
        from sandbox.audit import event_json

        self._send(b'{"event": ' + event_json(ev).encode("utf-8", "surrogateescape") + b"}\n")

    def error(self, e: GlassbreakError) -> None:
        self._send(json.dumps({"error": e.to_dict()}).encode() + b"\n")


def _write_line(fd: int, text: str) -> None:
    try:
        os.write(fd, (text + "\n").encode())
    except OSError:
        pass


def _write_error(fd: int, e: GlassbreakError, output: str) -> None:
    _write_line(fd, json.dumps(e.to_dict()) if output == "json" else e.render())


def _reply_result(conn: socket.socket, result: Any) -> None:
    """The one line that answers a request that is not a run (a decision, an op)."""
    try:
        conn.sendall(json.dumps({"exit_code": 0, "result": result}).encode() + b"\n")
    except OSError:
        pass


def _reply(conn: socket.socket, code: int, *, error: str | None = None,
           hint: str | None = None, ended_by: int | None = None) -> None:
    """The last line of every connection; `error` only when the request itself was refused
    before a run could report on the caller's own stderr; `ended_by` (with "report":
    "socket"): the signal line that ended the run's tree."""
    msg: dict[str, Any] = {"exit_code": code}
    if error:
        msg.update(error=error, hint=hint)
    if ended_by is not None:
        msg["ended_by"] = ended_by
    try:
        conn.sendall(json.dumps(msg).encode() + b"\n")
    except OSError:
        pass


def _cap_malloc_arenas() -> None:
    """Two threads per run (connection, run): glibc would grow up to 8 malloc arenas per core
    as they come and go, each keeping its freed pages. Two arenas hold the daemon's memory
    flat (measured by bench/soak.py)."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def open_socket(path: str | None = None, *, announce: bool = True) -> Daemon:
    """Load the eBPF tracer once and bind the run socket (errors here, in the caller's thread:
    a busy socket or a missing directory is reported at start-up)."""
    from sandbox.kernel.ebpf import ExecTracer

    tracer: Any | None
    try:
        tracer = ExecTracer()
    except Exception as e:  # noqa: BLE001 - runs then fail with the doctor hint (or --degraded)
        print(f"glassbreak daemon: the eBPF tracer could not start ({e}); runs will say so",
              file=sys.stderr, flush=True)
        tracer = None
    network: Any | None = None
    network_error: str | None = None
    try:  # after the tracer: two bcc compiles must not overlap (libbcc chdir()s the process)
        from sandbox.run.network import NetworkService

        network = NetworkService()
    except Exception as e:  # noqa: BLE001 - runs then fail with the doctor hint (or --degraded)
        network_error = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        print(f"glassbreak daemon: the network layer could not start ({network_error}); runs "
              "will say so", file=sys.stderr, flush=True)
    _cap_malloc_arenas()
    d = Daemon(path, tracer=tracer, network=network)
    if network_error:
        d.sup._network_error = network_error  # noqa: SLF001 - not retried at every run
    d.bind()
    if announce:
        print(json.dumps({"socket": d.path, "pid": os.getpid()}), flush=True)
    return d
