"""Helpers and fixtures for the escalation tests: both stores, a service recording its
events, a block context factory, and a tiny real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from escalation.backends import open_store
from escalation.config import ApproverToken, Config
from escalation.models import BlockContext
from escalation.service import EscalationService
from escalation.store import Store
from sandbox.policy.profile import AutoApprove, Webhook
from tests.conftest import free_port

SECRET = "whsec-test-0123456789"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        srv = request.getfixturevalue("redis_server")
        return str(srv.url)
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


class Recorder(list[Any]):
    def of(self, type_: str) -> list[Any]:
        return [e for e in self if e.type == type_]


@pytest.fixture
def events() -> Recorder:
    return Recorder()


def make_config(**kw: Any) -> Config:
    return Config(approverTokens={"alice": ApproverToken(
        tokenSha256=hashlib.sha256(b"alice-token").hexdigest())}, **kw)


@pytest.fixture
def svc(store: Store, events: Recorder) -> EscalationService:
    return EscalationService(store, emit=events.append, config=make_config())


def block_ctx(**kw: Any) -> BlockContext:
    base: dict[str, Any] = dict(
        agent="agent-7", host="host-a", profile="k8s-readonly", profile_hash="ab" * 32,
        owners=["alice", "bob"], layer="pre-check", rule_id="safeBins.kubectl.restricted",
        rule_reason="delete needs an escalation", argv=["kubectl", "-n", "prod", "delete",
                                                        "pod", "x"],
        binary="/usr/local/bin/kubectl", binary_sha256="cd" * 32, cwd="/srv/app",
        env={"PATH": "/usr/bin", "GITHUB_TOKEN": "ghp_abc", "HOME": "/root"},
        ancestry=[{"pid": 1, "argv": ["agent"]}], recent_execs=[{"argv": ["ls"]}],
        agent_reason="pod is stuck", run_id="run-1", relaxed_profile="k8s-ops",
        ttl_default=300, max_ttl=1800, pending_ttl=1800)
    base.update(kw)
    return BlockContext(**base)


@pytest.fixture
def ctx_factory() -> Callable[..., BlockContext]:
    return block_ctx


class Receiver:
    """A real HTTP receiver. mode: ok | fail (HTTP 500) | hang (hold the request)."""

    def __init__(self, port: int | None = None, secret: str = SECRET) -> None:
        self.port = port or free_port()
        self.secret = secret
        self.mode = "ok"
        self.got: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        # the receiver's lines from docs/escalation.md
        ts = headers["X-Glassbreak-Timestamp"]
        want = "v1=" + hmac.new(self.secret.encode(), f"{ts}.".encode() + body,
                                hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, headers["X-Glassbreak-Signature"]) and \
            abs(time.time() - int(ts)) < 300

    def start(self) -> Receiver:
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hdrs = {k: v for k, v in self.headers.items()}
                entry = {"headers": hdrs, "body": body, "json": json.loads(body),
                         "valid": rec.verify(hdrs, body), "mode": rec.mode}
                rec.got.append(entry)
                rec.arrived.set()
                if rec.mode == "hang":
                    rec.release.wait(30)
                    return
                code = 500 if rec.mode == "fail" else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("GB_TEST_WEBHOOK_SECRET", SECRET)
    r = Receiver()
    yield r
    r.stop()


def hook(url: str, fmt: str = "generic") -> Webhook:
    return Webhook(url=url, format=fmt, secretEnv="GB_TEST_WEBHOOK_SECRET",  # type: ignore[arg-type]
                   timeout=2.0)


__all__ = ["AutoApprove", "Receiver", "block_ctx", "hook", "make_config", "SECRET"]


class Serve:
    """A real `glassbreak serve --no-socket` process (its own state dir and config), ended by
    pid. `base` is its URL; `svc` reads and writes the same store in this process."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), host: str = "127.0.0.1",
                 prefix: tuple[str, ...] = ()) -> None:
        import os
        import subprocess

        from tests.conftest import GLASSBREAK, free_port

        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))
        self.config_path.chmod(0o644)
        self.store_url = f"sqlite:///{self.state / 'state.db'}"
        self.port = free_port()
        self.base = f"http://{host}:{self.port}"
        self.env = {"GLASSBREAK_STATE_DIR": str(self.state), "GLASSBREAK_STORE": self.store_url,
                    "GLASSBREAK_CONFIG": str(self.config_path),
                    "PATH": "/usr/local/bin:/usr/bin:/bin", "GB_TEST_WEBHOOK_SECRET": SECRET,
                    **(env or {})}
        self.log = workdir / "serve.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [*prefix, GLASSBREAK, "serve", "--no-socket", "--host", host, "--port",
                 str(self.port), *args], env={**self.env, "HOME": os.environ.get("HOME", "/root")},
                stdout=out, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.base + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "glassbreak serve did not come up"
            time.sleep(0.1)
        from sandbox.audit import AuditLog

        self.svc = EscalationService(open_store(self.store_url),
                                     audit=AuditLog(self.state / "audit.jsonl"),
                                     config=Config.model_validate(config))

    def audit(self) -> list[dict[str, Any]]:
        p = self.state / "audit.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def written(self) -> int:
        """Bytes in the audit log and the store (with its WAL): what a request wrote."""
        return sum(p.stat().st_size for p in self.state.iterdir()
                   if p.name.startswith(("audit.jsonl", "state.db")))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait()


def token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
