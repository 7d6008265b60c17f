"""Escalation latency, measured with real processes on one machine:

  host A = a `glassbreak serve --socket --no-http` daemon (runs) + an EscalationService in this
           process (what A's supervisor asks: active_grant / grant_status / revocation push);
  host B = a `glassbreak serve --host 127.0.0.1 --port P` process (the approval API);
  one redis-server on 127.0.0.1 shared by both (GLASSBREAK_STORE); a webhook receiver on
  127.0.0.1 that verifies the HMAC signature and records the arrival time.

Per repetition (a fresh escalation each time, unique argv):
  block_to_webhook     blocked run on A: the escalation record's created_at -> webhook arrival
  run_to_webhook       `glassbreak run` started -> webhook arrival (client start-up included)
  approve_to_grant     signed POST to B's API sent -> active_grant() on A returns the grant
  approve_to_run_ok    the same POST -> a `glassbreak run` on A started then exits 0 (relaxed)
  revoke_to_push       signed revoke POST to B sent -> A's subscribe_revocations callback
  revoke_to_status     the same -> grant_status() on A says "revoked"
  revoke_to_session_end the same -> a session running on A under the grant has ended

    .venv/bin/python bench/latency.py [--reps 5] [--json]

The two-network-namespace version of the same flow is tests/integration/test_multihost.py.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemons import GLASSBREAK, DaemonProc, start_daemon  # noqa: E402

WEBHOOK_SECRET = "lat-webhook-" + secrets.token_hex(8)
DECISION_SECRET = "lat-decision-" + secrets.token_hex(8)
AGENT = "bench-agent"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A real webhook receiver: verifies the signature, records (arrival time, escalation id)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.bad = 0
        self.cond = threading.Condition()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                t = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ts = self.headers.get("X-Glassbreak-Timestamp", "")
                want = "v1=" + hmac.new(WEBHOOK_SECRET.encode(), ts.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(want, self.headers.get("X-Glassbreak-Signature", ""))
                self.send_response(200 if ok else 401)
                self.end_headers()
                try:
                    esc = json.loads(body)["escalation"]["id"]
                except (ValueError, KeyError, TypeError):
                    esc = None
                with outer.cond:
                    if ok and esc:
                        outer.arrivals.setdefault(esc, t)
                    else:
                        outer.bad += 1
                    outer.cond.notify_all()

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def wait(self, esc: str, timeout: float = 10) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: esc in self.arrivals, timeout)
            return self.arrivals.get(esc)

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (make setup installs it)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("redis-server did not start within 10 s")


def _grant_keypair(d: Path) -> tuple[Path, Path]:
    """An Ed25519 grant signing keypair in d: (private key 0600, public key 0644)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    key, pub = d / "grant-signing.key", d / "grant-signing.pub"
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    key.chmod(0o600)
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    pub.chmod(0o644)
    return key, pub


def post_signed(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from escalation.signing import sign_headers

    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers=sign_headers(DECISION_SECRET, data))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own 127.0.0.1
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except ValueError:
            return e.code, {"error": raw.decode(errors="replace")[:500]}


class Setup:
    def __init__(self, glassbreak: str = GLASSBREAK) -> None:
        self.glassbreak = glassbreak
        self.work = Path(tempfile.mkdtemp(prefix="gb-latency-"))
        os.chmod(self.work, 0o755)
        self.out = self.work / "out"
        self.out.mkdir()
        self.recv = Receiver()
        self.redis: subprocess.Popen[bytes] | None = None
        self.daemons: list[DaemonProc] = []
        pdir = self.work / "profiles"
        pdir.mkdir()
        (pdir / "lat-strict.yaml").write_text(
            "name: lat-strict\nextends: readonly\nowners: [alice, bob]\nescalation:\n"
            "  relaxedProfile: lat-ops\n  ttl: 5m\n  maxTtl: 10m\n  webhooks:\n"
            f"    - {{url: 'http://127.0.0.1:{self.recv.port}/hook', format: generic, "
            "secretEnv: GB_LAT_WEBHOOK_SECRET}\n")
        (pdir / "lat-ops.yaml").write_text(
            "name: lat-ops\nextends: readonly\nrelax: true\n"
            "exec:\n  allow: [/usr/bin/touch, sh, dash, sleep]\n")
        # B decides (it holds the grant signing key); A only runs and verifies with the public
        # half (docs/multihost.md). Decisions: HMAC via the env secret.
        key, pub = _grant_keypair(self.work)
        self.etc = self.work / "etc"  # beside the runs' dirs: a config's dir is never writable
        self.etc.mkdir()
        (self.etc / "config-a.yaml").write_text(json.dumps(
            {"grantSigning": {"publicKeyFile": str(pub)}}))
        (self.etc / "config-b.yaml").write_text(json.dumps(
            {"grantSigning": {"privateKeyFile": str(key), "publicKeyFile": str(pub)}}))
        self.events: list[object] = []  # what A's in-process service would audit
        try:
            self.redis, self.store = start_redis(self.work)
            base = dict(os.environ, GLASSBREAK_STORE=self.store,
                        GLASSBREAK_PROFILE_PATH=str(pdir),
                        GLASSBREAK_DECISION_SECRET=DECISION_SECRET,
                        GB_LAT_WEBHOOK_SECRET=WEBHOOK_SECRET)
            a, b = self.work / "a", self.work / "b"
            a.mkdir()
            b.mkdir()
            self.a = start_daemon(a, glassbreak=glassbreak,
                                  env=dict(base, GLASSBREAK_STATE_DIR=str(a / "state"),
                                           GLASSBREAK_CONFIG=str(self.etc / "config-a.yaml")))
            self.daemons.append(self.a)
            port = _free_port()
            self.b = start_daemon(b, glassbreak=glassbreak, http=("127.0.0.1", port),
                                  env=dict(base, GLASSBREAK_STATE_DIR=str(b / "state"),
                                           GLASSBREAK_CONFIG=str(self.etc / "config-b.yaml")))
            self.daemons.append(self.b)
            self.api_b = f"http://127.0.0.1:{port}"
            from escalation.backends import open_store
            from escalation.service import EscalationService
            from sandbox.config import load_config

            saved = os.environ.get("GLASSBREAK_CONFIG")
            os.environ["GLASSBREAK_CONFIG"] = str(self.etc / "config-a.yaml")
            try:
                config_a = load_config()
            finally:
                if saved is None:
                    os.environ.pop("GLASSBREAK_CONFIG", None)
                else:
                    os.environ["GLASSBREAK_CONFIG"] = saved
            self.svc_a = EscalationService(open_store(self.store), config=config_a,
                                           emit=self.events.append)
        except BaseException:
            self.close()
            raise

    def run_env(self) -> dict[str, str]:
        env = dict(os.environ, GLASSBREAK_SOCKET=str(self.a.sock), GLASSBREAK_AGENT=AGENT,
                   PATH="/usr/local/bin:/usr/bin:/bin")
        env.pop("GLASSBREAK_NO_DAEMON", None)
        return env

    def run_a(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.glassbreak, "run", "-o", "json", "-p", "lat-strict", "--",
                               *argv], capture_output=True, text=True, env=self.run_env(),
                              cwd=self.out, timeout=60)  # writable in a run: its cwd

    def close(self) -> None:
        for d in self.daemons:
            d.stop()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(timeout=10)
        self.recv.close()
        shutil.rmtree(self.work, ignore_errors=True)


def one_rep(s: Setup, i: int) -> dict[str, float]:
    m: dict[str, float] = {}
    target = s.out / f"f-{i}-{secrets.token_hex(3)}"
    # 1. block on A -> webhook
    t_run = time.time()
    r = s.run_a("/usr/bin/touch", str(target))
    if r.returncode != 126:
        raise RuntimeError(f"expected a block (126), got {r.returncode}: {r.stderr[-500:]}")
    esc = json.loads(r.stderr.strip().splitlines()[-1])["escalation_id"]
    arrived = s.recv.wait(esc)
    if arrived is None:
        raise RuntimeError(f"webhook for {esc} not received within 10 s")
    m["run_to_webhook"] = arrived - t_run
    rec = s.svc_a.store.get_escalation(esc)  # created when the block was judged
    if rec is not None:
        m["block_to_webhook"] = arrived - rec.created_at

    # 2. approve on B -> grant seen on A
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            g = s.svc_a.active_grant(agent=AGENT, profile="lat-strict",
                                     argv=["/usr/bin/touch", str(target)], cwd=str(s.out))
            if g is not None:
                seen["t"] = time.monotonic()
                return
            time.sleep(0.002)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.monotonic()
    st, body = post_signed(f"{s.api_b}/api/escalations/{esc}/decision",
                           {"escalation_id": esc, "decision": "approve", "approver": "bob",
                            "ttl": "5m", "reason": "latency bench"})
    if st != 200:
        raise RuntimeError(f"approval through B refused ({st}): {body}")
    grant_id = body.get("grant_id")
    th.join(10)
    stop.set()
    if "t" not in seen:
        rejected = [getattr(e, "why", "") for e in s.events
                    if getattr(e, "type", "") == "grant_rejected"]
        raise RuntimeError("the grant never became visible on A"
                           + (f" (rejected there: {rejected[-1]})" if rejected else ""))
    m["approve_to_grant"] = seen["t"] - t0
    r = s.run_a("/usr/bin/touch", str(target))
    m["approve_to_run_ok"] = time.monotonic() - t0
    if r.returncode != 0 or not target.exists():
        raise RuntimeError(f"the run on A was not allowed after approval: {r.stderr[-500:]}")

    # 3. revoke on B -> push, status, running session ended on A
    marker = s.out / f"during-{i}"
    sess = subprocess.Popen([s.glassbreak, "run", "-o", "json", "-p", "lat-strict", "--", "sh",
                             "-c", f"/usr/bin/touch {marker}; sleep 30"], env=s.run_env(),
                            cwd=s.out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not marker.exists():
            raise RuntimeError("the session under the grant did not start on A")
        pushed: dict[str, float] = {}

        def on_revoked(gid: str) -> None:
            pushed.setdefault(gid, time.monotonic())

        unsub = s.svc_a.subscribe_revocations(on_revoked)
        # let the subscription settle, then revoke at a random phase of A's grant poll
        time.sleep(0.3 + random.uniform(0.0, 1.0))  # noqa: S311 - not crypto
        t0 = time.monotonic()
        st, body = post_signed(f"{s.api_b}/api/grants/{grant_id}/revoke",
                               {"grant_id": grant_id, "by": "bob", "reason": "bench"})
        if st != 200:
            raise RuntimeError(f"revocation through B refused ({st}): {body}")
        while s.svc_a.grant_status(str(grant_id)) != "revoked":
            time.sleep(0.002)
        m["revoke_to_status"] = time.monotonic() - t0
        sess.wait(timeout=20)
        m["revoke_to_session_end"] = time.monotonic() - t0
        deadline = time.monotonic() + 2
        while grant_id not in pushed and time.monotonic() < deadline:
            time.sleep(0.002)
        unsub()
        if grant_id in pushed:
            m["revoke_to_push"] = pushed[str(grant_id)] - t0
        if sess.returncode != 128 + 9:
            raise RuntimeError(f"the session on A was not ended by the revocation "
                               f"(exit {sess.returncode})")
    finally:
        if sess.poll() is None:
            sess.kill()
            sess.wait()
    return m


def measure(reps: int = 5, glassbreak: str = GLASSBREAK) -> dict[str, Any]:
    s = Setup(glassbreak)
    samples: dict[str, list[float]] = {}
    try:
        for i in range(reps):
            for k, v in one_rep(s, i).items():
                samples.setdefault(k, []).append(v)
    finally:
        s.close()
    out: dict[str, Any] = {"reps": reps, "bad_webhook_signatures": s.recv.bad}
    for k, vs in samples.items():
        ms = sorted(v * 1000 for v in vs)
        out[k + "_ms"] = {"median": round(statistics.median(ms), 1), "min": round(ms[0], 1),
                          "max": round(ms[-1], 1), "n": len(ms)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--glassbreak", default=GLASSBREAK)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.reps, a.glassbreak)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"escalation latency ({res['reps']} reps; medians, min..max):")
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"  {k[:-3]:<24} {v['median']:>8.1f} ms   ({v['min']:.1f} .. {v['max']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
