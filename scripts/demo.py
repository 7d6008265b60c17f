"""`make demo`: the whole glass-break loop on embedded defaults (SQLite state, a local webhook
receiver, a glassbreak daemon on a private socket), narrated in plain words.

Who is who comes from the kernel, as in production: the agent is unix uid 64900 and the
on-call approver uid 64901 (no accounts are created: `setpriv` switches to the numbers), bound
to `demo-agent` and `sre-oncall` in a demo operator config (agents:, approvers:). Their
commands go through the daemon, which knows their uid from SO_PEERCRED.

  1. an allowed run            kubectl get pods -n prod
  2. a blocked run             kubectl -n prod delete pod web-1   (exit 126, escalation raised)
     the agent cannot pick the relaxed profile by name (exit 125)
  3. the escalation arrives    a real HTTP receiver on 127.0.0.1 verifies the HMAC signature
  4. the approval              the agent cannot approve (not even as someone else); the on-call
                               user does: glassbreak escalations approve ID --ttl 15s
  5. the relaxed run           the same command now runs under the relaxed profile (signed grant)
  6. the expiry                a long-running escalated process is ended when the window closes
  7. the strict run again      blocked again
  8. the audit trail           escalations list, grants list, the audit log
  9. the console               `glassbreak serve` on this demo's state: checked with the on-call
                               approver's token (sign in, the inbox lists the request); then
                               its URL and a ready token. In a terminal it stays up until you
                               press Enter; otherwise the exact command to start it is printed.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
GB = str(VENV_BIN / "glassbreak")
SECRET = "demo-secret-" + os.urandom(8).hex()
# the on-call approver's token: what signs in to the console (and what `--token-file` and the
# HTTP API take); the config keeps only its sha256
APPROVER_TOKEN = "gb-demo-" + secrets.token_urlsafe(18)
STUB = "#!/bin/sh\necho \"stub-kubectl $*\"\n"
received: list[dict[str, object]] = []


def say(text: str) -> None:
    print("\n\033[1m== " + text + "\033[0m", flush=True)


def show(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(cmd).replace(GB, "glassbreak"), flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    for stream in (r.stdout, r.stderr):
        if stream.strip():
            print(textwrap.indent(stream.rstrip(), "  "), flush=True)
    print(f"  (exit {r.returncode})", flush=True)
    return r


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ts = self.headers.get("X-Glassbreak-Timestamp", "")
        sig = self.headers.get("X-Glassbreak-Signature", "")
        expected = "v1=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + body,
                                    hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(sig, expected)
        self.send_response(200 if ok else 401)
        self.end_headers()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        received.append({"ok": ok, "payload": payload,
                         "delivery": self.headers.get("X-Glassbreak-Delivery")})

    def log_message(self, *args: object) -> None:
        return


AGENT_UID, APPROVER_UID = 64900, 64901


def as_uid(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (seccomp user-notification, eBPF, cgroups): sudo make demo")
        return 1
    work = Path(tempfile.mkdtemp(prefix="glassbreak-demo-"))
    work.chmod(0o755)  # the demo's agent and approver uids reach the daemon's socket here
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hook"
    (work / "profiles").mkdir()
    (work / "profiles" / "demo-k8s.yaml").write_text(textwrap.dedent(f"""\
        name: demo-k8s
        description: k8s-readonly, with a webhook to the demo's receiver and a short window
        extends: k8s-readonly
        escalation:
          relaxedProfile: demo-k8s-ops
          ttl: 15s
          maxTtl: 1m
          webhooks:
            - {{url: "{url}", format: generic, secretEnv: GLASSBREAK_DEMO_SECRET}}
        """))
    (work / "profiles" / "demo-k8s-ops.yaml").write_text(textwrap.dedent("""\
        name: demo-k8s-ops
        description: what an approved on-call agent may do for the window (demo)
        extends: k8s-ops-escalated
        relax: true
        exec:
          allow: [/usr/bin/sleep, /bin/sh, /usr/bin/dash]
        """))
    config = work / "config.yaml"  # the operator's: root-owned, not writable by others
    config.write_text(textwrap.dedent(f"""\
        agents:
          demo-agent: {{users: [{AGENT_UID}], profiles: [demo-k8s]}}
        approvers:
          sre-oncall: {{users: [{APPROVER_UID}], tokenSha256: "{hashlib.sha256(
              APPROVER_TOKEN.encode()).hexdigest()}"}}
        """))
    config.chmod(0o644)
    sock = work / "glassbreak.sock"
    daemon_env = dict(os.environ, GLASSBREAK_STATE_DIR=str(work / "state"),
                      GLASSBREAK_PROFILE_PATH=str(work / "profiles"),
                      GLASSBREAK_CONFIG=str(config), GLASSBREAK_DEMO_SECRET=SECRET,
                      PATH="/usr/local/bin:/usr/bin:/bin")
    daemon_env.pop("GLASSBREAK_NO_DAEMON", None)
    daemon_env.pop("GLASSBREAK_STORE", None)
    # the agent and the approver only know the daemon's socket
    user_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_SOCKET": str(sock),
                "LANG": os.environ.get("LANG", "C.UTF-8")}
    # the operator (root) reads the same state in process
    root_env = dict(daemon_env, GLASSBREAK_NO_DAEMON="1")
    stub = Path("/usr/local/bin/kubectl")
    installed = False
    if not stub.exists():
        stub.write_text(STUB)
        stub.chmod(0o755)
        installed = True
    daemon = subprocess.Popen([GB, "serve", "--socket", str(sock), "--no-http"],
                              env=daemon_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd="/")
    try:
        if daemon.stdout is None or not daemon.stdout.readline():
            return _fail("the glassbreak daemon did not start")
        return _story(user_env, root_env, work)
    finally:
        daemon.kill()
        daemon.wait(timeout=10)
        srv.shutdown()
        if installed:
            stub.unlink(missing_ok=True)
        print(f"\n(state of this demo: {work / 'state'})")


def _story(user_env: dict[str, str], root_env: dict[str, str], work: Path) -> int:
    agent, oncall = as_uid(AGENT_UID), as_uid(APPROVER_UID)
    print(f"glassbreak demo: state in {work / 'state'} (SQLite + audit.jsonl), a stub kubectl in "
          "/usr/local/bin, a webhook receiver on 127.0.0.1, a daemon on "
          f"{work / 'glassbreak.sock'}; the agent is uid {AGENT_UID} (demo-agent), the on-call "
          f"approver uid {APPROVER_UID} (sre-oncall), bound in {work / 'config.yaml'}")
    say("1. An allowed run: the agent's default profile (demo-k8s) lets it read")
    r = show([*agent, GB, "run", "--reason", "check pods", "--", "kubectl", "get", "pods", "-n",
              "prod"], user_env)
    if r.returncode != 0:
        return _fail("the allowed run failed")

    say("2. A blocked run: `delete` is a restricted subcommand; the agent gets exit 126")
    r = show([*agent, GB, "run", "--output", "json", "--reason",
              "pod web-1 is wedged, restart it", "--", "kubectl", "-n", "prod", "delete", "pod",
              "web-1"], user_env)
    result = json.loads(r.stderr.strip().splitlines()[-1])
    esc = result.get("escalation_id")
    if r.returncode != 126 or not esc:
        return _fail("the block did not raise an escalation")
    print(f"  -> blocked by {result['rule_id']}; escalation {esc} raised")
    print("  The agent cannot simply ask for the relaxed profile (or a profile file):")
    r = show([*agent, GB, "run", "-p", "demo-k8s-ops", "--", "kubectl", "-n", "prod", "delete",
              "pod", "web-1"], user_env)
    if r.returncode != 125:
        return _fail("the relaxed profile was not refused")

    say("3. The escalation reaches the owner's webhook (signed, verified by the receiver)")
    deadline = time.monotonic() + 15
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    if not received:
        show([GB, "escalations", "deliver"], root_env)
    if not received:
        return _fail("no webhook arrived")
    got = received[-1]
    payload = got["payload"] if isinstance(got["payload"], dict) else {}
    delivered = payload.get("escalation") if isinstance(payload.get("escalation"), dict) else {}
    print(f"  receiver: {payload.get('event')} delivery {got['delivery']}, signature "
          f"{'OK' if got['ok'] else 'BAD'}: escalation {delivered.get('id')} by agent "
          f"{delivered.get('agent')} for {delivered.get('argv')!r}, owners "
          f"{delivered.get('owners')}")
    if not got["ok"] or delivered.get("id") != esc or not delivered.get("owners"):
        return _fail("the webhook that arrived does not carry this escalation (id, owners)")
    show([GB, "escalations", "show", esc], root_env)

    say("4. The agent cannot approve itself, nor claim to be the approver; sre-oncall approves")
    show([*agent, GB, "escalations", "approve", esc], user_env)
    show([*agent, GB, "escalations", "approve", esc, "--as", "sre-oncall"], user_env)
    r = show([*oncall, GB, "escalations", "approve", esc, "--ttl", "15s", "--reason",
              "restart is safe, incident 42"], user_env)
    if r.returncode != 0:
        return _fail("the approval failed")

    say("5. The relaxed run: the same command now runs under demo-k8s-ops (a signed grant)")
    r = show([*agent, GB, "run", "--", "kubectl", "-n", "prod", "delete", "pod", "web-1"],
             user_env)
    if r.returncode != 0:
        return _fail("the relaxed run failed")

    say("6. The expiry: a long-running escalated process is ended when the window closes")
    t0 = time.monotonic()
    show([*agent, GB, "run", "--", "sh", "-c", "sleep 60"], user_env)
    print(f"  (ended after {time.monotonic() - t0:.1f} s, at the end of the grant's window)")

    say("7. The strict profile again: the same delete is blocked")
    r = show([*agent, GB, "run", "--", "kubectl", "-n", "prod", "delete", "pod", "web-1"],
             user_env)
    if r.returncode != 126:
        return _fail("the run after expiry was not blocked")

    say("8. The audit trail")
    show([GB, "escalations", "list"], root_env)
    show([GB, "grants", "list", "--all"], root_env)
    audit = Path(root_env["GLASSBREAK_STATE_DIR"]) / "audit.jsonl"
    kinds: dict[str, int] = {}
    for line in audit.read_text().splitlines():
        t = json.loads(line).get("type", "?")
        kinds[t] = kinds.get(t, 0) + 1
    print(f"  {audit}: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    print("\nDone: allowed, blocked, refused, escalated, approved, relaxed, expired, strict "
          "again.")
    return _console(root_env, esc)


def _free_port(preferred: int = 8787) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _console_check(base: str, esc: str) -> str | None:
    """Sign in with the approver token the way a browser does; None when the inbox lists the
    demo's escalation, else what went wrong."""
    jar = urllib.request.HTTPCookieProcessor()
    opener = urllib.request.build_opener(jar)
    try:
        page = opener.open(base + "/signin", timeout=5).read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        if not csrf:
            return "the sign-in page has no form"
        body = urllib.parse.urlencode({"csrf": csrf.group(1), "token": APPROVER_TOKEN,
                                       "next": "/escalations"}).encode()
        inbox = opener.open(urllib.request.Request(base + "/signin", data=body),  # noqa: S310
                            timeout=5).read().decode()
    except (OSError, urllib.error.HTTPError) as e:
        return f"{type(e).__name__}: {e}"
    if esc not in inbox:
        return "signed in, but the inbox does not list " + esc
    first = re.search(r'href="/escalations/(esc-[0-9a-f]+)"', inbox)  # pending first
    NEWEST[0] = first.group(1) if first else esc
    return None


NEWEST = [""]  # the request at the top of the console's inbox


def _console(root_env: dict[str, str], esc: str) -> int:
    say("9. The console: the same requests, grants and audit log, for the people who decide")
    env = {k: root_env[k] for k in ("GLASSBREAK_STATE_DIR", "GLASSBREAK_PROFILE_PATH",
                                    "GLASSBREAK_CONFIG")}
    port = _free_port()
    cmd = [GB, "serve", "--no-socket", "--port", str(port)]
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + \
        shlex.join(cmd).replace(GB, str(Path(GB).resolve()))
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, problem = time.monotonic() + 20, "it did not start"
        while time.monotonic() < deadline and proc.poll() is None:
            problem = _console_check(base, esc) or ""
            if not problem:
                break
            time.sleep(0.2)
        if problem:
            return _fail(f"the console on {base}: {problem}")
        print(f"  checked: signed in with sre-oncall's token, the inbox lists {esc}")
        esc = NEWEST[0] or esc
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        if interactive:
            print(f"\n  Console:  {base}/signin\n  Token:    {APPROVER_TOKEN}   "
                  f"(sre-oncall)\n  Request:  {base}/escalations/{esc}\n")
            try:
                input("  The console runs until you press Enter. ")
            except (EOFError, KeyboardInterrupt):
                print()
            return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"\n  Open the console on this demo's state (as root):\n    {shown}\n"
          f"  then {base}/signin with the token {APPROVER_TOKEN} (sre-oncall)\n"
          f"  and see {base}/escalations/{esc}")
    return 0


def _fail(why: str) -> int:
    print(f"\ndemo FAILED: {why}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if shutil.which("true") is None:
        sys.exit("coreutils missing")
    sys.exit(main())
