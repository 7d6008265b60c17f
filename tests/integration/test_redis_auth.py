"""Redis with a password, an ACL user and TLS (issue 9): a real redis-server started here on a
free loopback port (ended by pid), certificates made here with openssl. The store refuses to
work unauthenticated, never shows the password, and `glassbreak doctor` warns about a Redis
URL without one."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from escalation.backends import open_store
from escalation.service import EscalationService
from sandbox.errors import StoreError
from tests.conftest import free_port, require
from tests.escalation.helpers import block_ctx, make_config

pytestmark = pytest.mark.redis

DEFAULT_PW = "default-pw-7f3a"
GB_PW = "gb-acl-pw-91c2"


def _redis(args: list[str], workdir: Path, port: int, tls: Path | None = None
           ) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    require(exe is not None, "redis-server is not installed (make setup installs it)")
    assert exe is not None
    proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), "--requirepass", DEFAULT_PW,
                             "--user", "gb", "on", f">{GB_PW}", "~gb:*", "&gb:*", "+@all",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"redis-server exited: {err[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                if tls is not None:
                    ctx = ssl.create_default_context(cafile=str(tls))
                    with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                        t.sendall(b"PING\r\n")
                        if t.recv(64):
                            return proc
                else:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return proc
        except (OSError, ssl.SSLError):
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start within 10 s")


@pytest.fixture
def authed(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = _redis(["--port", str(port)], tmp_path, port)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def certs(d: Path) -> Path:
    require(shutil.which("openssl") is not None, "openssl is not installed")

    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d, timeout=30)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
         "-subj", "/CN=glassbreak-test-ca")
    ossl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    (d / "server.key").chmod(0o644)  # redis-server reads it
    return d / "ca.crt"


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca = certs(tmp_path)
    port = free_port()
    proc = _redis(["--port", "0", "--tls-port", str(port), "--tls-cert-file",
                   str(tmp_path / "server.crt"), "--tls-key-file", str(tmp_path / "server.key"),
                   "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"], tmp_path, port,
                  tls=ca)
    try:
        yield port, ca
    finally:
        proc.kill()
        proc.wait(timeout=10)


def roundtrip(url: str) -> None:
    """A full escalation -> signed grant -> honoured cycle through this store."""
    svc = EscalationService(open_store(url), emit=lambda e: None, config=make_config())
    rec = svc.raise_block(block_ctx(), inline_budget_s=0)
    svc.decide(rec.id, approve=True, by="alice")
    g = svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=block_ctx().argv,
                         cwd="/srv/app", binary_sha256="cd" * 32, relaxed_profile="k8s-ops")
    assert g is not None and g.signature
    svc.store.close()


def test_password_and_acl_user(authed: int, state_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"127.0.0.1:{authed}/0"
    with pytest.raises(StoreError) as e:
        open_store(f"redis://{base}").ping()
    assert "Authentication required" in e.value.message or "NOAUTH" in e.value.message
    with pytest.raises(StoreError) as e:
        open_store(f"redis://gb:wrong-{GB_PW}@{base}").ping()
    assert GB_PW not in e.value.message and "redis://127.0.0.1" in e.value.message
    roundtrip(f"redis://gb:{GB_PW}@{base}")  # the ACL user
    roundtrip(f"redis://:{DEFAULT_PW}@{base}")  # requirepass (the default user)
    # credentials from the operator's config, not the URL (which runs may see in their env)
    pw = tmp_path / "redis.pass"
    pw.write_text(GB_PW + "\n")
    pw.chmod(0o600)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({"redis": {"username": "gb", "passwordFile": str(pw)}}))
    monkeypatch.setenv("GLASSBREAK_CONFIG", str(cfg))
    roundtrip(f"redis://{base}")
    # the ACL user is confined to glassbreak's keys
    import redis

    r = redis.Redis(host="127.0.0.1", port=authed, username="gb", password=GB_PW)
    with pytest.raises(redis.exceptions.NoPermissionError):
        r.set("other-app:key", "1")
    r.close()


def test_tls(tls: tuple[int, Path], state_dir: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> None:
    port, ca = tls
    base = f"127.0.0.1:{port}/0"
    roundtrip(f"rediss://gb:{GB_PW}@{base}?ssl_ca_certs={ca}")
    with pytest.raises(StoreError) as e:  # the server's certificate is not trusted
        open_store(f"rediss://gb:{GB_PW}@{base}").ping()
    assert "certificate verify failed" in e.value.message or "SSL" in e.value.message
    with pytest.raises(StoreError):  # plain text to a TLS port
        open_store(f"redis://gb:{GB_PW}@{base}").ping()
    cfg = tmp_path / "config.yaml"
    pw = tmp_path / "redis.pass"
    pw.write_text(GB_PW)
    pw.chmod(0o600)
    cfg.write_text(json.dumps({"redis": {"username": "gb", "passwordFile": str(pw),
                                         "sslCaCerts": str(ca)}}))
    monkeypatch.setenv("GLASSBREAK_CONFIG", str(cfg))
    roundtrip(f"rediss://{base}")


def test_doctor_warns_about_unauthenticated_redis(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    from sandbox.cli.doctor import check_store_auth, doctor_command

    monkeypatch.delenv("GLASSBREAK_CONFIG", raising=False)
    monkeypatch.setenv("GLASSBREAK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GLASSBREAK_STORE", "redis://127.0.0.1:6390/0")
    c = check_store_auth()
    assert not c.ok and c.warn and "has no password" in c.detail
    assert c.line().startswith("WARNING  store auth")
    out = CliRunner().invoke(doctor_command, ["--output", "json"]).output
    got = {x["name"]: x for x in json.loads(out)["checks"]}["store auth"]
    assert got["warn"] and not got["ok"]
    monkeypatch.setenv("GLASSBREAK_STORE", "redis://gb:secret@10.0.0.5:6379/0")
    c = check_store_auth()
    assert c.warn and "clear text" in c.detail and "secret" not in c.detail
    for ok in ("rediss://gb:secret@10.0.0.5:6379/0", "redis://:pw@127.0.0.1:6379/0"):
        monkeypatch.setenv("GLASSBREAK_STORE", ok)
        assert check_store_auth().ok
    monkeypatch.delenv("GLASSBREAK_STORE")
    assert check_store_auth().ok
