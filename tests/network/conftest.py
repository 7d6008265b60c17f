"""Fixtures of the network tests: test hosts in `ip netns`, a local DNS server (the resolver's
upstream), the kernel objects (exec tracer + network service, loaded once per session) and a
runner that executes real glassbreak runs in process (the daemon's code path: one Supervisor
around shared kernel objects) and returns their exit code, output, events and escalations.

Nothing here reaches an outside address: the test hosts live in network namespaces that the
session creates and deletes (veth pair 10.99.0.0/24 + fd99:99::/64), the DNS server listens on
127.0.0.1, and every process a test starts is ended by pid (or its run's cgroup)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import is_root, require
from tests.network.dnsfixture import DNSFixture

HERE = Path(__file__).resolve().parent
PY = "/usr/bin/python3"
_TAG = str(os.getpid())
NS_HOST, NS_ISO = f"gbn{_TAG}h", f"gbn{_TAG}i"
VETH = f"gbv{_TAG}"
HOST4, HOST4B, HOST6 = "10.99.0.2", "10.99.0.3", "fd99:99::2"
TCP_PORTS = [80, 443, 5432, 6379, 8080, 8443, 9000]
UDP_PORTS = [9999]
N_MULTI = 20  # hosts 10.99.0.10.. for the concurrent-runs test
LOCK = "/run/glassbreak-test-netns.lock"  # test sessions of several checkouts take turns

ZONE: dict[str, list[tuple[str, str, int]]] = {
    "web.test": [("A", HOST4, 60), ("AAAA", HOST6, 60)],
    "db.test": [("A", HOST4B, 60)],
    "short.test": [("A", HOST4, 1)],
    "secret.test": [("A", HOST4, 60), ("TXT", "s3cr3t", 60)],
    "alias.test": [("CNAME", "web.test", 60)],
    "badalias.test": [("CNAME", "evil.test", 60)],
    "evil.test": [("A", HOST4B, 60)],
    "partial.test": [("CNAME", "cdn.web.test", 60)],
    "cdn.web.test": [("A", HOST4B, 60)],
    "meta.test": [("A", "169.254.169.254", 60), ("A", HOST4, 60)],
    "loop.test": [("A", "127.0.0.1", 60)],
    "granted.test": [("A", HOST4B, 60)],
    **{f"n{i}.test": [("A", f"10.99.0.{10 + i}", 60)] for i in range(N_MULTI)},
}


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _netns_down() -> None:
    for ns in (NS_HOST, NS_ISO):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", VETH + "a", check=False)


def _stale_down() -> None:
    """Namespaces and veths of a test session that was killed before its teardown (its
    10.99.0.1 would shadow ours): names made by this file (gbn<pid>h|i, gbv<pid>a) whose
    process is gone. Called under LOCK, which a live session holds for its whole length."""
    def dead(pid: str) -> bool:  # a session of another root (a chroot) has its own lock
        return not os.path.exists(f"/proc/{pid}")

    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        m = re.fullmatch(r"gbn(\d+)[hi]", line.split()[0] if line.split() else "")
        if m and dead(m.group(1)):
            sh("ip", "netns", "del", m.group(0), check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        m = re.match(r"\d+: (gbv(\d+)a)[@:]", line)
        if m and dead(m.group(2)):
            sh("ip", "link", "del", m.group(1), check=False)


@pytest.fixture(scope="session")
def netns() -> Iterator[None]:
    """NS_HOST: a test host behind a veth (10.99.0.2, .3, .10-.29, fd99:99::2) running nshost.py
    (TCP echo on TCP_PORTS, UDP echo on 9999, a foreign DNS server on 53 answering 6.6.6.6).
    NS_ISO: an isolated namespace (no route out) holding 169.254.169.254, fd00:ec2::254,
    fe80::1 and 10.77.0.1 with an echo server on 80, for runs whose destination must never be
    reached on a real network even if a hook failed (those runs run inside NS_ISO)."""
    require(is_root(), "network namespaces and the socket hooks need root")
    lock = open(LOCK, "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    _stale_down()
    procs: list[subprocess.Popen[str]] = []
    try:
        sh("ip", "netns", "add", NS_HOST)
        sh("ip", "link", "add", VETH + "a", "type", "veth", "peer", "name", VETH + "b")
        sh("ip", "link", "set", VETH + "b", "netns", NS_HOST)
        sh("ip", "addr", "add", "10.99.0.1/24", "dev", VETH + "a")
        sh("ip", "-6", "addr", "add", "fd99:99::1/64", "dev", VETH + "a", "nodad")
        sh("ip", "link", "set", VETH + "a", "up")
        x = ("ip", "netns", "exec", NS_HOST)
        sh(*x, "ip", "link", "set", "lo", "up")
        for a in [HOST4, HOST4B] + [f"10.99.0.{10 + i}" for i in range(N_MULTI)]:
            sh(*x, "ip", "addr", "add", f"{a}/24", "dev", VETH + "b")
        sh(*x, "ip", "-6", "addr", "add", f"{HOST6}/64", "dev", VETH + "b", "nodad")
        sh(*x, "ip", "link", "set", VETH + "b", "up")
        sh(*x, "sysctl", "-qw", "net.ipv4.tcp_fastopen=3")
        sh("ip", "netns", "add", NS_ISO)
        y = ("ip", "netns", "exec", NS_ISO)
        sh(*y, "ip", "link", "set", "lo", "up")
        sh(*y, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        sh(*y, "ip", "addr", "add", "169.254.169.254/32", "dev", "d0")
        sh(*y, "ip", "-6", "addr", "add", "fd00:ec2::254/128", "dev", "d0", "nodad")
        sh(*y, "ip", "-6", "addr", "add", "fe80::1/64", "dev", "d0", "nodad")
        sh(*y, "ip", "addr", "add", "10.77.0.1/24", "dev", "d0")
        sh(*y, "ip", "link", "set", "d0", "up")
        sh(*y, "ip", "link", "set", "d1", "up")
        for ns, tcp, udp, extra in ((NS_HOST, TCP_PORTS, UDP_PORTS, ["--foreign-dns"]),
                                    (NS_ISO, [80], [], [])):
            p = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-S", str(HERE / "nshost.py"),
                                  ",".join(map(str, tcp)), ",".join(map(str, udp)), *extra],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)
        _netns_down()
        lock.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[DNSFixture]:
    f = DNSFixture(ZONE, cname_only={"partial.test"})
    yield f
    f.close()


@dataclass
class Kernel:
    tracer: Any
    net: Any


@pytest.fixture(scope="session")
def kernel(upstream: DNSFixture) -> Iterator[Kernel]:
    """The exec tracer and the network service, loaded once (as a daemon does)."""
    require(is_root(), "the socket hooks and the exec tracer need root")
    from sandbox.kernel.ebpf import ExecTracer
    from sandbox.run.network import NetworkService

    tracer = ExecTracer()
    net = NetworkService(upstream.addr, resolver_options={"min_ttl": 1, "grace": 1})
    yield Kernel(tracer, net)
    net.close()
    tracer.close()


def client_code(fn: str, *args: Any, **kw: Any) -> str:
    # no bytecode written: the checkout is not writable in a run (a fresh clone has no
    # __pycache__ yet, and the attempt would be a recorded filesystem denial)
    return (f"import sys, json; sys.dont_write_bytecode = True; "
            f"sys.path.insert(0, {str(HERE)!r}); import clientlib; "
            f"print(json.dumps(clientlib.{fn}(*{args!r}, **{kw!r})), flush=True)")


@dataclass
class Ran:
    code: int
    out: str
    emitted: list[Any]
    events: list[dict[str, Any]]
    run_id: str
    result: Any

    @property
    def value(self) -> Any:
        lines = [x for x in self.out.strip().splitlines() if x]
        assert lines, f"no output; exit {self.code}; emitted {self.lines}"
        return json.loads(lines[-1])

    @property
    def lines(self) -> list[str]:
        from sandbox.cli.render import render_text

        return [t for t in (render_text(e) for e in self.emitted) if t]

    def blocked(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "blocked" and e["layer"] == "network"
                and all(e.get(k) == v for k, v in match.items())]

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_
                and all(e.get(k) == v for k, v in match.items())]


@dataclass
class Runner:
    kernel: Kernel
    state: Path
    profiles: Path
    sup: Any = None
    written: dict[str, Path] = field(default_factory=dict)

    def profile(self, name: str, network: dict[str, Any] | None = None, *,
                extra: str = "", relax: bool = False, **fields: Any) -> str:
        """A profile that may run python3 and sh, with this network section (base's
        otherwise), owners alice; escalation ttl 3s (max 1m). relax: replace base's network
        section instead of narrowing it (needed for `default: allow`)."""
        body: dict[str, Any] = {
                "name": name, "extends": "base", "owners": ["alice"], "relax": relax,
                "exec": {"allow": ["python3", "/usr/bin/python3*", "sh", "dash", "cat",
                                   "true", "sleep"]},
                "escalation": {"ttl": "3s", "maxTtl": "1m"}, **fields}
        if network is not None:
            body["network"] = network
        p = self.profiles / f"{name}.yaml"
        p.write_text(json.dumps(body) + "\n" + extra)
        self.written[name] = p
        return str(p)

    def supervisor(self) -> Any:
        if self.sup is None:
            from sandbox.run.supervisor import Supervisor

            self.sup = Supervisor(tracer=self.kernel.tracer, network=self.kernel.net)
        return self.sup

    def run(self, profile: str, argv: list[str], *, agent: str | None = "bot-1",
            mode: str = "enforce", reason: str | None = None, degraded: tuple[str, ...] = (),
            stdin: int | None = None) -> Ran:
        from sandbox.audit import read_events
        from sandbox.run.supervisor import RunRequest

        r_out, w_out = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        chunks: list[bytes] = []

        def reader() -> None:
            while True:
                b = os.read(r_out, 65536)
                if not b:
                    return
                chunks.append(b)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        emitted: list[Any] = []
        try:
            req = RunRequest(argv=argv, profile=profile, agent=agent, reason=reason,
                             mode=mode, degraded=degraded,  # type: ignore[arg-type]
                             env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root"},
                             cwd=str(HERE), stdin=devnull if stdin is None else stdin,
                             stdout=w_out, stderr=devnull)
            res = self.supervisor().run(req, emitted.append)
        finally:
            os.close(w_out)
            os.close(devnull)
        t.join(10)
        os.close(r_out)
        events = list(read_events(run_id=res.run_id))
        return Ran(res.exit_code, b"".join(chunks).decode(errors="replace"), emitted, events,
                   res.run_id, res)

    def call(self, profile: str, fn: str, *args: Any, agent: str | None = "bot-1",
             mode: str = "enforce", **kw: Any) -> Ran:
        return self.run(profile, [PY, "-S", "-c", client_code(fn, *args, **kw)], agent=agent,
                        mode=mode)

    def start(self, profile: str, fn: str, *args: Any, **kw: Any) -> Background:
        """A run in a thread (e.g. holding a connection open); .wait() -> Ran."""
        bg = Background()

        def go() -> None:
            try:
                bg.ran = self.call(profile, fn, *args, **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised by wait()
                bg.error = e

        bg.thread = threading.Thread(target=go, daemon=True)
        bg.thread.start()
        return bg

    def escalations(self) -> Any:
        from escalation.service import EscalationService

        return EscalationService.from_env()


@dataclass
class Background:
    thread: threading.Thread | None = None
    ran: Ran | None = None
    error: BaseException | None = None

    def wait(self, timeout: float = 60) -> Ran:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.ran is not None, "the run did not finish in time"
        return self.ran


@pytest.fixture
def runner(kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runner:
    state = tmp_path / "state"
    state.mkdir()
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setenv("GLASSBREAK_STATE_DIR", str(state))
    monkeypatch.setenv("GLASSBREAK_PROFILE_PATH", str(profiles))
    monkeypatch.setenv("GLASSBREAK_NO_DAEMON", "1")
    return Runner(kernel, state, profiles)


def wait_for(pred: Any, timeout: float = 10.0, every: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(every)
