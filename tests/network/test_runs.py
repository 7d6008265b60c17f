"""Real glassbreak runs (the daemon's in-process code path) against test hosts in a netns and a
local DNS server: what a profile allows connects; anything else is refused in the kernel, said
on stderr in one line and raised as an escalation with the four traits."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.network.conftest import HOST4, HOST4B, HOST6, PY, Runner, client_code

pytestmark = pytest.mark.kernel


def test_allowed_name_connects_through_the_real_resolver(netns: None, runner: Runner,
                                                          upstream: object) -> None:
    p = runner.profile("names", {"allow": ["web.test:8080"]})
    # glibc's getaddrinfo, with the host's own resolv.conf: its nameserver is steered
    r = runner.call(p, "resolve_connect", "web.test", 8080)
    assert r.code == 0 and r.value == {"addrs": [HOST4, HOST6], "tcp": "ok"}, r.lines
    assert not r.blocked() and not r.lines
    dns = r.of("dns", qname="web.test", action="answered")
    assert {tuple(d["addresses"]) for d in dns} == {(HOST4,), (HOST6,)}
    conn = r.of("connect", decision="allow", destination=f"{HOST4}:8080")
    assert conn and conn[0]["name"] == "web.test" and conn[0]["pid"]
    # only the name's port
    r = runner.call(p, "resolve_connect", "web.test", 9000)
    assert r.value["tcp"] == "EPERM"
    assert r.blocked(rule_id="network.default", destination=f"{HOST4}:9000")


def test_other_name_gets_an_error_answer_and_an_escalation(netns: None, runner: Runner,
                                                           upstream: object) -> None:
    p = runner.profile("names2", {"allow": ["web.test:8080"]})
    r = runner.call(p, "getaddrinfo", "exfil-abc123.evil.test")
    assert str(r.value).startswith("gaierror"), r.value
    b = r.blocked(rule_id="network.dns.name")  # A and AAAA, each tried twice by glibc
    assert b and {x["destination"] for x in b} == {"exfil-abc123.evil.test:*"}, r.events
    assert len({x["escalation_id"] for x in b}) == 1 and b[0]["escalation_id"]
    assert all(x["verdict"] == "block" for x in b)
    # the asking process, found from the query's socket
    assert all(x["pid"] and x["argv"][0] == PY and "getaddrinfo" in x["argv"][-1] for x in b)
    (line,) = r.lines  # one line per distinct block
    assert "exfil-abc123.evil.test" in line and b[0]["escalation_id"] in line
    rec = runner.escalations().get(b[0]["escalation_id"])
    assert rec.layer == "network" and rec.destination == "exfil-abc123.evil.test:*"
    assert rec.argv[:2] == [PY, "-S"] and rec.owners == ["alice", "security"]
    # a refused name never left glassbreak's resolver
    assert not upstream.asked("exfil-abc123")  # type: ignore[attr-defined]


def test_raw_ip_not_in_any_rule_eperm_and_escalation_with_context(netns: None,
                                                                   runner: Runner) -> None:
    p = runner.profile("rawip", {"allow": ["10.99.0.3:5432"]})
    r = runner.run(p, [PY, "-S", "-c", client_code("tcp", HOST4, 5432)], reason="db check")
    assert r.value == "EPERM" and r.code == 0
    # positive control: the listed address works in the same profile
    assert runner.call(p, "tcp", HOST4B, 5432).value == "ok"
    (b,) = r.blocked()
    assert b["rule_id"] == "network.default" and b["destination"] == f"{HOST4}:5432"
    assert b["verdict"] == "block" and b["enforced"] is True and b["pid"]
    assert b["argv"][0] == PY and "clientlib.tcp" in b["argv"][-1]
    assert b["binary"].startswith("/usr/bin/python3")
    # one line on stderr: what, which rule, the escalation id and how to ask
    (line,) = r.lines
    assert "BLOCKED [network]" in line and f"destination: {HOST4}:5432" in line
    assert "rule=network.default" in line and b["escalation_id"] in line
    # the escalation: trigger, owner, context, resolution path
    rec = runner.escalations().get(b["escalation_id"])
    assert rec.state == "pending" and rec.layer == "network"
    assert rec.rule_id == "network.default" and rec.destination == f"{HOST4}:5432"
    assert rec.argv == b["argv"] and rec.agent == "bot-1" and rec.agent_reason == "db check"
    assert rec.owners == ["alice", "security"] and rec.profile == "rawip"
    assert rec.profile_hash and rec.binary_sha256 and rec.cwd
    assert rec.ancestry and rec.ancestry[0]["pid"] == b["pid"]
    assert rec.run_ids == [r.run_id]
    assert r.result.decision == "block" and r.result.escalation_id == b["escalation_id"]


def test_cidr_ports_and_localhost(netns: None, runner: Runner) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        p = runner.profile("cidr", {"allow": ["10.99.0.0/24:5432", f"localhost:{port}-{port}"]})
        r = runner.call(p, "many", [["tcp", HOST4, 5432], ["tcp", HOST4B, 5432],
                                    ["tcp", HOST4, 8080], ["tcp", "127.0.0.1", port, 0, b""],
                                    ["tcp", "::1", port, 0, b""],
                                    ["tcp", "127.0.0.1", port + 1, 0, b""]])
        assert r.value == ["ok", "ok", "EPERM", "ok", "ECONNREFUSED", "EPERM"], r.lines
    finally:
        srv.close()


def test_base_reaches_no_loopback_service(netns: None, runner: Runner) -> None:
    """A listener on 127.0.0.1 (think glassbreak's HTTP API or Redis) is out of reach: loopback
    is a sensitive range, deny (never escalatable), whatever the profile's default."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    try:
        p = runner.profile("lo", {"default": "allow"}, relax=True)
        r = runner.call(p, "many", [["tcp", "127.0.0.1", port, 0, b""],
                                    ["tcp", "0.0.0.0", port, 0, b""],
                                    ["tcp", "::ffff:127.0.0.1", port, 0, b""],
                                    ["tcp", HOST4, 8080]])
        assert r.value == ["EPERM", "EPERM", "EPERM", "ok"], r.lines
        b = r.blocked(destination=f"127.0.0.1:{port}")
        assert b and b[0]["verdict"] == "deny" and b[0]["rule_id"] == "network.sensitive"
        assert b[0]["escalation_id"] is None and "not escalatable" in r.lines[0]
    finally:
        srv.close()


def test_monitor_mode_enforces_nothing_and_records_everything(netns: None,
                                                             runner: Runner) -> None:
    p = runner.profile("mon", {"allow": ["web.test:8080"]})
    r = runner.call(p, "many", [["resolve_connect", "db.test", 5432],
                                ["tcp", HOST4, 9000], ["dns", HOST4, "secret.test", 16]],
                    mode="monitor")
    assert r.value[0] == {"addrs": [HOST4B], "tcp": "ok"} and r.value[1] == "ok", r.value
    assert r.value[2]["rcode"] == 0  # TXT: would be refused, answered (empty) in monitor mode
    blocks = r.blocked()
    assert {b["destination"] for b in blocks} >= {"db.test:*", f"{HOST4B}:5432",
                                                  f"{HOST4}:9000", "secret.test"}
    assert all(b["enforced"] is False and b["escalation_id"] is None for b in blocks)
    assert all("WOULD BLOCK" in line for line in r.lines)
    assert not runner.escalations().list()


def test_default_deny_refuses_without_escalation(netns: None, runner: Runner) -> None:
    p = runner.profile("deny", {"default": "deny", "allow": ["web.test:8080"]})
    r = runner.call(p, "tcp", HOST4, 5432)
    assert r.value == "EPERM"
    (b,) = r.blocked()
    assert b["verdict"] == "deny" and b["escalation_id"] is None
    assert not runner.escalations().list()


def test_stdio_that_could_send_anywhere_is_refused(netns: None, runner: Runner) -> None:
    """A socket handed in as stdio was created outside the run: no hook checks it. A connected
    stream socket reaches only its peer (fine); an unconnected or datagram one is refused."""
    p = runner.profile("stdio", {})
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r = runner.run(p, [PY, "-S", "-c", "print(1)"], stdin=u.fileno())
        assert r.code == 125 and "stdin is a socket" in (r.result.reason or ""), r.result
    finally:
        u.close()
    a, b = socket.socketpair()
    try:
        r = runner.run(p, [PY, "-S", "-c", "print(1)"], stdin=a.fileno())
        assert r.code == 0 and r.out.strip() == "1"
    finally:
        a.close()
        b.close()


def test_no_socket_is_inherited(netns: None, runner: Runner) -> None:
    """The child is cloned into the run's cgroup and closes every fd but stdio: a socket the
    supervisor holds (even without CLOEXEC) never reaches the run."""
    leak = socket.socket()
    os.set_inheritable(leak.fileno(), True)
    try:
        p = runner.profile("fds", {})
        code = "import os, json; print(json.dumps(sorted(os.listdir('/proc/self/fd'))))"
        r = runner.run(p, [PY, "-S", "-c", code])
        assert r.value == ["0", "1", "2", "3"]  # 3: listdir's own directory fd
        r = runner.run(p, ["sh", "-c", "cat /proc/self/cgroup"])
        assert r.out.strip().endswith(r.run_id)
    finally:
        leak.close()


def test_a_slow_destination_does_not_stall_other_runs(netns: None, runner: Runner) -> None:
    """Two runs at once through one supervisor (the daemon's shape) keep their own blocks."""
    p1 = runner.profile("par1", {"allow": [f"{HOST4}:8080"]})
    p2 = runner.profile("par2", {"allow": [f"{HOST4B}:8080"]})
    out: dict[str, object] = {}

    def go(name: str, prof: str, a: str, b: str) -> None:
        out[name] = runner.call(prof, "many", [["tcp", a, 8080], ["tcp", b, 8080]]).value

    ts = [threading.Thread(target=go, args=("a", p1, HOST4, HOST4B)),
          threading.Thread(target=go, args=("b", p2, HOST4B, HOST4))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert out == {"a": ["ok", "EPERM"], "b": ["ok", "EPERM"]}
