"""Two glassbreak "hosts" sharing one redis-server, end to end with real processes:

  root netns:  bridge gbm<r>br 10.213.N.1/24  <- redis-server bound here (private /24, made here)
  netns A:     veth 10.213.N.2  glassbreak serve (run socket A + approval API on 10.213.N.2)
  netns B:     veth 10.213.N.3  glassbreak serve (run socket B + approval API on 10.213.N.3)

An escalation raised by a blocked run on A (through A's socket) is approved through B's HTTP API
(per-approver bearer token); the next run on A is allowed under the relaxed profile; revoking the
grant through B's API (HMAC-signed) ends A's running session under the grant within about a
second and A is strict again; with Redis down, A fails closed to the strict profile.

Daemons are started with `nsenter --net=/run/netns/NAME` (only the network namespace changes):
`ip netns exec` would also remount /sys, hiding the cgroup2 mount, tracefs and bpffs the daemon
needs. Everything made here (namespaces, links: unique prefix) is removed in a finally; every
process is ended by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import GLASSBREAK, grant_keypair, is_root, load_bench, require

pytestmark = [pytest.mark.kernel, pytest.mark.redis, pytest.mark.slow]

BOB_TOKEN = "bob-approver-token-" + secrets.token_hex(8)
DECISION_SECRET = "decision-secret-" + secrets.token_hex(8)
AGENT = "bot-a"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@dataclass
class Net:
    """Namespaces, bridge and veths with a unique prefix; `down()` removes only those."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    octet: int = 7
    made_ns: list[str] = field(default_factory=list)
    made_links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"gbm{self.tag}br"

    def ip(self, host: int) -> str:
        return f"10.213.{self.octet}.{host}"

    def pick_subnet(self) -> None:
        used = sh("ip", "-4", "-o", "addr", "show").stdout
        for octet in [7, *range(8, 250)]:
            if f" 10.213.{octet}." not in used:
                self.octet = octet
                return
        raise RuntimeError("no free 10.213.N.0/24 subnet on this machine")

    def up(self) -> None:
        self.pick_subnet()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        sh("ip", "addr", "add", f"{self.ip(1)}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, host in enumerate(("a", "b"), start=2):
            ns = f"gbm{self.tag}{host}"
            outer, inner = f"{ns}0", f"{ns}1"
            sh("ip", "netns", "add", ns)
            self.made_ns.append(ns)
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self.made_links.append(outer)
            sh("ip", "link", "set", outer, "master", self.bridge)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", inner)
            sh("ip", "-n", ns, "link", "set", inner, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def ns(self, host: str) -> str:
        return f"gbm{self.tag}{host}"

    def down(self) -> None:
        for link in reversed(self.made_links):  # deleting a veth end deletes its peer too
            sh("ip", "link", "del", link, check=False)
        for ns in self.made_ns:
            sh("ip", "netns", "del", ns, check=False)


PROFILES = {
    "mh-strict.yaml": "name: mh-strict\nextends: readonly\nowners: [alice, bob]\n"
                      "escalation:\n  relaxedProfile: mh-ops\n  ttl: 1m\n  maxTtl: 5m\n",
    "mh-ops.yaml": "name: mh-ops\nextends: readonly\nrelax: true\n"
                   "exec:\n  allow: [/usr/bin/touch, sh, dash, sleep]\n",  # replaces, not extends
}


@dataclass
class Fleet:
    net: Net
    redis: subprocess.Popen[bytes]
    redis_url: str
    a: Any
    b: Any
    work: Path
    api_b: str


def _start_redis(net: Net, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    require(exe is not None, "redis-server is not installed (make setup installs it)")
    assert exe is not None
    port = 6379 + int(net.tag, 16) % 1000
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", net.ip(1), "--save", "",
                             "--appendonly", "no", "--dir", str(work),
                             # only on the private bridge made here; the netns hosts are not
                             # loopback clients, which protected mode would refuse
                             "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((net.ip(1), port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://{net.ip(1)}:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail(f"redis-server did not start on {net.ip(1)}:{port}")


@pytest.fixture(scope="module")
def conc() -> ModuleType:
    return load_bench("concurrency")


@pytest.fixture(scope="module")
def fleet(conc: ModuleType) -> Iterator[Fleet]:
    require(is_root(), "network namespaces and the daemon need root")
    require(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    require(shutil.which("nsenter") is not None, "util-linux `nsenter` is not installed")
    work = Path(tempfile.mkdtemp(prefix="gb-multihost-"))
    os.chmod(work, 0o755)
    pdir = work / "profiles"
    pdir.mkdir()
    for name, text in PROFILES.items():
        (pdir / name).write_text(text)
    # B decides (it holds the grant signing key); A only runs: it gets the public half. The
    # configs live beside the runs' dir, not above it (a config's dir is never writable in a run)
    key, pub = grant_keypair(work)
    tokens = {"bob": {"tokenSha256": hashlib.sha256(BOB_TOKEN.encode()).hexdigest()}}
    (work / "etc").mkdir()
    (work / "etc" / "config-a.yaml").write_text(json.dumps({
        "approverTokens": tokens, "grantSigning": {"publicKeyFile": str(pub)}}))
    (work / "etc" / "config-b.yaml").write_text(json.dumps({
        "approverTokens": tokens,
        "grantSigning": {"privateKeyFile": str(key), "publicKeyFile": str(pub)}}))
    net = Net()
    redis: subprocess.Popen[bytes] | None = None
    daemons: list[Any] = []
    try:
        try:
            net.up()
        except RuntimeError as e:
            require(False, f"cannot make network namespaces here: {e}")
        redis, url = _start_redis(net, work)
        for host, ip in (("a", net.ip(2)), ("b", net.ip(3))):
            d = work / host
            d.mkdir()
            env = dict(os.environ, GLASSBREAK_STORE=url, GLASSBREAK_STATE_DIR=str(d / "state"),
                       GLASSBREAK_PROFILE_PATH=str(pdir),
                       GLASSBREAK_CONFIG=str(work / "etc" / f"config-{host}.yaml"),
                       GLASSBREAK_DECISION_SECRET=DECISION_SECRET,
                       # the test decides from the root netns (the bridge's address), not
                       # from loopback: the hosts' APIs take decisions from there
                       GLASSBREAK_DECISIONS_FROM=f"{net.ip(1)}/32")
            daemons.append(conc.start_daemon(
                d, prefix=("nsenter", f"--net=/run/netns/{net.ns(host)}"), env=env,
                http=(ip, 8787)))
        yield Fleet(net, redis, url, daemons[0], daemons[1], work, f"http://{net.ip(3)}:8787")
    finally:
        for dp in daemons:
            dp.stop()
        if redis is not None and redis.poll() is None:
            redis.kill()
            redis.wait(timeout=10)
        net.down()
        shutil.rmtree(work, ignore_errors=True)


def run_on(dp: Any, *argv: str, profile: str = "mh-strict", cwd: Path | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GLASSBREAK_SOCKET=str(dp.sock), GLASSBREAK_AGENT=AGENT,
               PATH="/usr/local/bin:/usr/bin:/bin")
    env.pop("GLASSBREAK_NO_DAEMON", None)
    return subprocess.run([GLASSBREAK, "run", "-o", "json", "-p", profile, "--", *argv],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def last_json(stderr: str) -> dict[str, Any]:
    lines = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    assert lines, stderr
    return lines[-1]


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own test API
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def audit(dp: Any) -> list[dict[str, Any]]:
    p = dp.state / "audit.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_approve_on_b_use_on_a_revoke_on_b(fleet: Fleet) -> None:
    from escalation.signing import sign_headers

    out = fleet.work / "out"  # the runs' cwd: a run writes only beneath its cwd (filesystem)
    out.mkdir(exist_ok=True)
    os.chmod(out, 0o777)
    target = out / "made-on-a"

    # 1. blocked on A: an escalation in the shared store
    r = run_on(fleet.a, "/usr/bin/touch", str(target), cwd=out)
    assert r.returncode == 126, r.stderr
    esc = last_json(r.stderr)["escalation_id"]
    assert esc and not target.exists()
    blocked = [e for e in audit(fleet.a) if e["type"] == "blocked"]
    assert blocked and blocked[-1]["escalation_id"] == esc
    assert blocked[-1]["argv"] == ["/usr/bin/touch", str(target)]

    # B sees it (over its own HTTP API, store shared through Redis)
    req = urllib.request.Request(f"{fleet.api_b}/api/escalations/{esc}",
                                 headers={"Authorization": f"Bearer {BOB_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        shown = json.loads(resp.read())
    assert shown["state"] == "pending"

    # a wrong token is refused and recorded; bob's token approves through B
    st, body = post(f"{fleet.api_b}/api/escalations/{esc}/decision",
                    {"escalation_id": esc, "decision": "approve", "approver": "bob"},
                    {"Authorization": "Bearer not-a-token"})
    assert st == 401, body
    t_approve = time.monotonic()
    st, body = post(f"{fleet.api_b}/api/escalations/{esc}/decision",
                    {"escalation_id": esc, "decision": "approve", "approver": "bob",
                     "ttl": "2m", "reason": "multi-host test"},
                    {"Authorization": f"Bearer {BOB_TOKEN}"})
    assert st == 200, body
    assert body["state"] == "approved"
    grant_id = body.get("grant_id") or body.get("grant", {}).get("id")
    assert grant_id, body

    # 2. the grant is used on A: the same command now runs under mh-ops
    r = run_on(fleet.a, "/usr/bin/touch", str(target), cwd=out)
    usable_s = time.monotonic() - t_approve
    assert r.returncode == 0, r.stderr
    assert target.exists()
    used = [e for e in audit(fleet.a) if e["type"] == "grant_used"]
    assert used and used[-1]["grant_id"] == grant_id and used[-1]["approver"] == "bob"
    assert used[-1]["relaxed_profile"] == "mh-ops"
    print(f"approval on B -> grant used by a run on A: {usable_s * 1000:.0f} ms")

    # 3. a session on A under the grant; revocation through B (HMAC-signed) ends it
    later = out / "after-revoke"
    env = dict(os.environ, GLASSBREAK_SOCKET=str(fleet.a.sock), GLASSBREAK_AGENT=AGENT,
               PATH="/usr/local/bin:/usr/bin:/bin")
    session = subprocess.Popen(
        [GLASSBREAK, "run", "-o", "json", "-p", "mh-strict", "--", "sh", "-c",
         f"/usr/bin/touch {out}/during; sleep 30; /usr/bin/touch {later}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out)
    try:
        deadline = time.monotonic() + 15
        while not (out / "during").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not (out / "during").exists():
            session.kill()
            pytest.fail(f"the session under the grant did not start: {session.communicate()}")
        rb = json.dumps({"grant_id": grant_id, "by": "bob", "reason": "done"}).encode()
        hdrs = sign_headers(DECISION_SECRET, rb)
        t_revoke = time.monotonic()
        st, body = post(f"{fleet.api_b}/api/grants/{grant_id}/revoke", json.loads(rb), hdrs)
        assert st == 200, body
        assert body["status"] == "revoked"
        _, err = session.communicate(timeout=20)
        ended_s = time.monotonic() - t_revoke
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    print(f"revocation on B -> session on A ended: {ended_s * 1000:.0f} ms")
    assert session.returncode == 128 + 9, err
    assert ended_s < 1.0, f"revocation took {ended_s:.2f} s to reach host A"
    assert not later.exists()
    ended = [e for e in audit(fleet.a) if e["type"] == "grant_ended"]
    assert ended and ended[-1]["grant_id"] == grant_id and ended[-1]["why"] == "revoked"
    assert ended[-1]["killed_pids"]
    # the same signed request replayed to host A's API: the nonce store is shared -> refused
    st, body = post(f"http://{fleet.net.ip(2)}:8787/api/grants/{grant_id}/revoke",
                    json.loads(rb), hdrs)
    assert st == 409, body

    # 4. A is strict again for new runs
    r = run_on(fleet.a, "/usr/bin/touch", str(later), cwd=out)
    assert r.returncode == 126, r.stderr
    assert not later.exists()


def test_redis_down_means_strict_on_a(fleet: Fleet) -> None:
    """Runs last: with the shared store gone, A runs the strict profile (fail closed) and says
    why; it never uses a grant it cannot check."""
    fleet.redis.kill()
    fleet.redis.wait(timeout=10)
    target = fleet.work / "never"
    t0 = time.monotonic()
    r = run_on(fleet.a, "/usr/bin/touch", str(target))
    print(f"redis down: blocked run on A took {(time.monotonic() - t0) * 1000:.0f} ms; "
          f"stderr: {r.stderr.strip()[-600:]}")
    assert r.returncode == 126, r.stderr
    assert not target.exists()
    assert "store" in r.stderr.lower(), r.stderr
    r = run_on(fleet.a, "/bin/echo", "still-works")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "still-works\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
