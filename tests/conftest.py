"""Shared fixtures. Kernel and Redis tests never silently skip in CI:
GLASSBREAK_REQUIRE_KERNEL=1 (set by `make test` and .ci/run) turns every `require()` skip into
a failure, so a missing feature is a red build, not a hole nobody sees."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GLASSBREAK = str(VENV_BIN / "glassbreak")
REQUIRE = os.environ.get("GLASSBREAK_REQUIRE_KERNEL") == "1"


try:  # property tests: reproducible in CI (same examples every run), random elsewhere
    from hypothesis import settings as _hsettings

    _hsettings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI") or REQUIRE:
        _hsettings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


def pytest_configure(config: pytest.Config) -> None:
    """Tests run glassbreak in process unless they start their own daemon: a glassbreak daemon
    already serving this host (its own state dir and store) must never answer a test's runs."""
    os.environ["GLASSBREAK_SOCKET"] = "/nonexistent/glassbreak-tests.sock"


def require(condition: bool, why: str) -> None:
    """Skip when `condition` is false, or fail when GLASSBREAK_REQUIRE_KERNEL=1."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"required feature missing (GLASSBREAK_REQUIRE_KERNEL=1): {why}")
    pytest.skip(why)


def is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture
def root_required() -> None:
    require(is_root(), "needs root (seccomp user-notification, eBPF, cgroups)")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir (audit log, SQLite store) for one test."""
    d = tmp_path / "state"
    d.mkdir()
    monkeypatch.setenv("GLASSBREAK_STATE_DIR", str(d))
    return d


def load_bench(name: str) -> Any:
    """A module of bench/ (not a package), imported without leaving bench/ on sys.path."""
    import importlib

    sys.path.insert(0, str(REPO / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.proc, self.port, self.workdir = proc, port, workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_redis(workdir: Path) -> RedisServer:
    exe = shutil.which("redis-server")
    require(exe is not None, "redis-server is not installed (make setup installs it)")
    assert exe is not None
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return RedisServer(proc, port, workdir)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start within 10 s")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, ended by pid when the test ends."""
    d = tmp_path / "redis"
    d.mkdir()
    srv = start_redis(d)
    try:
        yield srv
    finally:
        srv.stop()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            input: bytes | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `glassbreak` console script as a real process."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [GLASSBREAK, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
        input=input.decode() if input else None, cwd=cwd,
    )


def grant_keypair(d: Path) -> tuple[Path, Path]:
    """An Ed25519 grant signing keypair in d: (private key, root 0600; public key, 0644)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    key, pub = d / "grant-signing.key", d / "grant-signing.pub"
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    key.chmod(0o600)
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    pub.chmod(0o644)
    return key, pub


STUB = "#!/bin/sh\necho \"stub-kubectl $*\"\n"


@pytest.fixture
def stub_kubectl() -> Iterator[Path]:
    """A stub kubectl installed where a real one would be (/usr/local/bin, a trusted dir);
    removed afterwards. A pre-existing real kubectl is never touched."""
    require(is_root(), "the runner needs root for seccomp user-notification, eBPF, cgroups")
    import fcntl

    # one machine-wide path: test sessions running at the same time (several checkouts) take
    # turns, so that one never removes the stub under another
    lock = open("/run/glassbreak-test-kubectl.lock", "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    k = Path("/usr/local/bin/kubectl")
    try:
        if k.exists() and k.read_text(errors="replace") != STUB:
            pytest.fail(f"{k} exists and is not glassbreak's test stub; refusing to replace it")
        k.write_text(STUB)
        k.chmod(0o755)
        yield k
    finally:
        k.unlink(missing_ok=True)
        lock.close()
