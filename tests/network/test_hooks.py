"""The socket hooks' maps, without a process: the LPM entries (a broader rule's ports copied
into every narrower prefix, since a lookup returns only the longest match) agree with the rule
list under random adds and removes; sensitive ranges; a run's entries all go at clear()."""

from __future__ import annotations

import ipaddress
import random

import pytest

from tests.network.conftest import Kernel

pytestmark = pytest.mark.kernel

FAKE_CGID = (1 << 62) + 12345  # no cgroup has this id: nothing runs under it


def test_trie_matches_the_rules_under_random_changes(kernel: Kernel) -> None:
    from sandbox.kernel.sockhooks import PolicyError

    hooks = kernel.net.hooks
    hooks.register_run(FAKE_CGID, dns_port=0, flags=0)
    try:
        rnd = random.Random(7)
        live: list[int] = []
        probes = [f"10.{a}.{b}.{c}" for a in (1, 2) for b in (0, 1, 2) for c in (0, 1, 5, 200)]
        probes += ["fd00:1::1", "fd00:1::2:3", "::ffff:10.1.0.5", "169.254.169.254",
                   "127.0.0.1"]
        for step in range(300):
            if live and rnd.random() < 0.35:
                hooks.remove(FAKE_CGID, live.pop(rnd.randrange(len(live))))
            else:
                kind = rnd.random()
                if kind < 0.5:
                    cidr = (f"10.{rnd.choice((1, 2))}.{rnd.choice((0, 1, 2))}."
                            f"{rnd.choice((0, 1, 5))}/{rnd.choice((8, 16, 24, 30, 32))}")
                elif kind < 0.8:
                    cidr = f"fd00:1::{rnd.choice((0, 1))}/{rnd.choice((32, 64, 112, 128))}"
                else:
                    cidr = rnd.choice(("0.0.0.0/0", "169.254.169.254/32", "::/0",
                                       "127.0.0.1/32"))
                lo = rnd.choice((80, 443, 5000))
                hi = lo + rnd.choice((0, 0, 100))
                try:
                    live.append(hooks.add(FAKE_CGID, cidr, (lo, hi),
                                          proto=rnd.choice(("tcp", "udp")),
                                          dns=rnd.random() < 0.2))
                except PolicyError:
                    pass
            if step % 10 == 0:
                for a in probes:
                    for port in (80, 443, 500, 5050):
                        for proto in ("tcp", "udp"):
                            want = hooks.allowed(FAKE_CGID, str(ipaddress.ip_address(a)), port,
                                                 proto)
                            got = hooks.kernel_view(FAKE_CGID, a, port, proto)
                            assert got == want, (step, a, port, proto)
    finally:
        hooks.clear(FAKE_CGID)
    assert hooks.trie_count(FAKE_CGID) == 0
    assert hooks.run_flags(FAKE_CGID) is None


def test_a_broad_rule_never_opens_a_sensitive_address(kernel: Kernel) -> None:
    hooks = kernel.net.hooks
    hooks.register_run(FAKE_CGID, dns_port=0, flags=0)
    try:
        hooks.add(FAKE_CGID, "0.0.0.0/0", 80)
        hooks.add(FAKE_CGID, "::/0", 80)
        assert hooks.kernel_view(FAKE_CGID, "93.184.216.34", 80)
        for a in ("169.254.169.254", "127.0.0.1", "fe80::1", "fd00:ec2::254", "::1"):
            assert not hooks.kernel_view(FAKE_CGID, a, 80), a
        hooks.add(FAKE_CGID, "169.254.169.254", 80, dns=True)  # a DNS answer: still not
        assert not hooks.kernel_view(FAKE_CGID, "169.254.169.254", 80)
        hooks.add(FAKE_CGID, "169.254.169.254", 80)  # named exactly
        assert hooks.kernel_view(FAKE_CGID, "169.254.169.254", 80)
        assert not hooks.kernel_view(FAKE_CGID, "169.254.169.253", 80)
    finally:
        hooks.clear(FAKE_CGID)
