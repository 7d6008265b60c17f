"""glassbreak's resolver for runs: AAAA, CNAME chains followed by the resolver, HTTPS records,
answers pointing at sensitive addresses dropped, insert-before-answer failing closed, and the
runs' lookups kept apart."""

from __future__ import annotations

import threading

import pytest

from tests.network.conftest import HOST4, HOST4B, HOST6, Runner

pytestmark = pytest.mark.kernel


def test_aaaa_and_ipv6(netns: None, runner: Runner) -> None:
    p = runner.profile("d-aaaa", {"allow": ["web.test:8080"]})
    r = runner.call(p, "many", [["dns", HOST6, "web.test", 28], ["tcp", HOST6, 8080],
                                ["tcp", HOST6, 9000], ["dns", HOST4, "web.test", 65]])
    assert r.value[0]["rcode"] == 0 and r.value[0]["addrs"] == [HOST6], r.value
    assert r.value[0]["from"] == [HOST6, 53]
    assert r.value[1:3] == ["ok", "EPERM"]
    assert r.value[3]["rcode"] == 0 and r.value[3]["addrs"] == []  # HTTPS: empty, fall back
    assert r.of("dns", qname="web.test", qtype="AAAA", action="answered")


def test_cname_answered_alone_is_followed_by_the_resolver(netns: None, runner: Runner) -> None:
    p = runner.profile("d-cname", {"allow": ["partial.test:9000", "*.web.test:9000"]})
    r = runner.call(p, "many", [["dns", HOST4, "partial.test"], ["tcp", HOST4B, 9000]])
    assert r.value[0]["rcode"] == 0 and r.value[0]["addrs"] == [HOST4B], r.value
    assert r.value[1] == "ok"
    # the chain's target must be allowed too
    p2 = runner.profile("d-cname2", {"allow": ["partial.test:9000"]})
    r = runner.call(p2, "many", [["dns", HOST4, "partial.test"], ["tcp", HOST4B, 9000]])
    assert r.value[0]["rcode"] == 5 and r.value[1] == "EPERM", r.value
    b = r.blocked(rule_id="network.dns.cname")
    assert b and b[0]["destination"] == "cdn.web.test:*"


def test_answers_pointing_at_sensitive_addresses_are_dropped(netns: None,
                                                            runner: Runner) -> None:
    """DNS rebinding: an allowed name answering 169.254.169.254 or 127.0.0.1 opens neither."""
    p = runner.profile("d-rebind", {"allow": ["meta.test:80", "loop.test:80"]})
    r = runner.call(p, "many", [["dns", HOST4, "meta.test"], ["dns", HOST4, "loop.test"],
                                ["tcp", HOST4, 80]])
    assert r.value[0]["addrs"] == [HOST4] and r.value[1]["addrs"] == [], r.value
    assert r.value[2] == "ok"
    b = r.blocked(rule_id="network.dns.rebinding")
    assert {x["destination"] for x in b} == {"meta.test", "loop.test"}
    assert all(x["verdict"] == "deny" and x["escalation_id"] is None for x in b)
    assert any("169.254.169.254" in x["reason"] for x in b)
    assert any("127.0.0.1" in x["reason"] for x in b)


def test_an_answer_that_cannot_be_inserted_is_withheld(netns: None, runner: Runner,
                                                       kernel: object,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.kernel.sockhooks import PolicyError

    hooks = kernel.net.hooks  # type: ignore[attr-defined]
    real = hooks.add

    def add(cgid: int, cidr: str, *a: object, **kw: object) -> int:
        if kw.get("dns"):
            raise PolicyError("map full (test)")
        return int(real(cgid, cidr, *a, **kw))

    monkeypatch.setattr(hooks, "add", add)
    p = runner.profile("d-withheld", {"allow": ["web.test:8080"]})
    r = runner.call(p, "many", [["dns", HOST4, "web.test"], ["tcp", HOST4, 8080]])
    assert r.value[0]["rcode"] == 2 and r.value[0]["addrs"] == [], r.value
    assert r.value[1] == "EPERM"
    sf = r.of("dns", action="servfail", rule_id="network.dns.insert")
    assert sf and "answer withheld" in sf[0]["reason"]
    assert any("answer withheld" in line for line in r.lines)


def test_runs_do_not_share_lookups(netns: None, runner: Runner) -> None:
    """One run's answers open nothing for another running at the same time."""
    pa = runner.profile("d-a", {"allow": ["web.test:8080"]})
    pb = runner.profile("d-b", {"allow": ["db.test:8080"]})
    out: dict[str, object] = {}
    go = threading.Barrier(2)

    def a() -> None:
        go.wait()
        out["a"] = runner.call(pa, "many", [["dns", HOST4, "web.test"], ["sleep", 1.0],
                                            ["tcp", HOST4, 8080]]).value

    def b() -> None:
        go.wait()
        out["b"] = runner.call(pb, "many", [["sleep", 0.6], ["tcp", HOST4, 8080],
                                            ["dns", HOST4, "web.test"]]).value

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert out["a"][2] == "ok", out  # type: ignore[index]
    assert out["b"][1] == "EPERM" and out["b"][2]["rcode"] == 5, out  # type: ignore[index]


def test_sensitive_answers_pure() -> None:
    """The resolver's check of answer addresses (integers in the hooks' 128-bit space): IPv4
    answers are not mistaken for v4-mapped ones; an AAAA carrying an IPv4 address is dropped."""
    import ipaddress as ip

    from sandbox.run.resolver import Resolver

    class Hooks:
        def is_sensitive(self, a: object) -> bool:
            return str(a) == "10.0.0.99"  # "this host's own address"

    r = Resolver.__new__(Resolver)
    r.hooks = Hooks()
    for a, want in [("93.184.216.34", False), ("10.0.0.1", False), ("10.0.0.99", True),
                    ("169.254.169.254", True), ("127.0.0.5", True), ("0.1.2.3", True),
                    ("224.0.0.1", True), ("100.100.100.200", True), ("2001:db8::1", False),
                    ("::1", True), ("fe80::1", True), ("fd00:ec2::254", True),
                    ("::ffff:93.184.216.34", True), ("64:ff9b::1.2.3.4", True)]:
        assert r._forbidden(ip.ip_address(a)) is want, a


def test_default_allow_answers_every_name(netns: None, runner: Runner) -> None:
    """`default: allow`: every name is answered (nothing is inserted: the kernel's default
    opens the addresses), every address but the sensitive ones is open."""
    p = runner.profile("d-open", {"default": "allow"}, relax=True)
    calls = [["dns", HOST4, f"n{i}.test"] for i in range(20)]
    r = runner.call(p, "many", calls + [["tcp", "10.99.0.15", 8080], ["tcp", "127.0.0.1", 1]])
    assert all(x["rcode"] == 0 and x["addrs"] for x in r.value[:20]), r.value
    assert r.value[20:] == ["ok", "EPERM"]
