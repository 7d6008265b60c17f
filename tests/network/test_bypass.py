"""Every way around the network layer the issue lists, one test each, through real glassbreak
runs: the attempt is refused, a positive control in the same profile works, and the refusal
is recorded with its context (blocked event: layer network, rule, destination, process argv;
an escalation where the rule is escalatable)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GLASSBREAK
from tests.network.conftest import HOST4, HOST4B, HOST6, NS_ISO, PY, Runner, client_code

pytestmark = pytest.mark.kernel

AF_NETLINK, AF_PACKET, AF_VSOCK, AF_XDP, AF_KEY, AF_ALG = 16, 17, 40, 44, 15, 38
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3


def _one(r: object, **match: object) -> dict:
    got = r.blocked(**match)  # type: ignore[attr-defined]
    assert got, f"no blocked event {match}: {r.events}"  # type: ignore[attr-defined]
    b = got[0]
    assert b["pid"] and b["argv"] and b["argv"][0] == PY, b
    return b


def _escalated(runner: Runner, b: dict, dest: str) -> None:
    assert b["escalation_id"], b
    rec = runner.escalations().get(b["escalation_id"])
    assert rec.layer == "network" and rec.destination == dest and rec.argv == b["argv"]


def test_direct_ip(netns: None, runner: Runner) -> None:
    p = runner.profile("b-ip", {"allow": ["web.test:8080"]})
    r = runner.call(p, "many", [["tcp", HOST4, 8080], ["dns", HOST4, "web.test"],
                                ["tcp", HOST4, 8080]])
    # the address is opened by the name's answer only: before the lookup it is refused
    assert r.value[0] == "EPERM" and r.value[2] == "ok", r.value
    b = _one(r, destination=f"{HOST4}:8080", rule_id="network.default")
    _escalated(runner, b, f"{HOST4}:8080")


def test_ipv4_mapped_ipv6(netns: None, runner: Runner) -> None:
    p = runner.profile("b-mapped", {"allow": ["10.99.0.0/24:5432"]})
    r = runner.call(p, "many", [["tcp", "::ffff:" + HOST4, 5432],
                                ["tcp", "::ffff:" + HOST4, 8080],
                                ["udp", "::ffff:" + HOST4, 9999]])
    assert r.value == ["ok", "EPERM", "EPERM"], r.value
    # connect6 decodes ::ffff:a.b.c.d: the event names the IPv4 address (the same rule as v4)
    b = _one(r, destination=f"{HOST4}:8080")
    assert "connect6" in b["reason"]
    _escalated(runner, b, f"{HOST4}:8080")
    assert _one(r, destination=f"udp:{HOST4}:9999")["escalation_id"]


def test_native_ipv6_and_loopback_v6(netns: None, runner: Runner) -> None:
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("::1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        p = runner.profile("b-v6", {"allow": ["[fd99:99::/64]:5432"]})
        r = runner.call(p, "many", [["tcp", HOST6, 5432], ["tcp", HOST6, 8080],
                                    ["tcp", "::1", port, 0, b""], ["tcp", "::", port, 0, b""]])
        assert r.value == ["ok", "EPERM", "EPERM", "EPERM"], r.value
        _escalated(runner, _one(r, destination=f"[{HOST6}]:8080"), f"[{HOST6}]:8080")
        lo = _one(r, destination=f"[::1]:{port}")
        assert lo["rule_id"] == "network.sensitive" and lo["verdict"] == "deny"
        assert lo["escalation_id"] is None
        # named exactly, ::1 is reachable
        p2 = runner.profile("b-v6-lo", {"allow": [f"[::1]:{port}"]})
        assert runner.call(p2, "tcp", "::1", port, 0, b"").value == "ok"
    finally:
        srv.close()


@pytest.fixture
def iso_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    state = tmp_path / "iso-state"
    state.mkdir()
    yield {**os.environ, "GLASSBREAK_STATE_DIR": str(state), "GLASSBREAK_NO_DAEMON": "1",
           "GLASSBREAK_DNS_UPSTREAM": "127.0.0.1:53", "PATH": "/usr/local/bin:/usr/bin:/bin"}


def _iso_run(env: dict[str, str], profile: str, calls: list) -> tuple[list, list[dict]]:
    """A cold `glassbreak run` INSIDE the isolated namespace, where the metadata address and
    the link-local ones are real local addresses: a connect the hooks let through would work."""
    # nsenter, not `ip netns exec`: that remounts /sys, hiding tracefs from the exec tracer
    r = subprocess.run(["nsenter", f"--net=/run/netns/{NS_ISO}", GLASSBREAK, "run", "-o",
                        "json", "-p", profile, "--", PY, "-S", "-c",
                        client_code("many", calls)],
                       capture_output=True, text=True, env=env, timeout=120)
    out = [x for x in r.stdout.splitlines() if x.strip()]
    assert r.returncode == 0 and out, r.stderr
    audit = [json.loads(x) for x in
             (Path(env["GLASSBREAK_STATE_DIR"]) / "audit.jsonl").read_text().splitlines()]
    return json.loads(out[-1]), audit


def test_metadata_link_local_and_the_hosts_own_addresses(netns: None, runner: Runner,
                                                         iso_env: dict[str, str]) -> None:
    calls = [["tcp", "169.254.169.254", 80], ["tcp", "::ffff:169.254.169.254", 80],
             ["tcp", "fd00:ec2::254", 80], ["tcp", "fe80::1%d0", 80], ["tcp", "10.77.0.1", 80]]
    # control: outside glassbreak every one of them answers in that namespace
    ctl = subprocess.run(["ip", "netns", "exec", NS_ISO, PY, "-S", "-c",
                          client_code("many", calls)], capture_output=True, text=True)
    assert json.loads(ctl.stdout) == ["ok"] * 5
    # even a profile that allows every address on port 80 reaches none of them
    p = runner.profile("b-meta", {"allow": ["0.0.0.0/0:80", "[::/0]:80"]})
    got, audit = _iso_run(iso_env, p, calls)
    assert got == ["EPERM"] * 5, got
    blocked = [e for e in audit if e["type"] == "blocked" and e["layer"] == "network"]
    dests = {e["destination"]: e for e in blocked}
    for d in ("169.254.169.254:80", "[fd00:ec2::254]:80", "[fe80::1]:80", "10.77.0.1:80"):
        assert dests[d]["rule_id"] == "network.sensitive" and dests[d]["verdict"] == "deny"
        assert dests[d]["escalation_id"] is None and dests[d]["argv"][0] == PY
    # named exactly, the metadata address is reachable (and only it)
    p2 = runner.profile("b-meta2", {"allow": ["169.254.169.254:80"]})
    got, _ = _iso_run(iso_env, p2, calls[:2] + calls[4:])
    assert got == ["ok", "ok", "EPERM"], got


def test_tcp_fast_open_sendto(netns: None, runner: Runner) -> None:
    p = runner.profile("b-tfo1", {"allow": [f"{HOST4}:5432"]})
    r = runner.call(p, "many", [["tfo_sendto", HOST4B, 5432], ["tfo_sendto", HOST4, 5432],
                                ["tfo_sendto", "::ffff:" + HOST4B, 5432]])
    assert r.value == ["EPERM", "ok", "EPERM"], r.value
    _escalated(runner, _one(r, destination=f"{HOST4B}:5432"), f"{HOST4B}:5432")


def test_tcp_fast_open_connect_sockopt(netns: None, runner: Runner) -> None:
    p = runner.profile("b-tfo2", {"allow": [f"{HOST4}:5432"]})
    r = runner.call(p, "many", [["tfo_connect", HOST4B, 5432], ["tfo_connect", HOST4, 5432]])
    assert r.value == ["EPERM", "ok"], r.value
    _escalated(runner, _one(r, destination=f"{HOST4B}:5432"), f"{HOST4B}:5432")


def test_udp_sendto_without_connect(netns: None, runner: Runner) -> None:
    p = runner.profile("b-udp", {"allow": [f"udp:{HOST4}:9999", f"{HOST4B}:9999"]})
    r = runner.call(p, "many", [["udp", HOST4, 9999], ["udp", HOST4B, 9999],
                                ["udp", HOST6, 9999], ["udp", HOST4, 9999, True]])
    # a tcp entry does not open udp; udp: entries do, connected or not
    assert r.value == ["ok", "EPERM", "EPERM", "ok"], r.value
    b = _one(r, destination=f"udp:{HOST4B}:9999")
    assert "sendmsg4" in b["reason"]
    _escalated(runner, b, f"udp:{HOST4B}:9999")


def test_udp_sendmmsg(netns: None, runner: Runner) -> None:
    p = runner.profile("b-mmsg", {"allow": [f"udp:{HOST4}:9999"]})
    r = runner.call(p, "many", [["sendmmsg", [[HOST4, 9999], [HOST4B, 9999]]],
                                ["sendmmsg", [[HOST4B, 9999], [HOST4, 9999]]]])
    # checked per message: allowed-then-refused sends one; refused-first sends none
    assert r.value[0] == {"sent": 1, "echo": ["m0"]}, r.value
    assert r.value[1] == {"sent": "EPERM", "echo": []}, r.value
    _escalated(runner, _one(r, destination=f"udp:{HOST4B}:9999"), f"udp:{HOST4B}:9999")


def test_dns_over_tcp(netns: None, runner: Runner, upstream: object) -> None:
    p = runner.profile("b-dnstcp", {"allow": ["web.test:8080"]})
    r = runner.call(p, "many", [["dns", HOST4, "web.test", 1, 53, True],
                                ["dns", HOST4, "evil.test", 1, 53, True],
                                ["tcp", HOST4B, 8080]])
    ok, bad, tcp = r.value
    assert ok["rcode"] == 0 and ok["addrs"] == [HOST4] and ok["from"] == [HOST4, 53], ok
    assert bad["rcode"] == 5 and bad["addrs"] == [] and tcp == "EPERM", r.value
    b = _one(r, rule_id="network.dns.name", destination="evil.test:*")
    _escalated(runner, b, "evil.test:*")
    assert any(e["transport"] == "tcp" for e in r.of("dns", qname="evil.test"))
    assert not upstream.asked("evil.test")  # type: ignore[attr-defined]


def test_another_resolver_address_or_port(netns: None, runner: Runner) -> None:
    """Port 53 anywhere (v4, v6, v4-mapped, loopback; UDP connected or not, TCP) reaches
    glassbreak's resolver, never the foreign server on the test host (which would answer
    6.6.6.6); another port is an ordinary destination (refused)."""
    p = runner.profile("b-resolver", {"allow": ["web.test:8080"]})
    servers = ["127.0.0.53", HOST4B, "::ffff:10.99.0.2", HOST6, "::1"]
    calls: list = [["dns", s, "web.test"] for s in servers]
    calls += [["dns", HOST4B, "web.test", 1, 53, False, True],
              ["dns", "::ffff:" + HOST4B, "web.test", 1, 53, True],
              ["dns", HOST4, "web.test", 1, 5353]]
    r = runner.call(p, "many", calls)
    for s, got in zip(servers + ["connected", "tcp"], r.value[:7], strict=True):
        assert got["rcode"] == 0 and got["addrs"] == [HOST4], (s, got)
    assert r.value[7] == {"error": "EPERM"}
    _escalated(runner, _one(r, destination=f"udp:{HOST4}:5353"), f"udp:{HOST4}:5353")
    # the process saw the server it asked (recvmsg/getpeername rewrite the resolver's address)
    assert r.value[1]["from"] == [HOST4B, 53] and r.value[3]["from"] == [HOST6, 53]


def test_resolver_ports_asked_directly(netns: None, runner: Runner, kernel: object) -> None:
    """A run finds resolver ports in /proc/net/udp; asking one directly (its own or another
    run's: not steered) is refused, so a run never reaches another run's resolver."""
    res = kernel.net.resolver  # type: ignore[attr-defined]
    before = {r.port for r in list(res._runs.values())}
    p = runner.profile("b-rports", {"allow": ["web.test:8080"]})
    other = runner.start(p, "sleep", 4)
    from tests.network.conftest import wait_for

    theirs = wait_for(lambda: {r.port for r in list(res._runs.values())} - before, 10)
    assert theirs
    (aport,) = theirs
    r = runner.call(p, "many", [["dns", "127.0.0.1", "web.test", 1, aport],
                                ["dns", "::1", "web.test", 1, aport, True],
                                ["dns_loopback"], ["dns", HOST4, "web.test"]])
    assert r.value[0] == {"error": "EPERM"} and r.value[1] == {"error": "EPERM"}, r.value
    assert r.value[3]["rcode"] == 0  # control: through steering it answers
    refused = {int(p) for p, v in r.value[2].items() if v == "EPERM"}
    ports = {int(e["destination"].rsplit(":", 1)[1]) for e in r.blocked(rule_id="network.resolver")}
    assert aport in ports and len(ports) >= 2, (ports, r.value[2])  # theirs and its own
    assert ports <= refused | {aport}
    assert all(e["verdict"] == "deny" for e in r.blocked(rule_id="network.resolver"))
    assert other.wait().value == "ok"


def test_txt_and_long_labels(netns: None, runner: Runner, upstream: object) -> None:
    p = runner.profile("b-exfil", {"allow": ["secret.test:443", "*.web.test:443"]})
    long = "a" * 50 + ".web.test"  # under an allowed wildcard, but an overlong label
    r = runner.call(p, "many", [["dns", HOST4, "secret.test", 16],
                                ["dns", HOST4, "secret.test", 255],
                                ["dns", HOST4, "secret.test", 10], ["dns", HOST4, long],
                                ["dns", HOST4, "secret.test", 1]])
    assert [x["rcode"] for x in r.value[:4]] == [5, 5, 5, 5], r.value
    assert r.value[4]["rcode"] == 0 and r.value[4]["addrs"] == [HOST4]  # control: A answered
    q = _one(r, rule_id="network.dns.qtype")
    assert q["verdict"] == "deny" and q["destination"] == "secret.test" and "TXT" in q["reason"]
    s = _one(r, rule_id="network.dns.shape")
    assert s["verdict"] == "deny" and s["destination"] == long and "label longer" in s["reason"]
    assert not upstream.asked(long) and ("secret.test", 16) not in upstream.seen  # type: ignore[attr-defined]


def test_cname_to_a_name_that_is_not_allowed(netns: None, runner: Runner) -> None:
    p = runner.profile("b-cname", {"allow": ["badalias.test:8080", "alias.test:8080",
                                            "web.test:8080"]})
    r = runner.call(p, "many", [["dns", HOST4, "badalias.test"], ["tcp", HOST4B, 8080],
                                ["dns", HOST4, "alias.test"], ["tcp", HOST4, 8080]])
    assert r.value[0]["rcode"] == 5 and r.value[1] == "EPERM", r.value
    assert r.value[2]["rcode"] == 0 and r.value[2]["cnames"] == 1 and r.value[3] == "ok"
    b = _one(r, rule_id="network.dns.cname")
    assert b["destination"] == "evil.test:*" and "badalias.test -> evil.test" in b["reason"]
    _escalated(runner, b, "evil.test:*")


def test_address_reused_after_its_ttl(netns: None, runner: Runner) -> None:
    """short.test has TTL 1; the resolver keeps it TTL + grace (1 s in these tests)."""
    p = runner.profile("b-ttl", {"allow": ["short.test:8080"]})
    r = runner.call(p, "many", [["dns", HOST4, "short.test"], ["tcp", HOST4, 8080],
                                ["sleep", 2.5], ["tcp", HOST4, 8080],
                                ["dns", HOST4, "short.test"], ["tcp", HOST4, 8080]])
    assert r.value[1] == "ok" and r.value[3] == "EPERM" and r.value[5] == "ok", r.value
    b = _one(r, rule_id="network.expired", destination=f"{HOST4}:8080")
    _escalated(runner, b, f"{HOST4}:8080")


@pytest.fixture
def unix_servers(tmp_path: Path) -> Iterator[dict[str, str]]:
    """docker.sock-, session-bus- and ssh-agent-like listeners (and an abstract one)."""
    d = tmp_path / "run"
    d.mkdir()
    paths = {"docker": str(d / "docker.sock"), "bus": str(d / "bus"),
             "agent": str(d / "agent.123"), "abstract": f"@gb-test-bus-{os.getpid()}"}
    socks = []
    for k, path in paths.items():
        s = socket.socket(socket.AF_UNIX)
        s.bind("\0" + path[1:] if k == "abstract" else path)
        s.listen(16)
        socks.append(s)
    stop = threading.Event()

    def serve(s: socket.socket) -> None:
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = s.accept()
                c.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                c.close()
            except OSError:
                pass

    ts = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in ts:
        t.start()
    yield paths
    stop.set()
    for t in ts:
        t.join()
    for s in socks:
        s.close()


def test_docker_sock_session_bus_and_ssh_agent(netns: None, runner: Runner,
                                              unix_servers: dict[str, str]) -> None:
    p = runner.profile("b-unix", {"unix": [unix_servers["bus"]]})
    u = unix_servers
    r = runner.call(p, "many", [["unix", u["docker"]], ["unix", u["agent"]],
                                ["unix", u["bus"]], ["unix", u["abstract"]],
                                ["unix", os.path.basename(u["bus"]), False,
                                 os.path.dirname(u["bus"])]])
    # docker.sock and the agent refused; the listed bus works; the abstract name bound
    # outside the run is refused by the run's Landlock scope (the hooks leave abstract names
    # to it while no profile lists one); another spelling of the listed path is refused
    assert r.value == ["EPERM", "EPERM", "ok", "EPERM", "EPERM"], r.value
    for k in ("docker", "agent"):
        _escalated(runner, _one(r, destination=f"unix:{u[k]}", rule_id="network.unix"),
                   f"unix:{u[k]}")
    scoped = [e for e in r.events if e["type"] == "blocked" and e["layer"] == "landlock"]
    assert [e["rule_id"] for e in scoped] == [
        f"landlock.scope.abstract_unix_socket:{u['abstract']}"], r.events
    assert scoped[0]["verdict"] == "deny" and "network.unix" in scoped[0]["reason"]
    # listed, an abstract name works; the hooks then guard abstract names (the scope is off):
    # another one is refused by them, escalatable
    p2 = runner.profile("b-unix2", {"unix": [u["abstract"]]})
    r = runner.call(p2, "many", [["unix", u["abstract"]], ["unix", u["abstract"] + "-other"]])
    assert r.value == ["ok", "EPERM"], r.value
    a = _one(r, destination=f"unix:{u['abstract']}-other", rule_id="network.unix.abstract")
    _escalated(runner, a, f"unix:{u['abstract']}-other")


def test_a_runs_own_abstract_sockets_work(netns: None, runner: Runner) -> None:
    """A name the run binds itself (Python >= 3.12's multiprocessing listeners, test
    servers) is reachable inside the run: Landlock's scope allows its own domain's names."""
    import secrets

    p = runner.profile("b-unix-own", {})
    name = f"gb-own-{secrets.token_hex(4)}"
    code = ("import socket\ns = socket.socket(socket.AF_UNIX)\n"
            f"s.bind('\\0{name}'); s.listen(1)\n"
            "c = socket.socket(socket.AF_UNIX)\n"
            f"c.connect('\\0{name}'); print('inside=ok')\n")
    r = runner.run(p, [PY, "-S", "-c", code])
    assert "inside=ok" in r.out, r.out
    assert not [e for e in r.events if e["type"] == "blocked"], r.events


def test_glassbreaks_own_socket_and_http_api(netns: None, runner: Runner,
                                            tmp_path: Path) -> None:
    """A run cannot reach the daemon's run socket nor the approval API on loopback (or on the
    host's own address), even with `default: allow`."""
    from tests.conftest import free_port

    sock = tmp_path / "gb" / "glassbreak.sock"
    sock.parent.mkdir()
    port = free_port()
    env = {**os.environ, "GLASSBREAK_STATE_DIR": str(tmp_path / "dstate")}
    d = subprocess.Popen([GLASSBREAK, "serve", "--socket", str(sock), "--host", "0.0.0.0",
                          "--port", str(port), "-o", "json"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        from tests.network.conftest import wait_for

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return sock.exists()
            except OSError:
                return False

        assert wait_for(up, 60), "the daemon did not start"
        p = runner.profile("b-gb", {"default": "allow"}, relax=True)
        r = runner.call(p, "many", [["unix", str(sock)], ["http", "127.0.0.1", port],
                                    ["http", "10.99.0.1", port], ["tcp", HOST4, 8080]])
        assert r.value == ["EPERM", "EPERM", "EPERM", "ok"], r.value
        _escalated(runner, _one(r, destination=f"unix:{sock}"), f"unix:{sock}")
        for host in ("127.0.0.1", "10.99.0.1"):
            b = _one(r, destination=f"{host}:{port}")
            assert b["rule_id"] == "network.sensitive" and b["escalation_id"] is None
    finally:
        d.kill()
        d.wait(10)


def test_redis(netns: None, runner: Runner, redis_server: object) -> None:
    """A run cannot forge grants in Redis: the store is a loopback service."""
    port = redis_server.port  # type: ignore[attr-defined]
    p = runner.profile("b-redis", {"allow": ["10.99.0.0/24:6379"]})
    r = runner.call(p, "many", [["redis_ping", "127.0.0.1", port],
                                ["redis_ping", "::ffff:127.0.0.1", port],
                                ["tcp", HOST4, 6379]])
    assert r.value[:2] == ["EPERM", "EPERM"] and r.value[2] == "ok", r.value
    b = _one(r, destination=f"127.0.0.1:{port}")
    assert b["rule_id"] == "network.sensitive" and b["verdict"] == "deny"
    # control: the same client outside glassbreak talks to it
    out = subprocess.run([PY, "-S", "-c", client_code("redis_ping", "127.0.0.1", port)],
                         capture_output=True, text=True)
    assert json.loads(out.stdout) == "+PONG"


def test_raw_packet_and_other_socket_families(netns: None, runner: Runner) -> None:
    """Raw/ICMP/UDP-Lite inet sockets: the sock_create hook (event, deny); raw sockets are
    refused before it by the capability drop of every run (CAP_NET_RAW: the kernel checks it
    before the hook runs, so they leave no event). AF_PACKET, AF_VSOCK (a firecracker guest's
    channel to its host), AF_XDP, AF_KEY, AF_ALG and netlink other than NETLINK_ROUTE: the
    seccomp baseline (the hooks never see those families)."""
    p = runner.profile("b-sock", {})
    calls = [["sock", 2, SOCK_RAW, 1], ["sock", 10, SOCK_RAW, 58], ["sock", 2, SOCK_RAW, 255],
             ["sock", 2, SOCK_DGRAM, 136],
             ["sock", AF_PACKET, SOCK_RAW, 0], ["sock", AF_VSOCK, SOCK_STREAM, 0],
             ["sock", AF_XDP, SOCK_RAW, 0], ["sock", AF_KEY, SOCK_RAW, 2],
             ["sock", AF_ALG, 5, 0], ["sock", AF_NETLINK, SOCK_RAW, 4],
             ["sock", AF_NETLINK, SOCK_RAW, 12], ["sock_hi", AF_PACKET, SOCK_RAW],
             # controls: what programs need
             ["sock", 2, SOCK_STREAM, 0], ["sock", 10, SOCK_DGRAM, 0], ["sock", 1, SOCK_STREAM, 0],
             ["sock", AF_NETLINK, SOCK_RAW, 0]]
    r = runner.call(p, "many", calls)
    assert r.value[:12] == ["EPERM"] * 12, list(zip(calls, r.value, strict=True))
    assert r.value[12:] == ["ok"] * 4, r.value
    socks = r.blocked(rule_id="network.socket")
    seen = {(e["reason"].split("socket(")[1].split(")")[0]) for e in socks}
    assert "family=2, type=2, protocol=136" in seen, seen
    assert all(e["verdict"] == "deny" and e["argv"][0] == PY for e in socks)
    # the families seccomp refuses: one rule each in the effective profile (seccomp cannot
    # report an errno return, so these leave no per-attempt event)
    from sandbox.policy.loader import load_profile

    ids = {x.id for x in load_profile(p).seccomp.rules}
    assert {"net-family-high", "net-family-12-15", "net-netlink-route-only"} <= ids


def test_mptcp(netns: None, runner: Runner) -> None:
    p = runner.profile("b-mptcp", {"allow": [f"{HOST4}:5432"]})
    r = runner.call(p, "many", [["tcp", HOST4, 5432, 262], ["tcp", HOST4, 5432]])
    assert r.value == ["socket:EPERM", "ok"], r.value
    b = r.blocked(rule_id="network.socket")
    assert b and "protocol=262" in b[0]["reason"] and b[0]["verdict"] == "deny"


def test_netlink_route_changes(netns: None, runner: Runner) -> None:
    """NETLINK_ROUTE stays (getaddrinfo needs it), but a change through it needs
    CAP_NET_ADMIN; and the policy is on destinations, so a new route opens nothing."""
    p = runner.profile("b-nl", {"allow": [f"{HOST4}:5432"]}, exec={"allow": [
        "python3", "/usr/bin/python3*", "sh", "ip", "/usr/sbin/ip", "/usr/bin/ip"]})
    r = runner.run(p, ["sh", "-c", "ip route add 10.98.0.0/24 dev lo; echo rc=$?"])
    routes = subprocess.run(["ip", "route", "show", "10.98.0.0/24"], capture_output=True,
                            text=True).stdout
    try:
        # a run has no CAP_NET_ADMIN (every run loses it), so the route is not added; and
        # even a new route opens nothing: 10.98.0.1 is in no rule
        r2 = runner.call(p, "tcp", "10.98.0.1", 5432)
        assert r2.value == "EPERM"
        _escalated(runner, _one(r2, destination="10.98.0.1:5432"), "10.98.0.1:5432")
    finally:
        if "10.98.0.0/24" in routes:
            subprocess.run(["ip", "route", "del", "10.98.0.0/24"], capture_output=True)
    assert "rc=" in r.out


def test_io_uring(netns: None, runner: Runner) -> None:
    """io_uring is refused by the seccomp baseline; its connect/sendmsg would still go through
    the protocol's own code, where the hooks sit."""
    p = runner.profile("b-uring", {"allow": [f"{HOST4}:5432"]})
    r = runner.call(p, "many", [["uring_connect", HOST4B, 5432], ["tcp", HOST4, 5432]])
    assert r.value == ["setup:EPERM", "ok"], r.value


def test_a_sub_cgroup_of_the_run_fails_closed(netns: None, runner: Runner) -> None:
    """A root run cannot make a cgroup below its leaf: cgroupfs is not writable in its
    Landlock domain. Without Landlock (`--degraded landlock`, root only) it can (the hooks are
    inherited there) and move into it: its cgroup id is in no map, so even socket() is
    refused; the refusal is still reported to the run (routed by the process's cgroup path)."""
    p = runner.profile("b-sub", {"allow": [f"{HOST4}:5432"]})
    r = runner.call(p, "sub_cgroup_tcp", HOST4, 5432)
    assert r.value == "mkdir:EACCES", r.out
    assert any(e["type"] == "blocked" and e["layer"] == "filesystem" for e in r.events)
    r = runner.run(p, [PY, "-S", "-c", client_code("sub_cgroup_tcp", HOST4, 5432)],
                   degraded=("landlock",))
    assert r.value == "socket:EPERM", r.out
    b = _one(r, rule_id="network.no-run")
    assert b["verdict"] == "deny" and b["escalation_id"] is None
    assert runner.call(p, "tcp", HOST4, 5432).value == "ok"
