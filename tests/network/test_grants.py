"""Glass-break for the network: a refused destination raises an escalation; approving it grants
that destination (scope destination) for the TTL, to new runs and to the run that is still
going; when the window closes (expiry or revocation) new connects are refused at once and the
connections opened under the grant are ended (their holders too, with onExpiry: kill)."""

from __future__ import annotations

import time

import pytest

from sandbox.errors import EscalationError
from tests.network.conftest import HOST4, HOST4B, Runner, wait_for

pytestmark = pytest.mark.kernel


def _esc(r: object, **match: object) -> str:
    b = r.blocked(**match)  # type: ignore[attr-defined]
    assert b and b[0]["escalation_id"], r.events  # type: ignore[attr-defined]
    return str(b[0]["escalation_id"])


def test_approved_destination_connects_in_the_window_and_not_after(netns: None,
                                                                    runner: Runner) -> None:
    p = runner.profile("g-window", {"allow": [f"{HOST4B}:5432"]})
    r = runner.call(p, "tcp", HOST4, 5432)
    assert r.value == "EPERM"
    esc = _esc(r, destination=f"{HOST4}:5432")
    svc = runner.escalations()
    with pytest.raises(EscalationError):
        svc.decide(esc, approve=True, by="bot-1", ttl_s=3)  # never the requesting agent
    with pytest.raises(EscalationError, match="network block"):
        svc.decide(esc, approve=True, by="alice", ttl_s=3, scope="command")
    rec = svc.decide(esc, approve=True, by="alice", ttl_s=3)
    g = svc.get_grant(rec.grant_id)
    assert g.scope == "destination" and g.destination == f"{HOST4}:5432" and g.agent == "bot-1"
    r = runner.call(p, "many", [["tcp", HOST4, 5432], ["tcp", HOST4, 8080]])
    assert r.value == ["ok", "EPERM"], r.value  # that destination, nothing more
    used = r.of("grant_used", grant_id=g.id)
    assert used and f"destination {HOST4}:5432" in used[0]["relaxed_profile"]
    # another agent has no grant
    assert runner.call(p, "tcp", HOST4, 5432, agent="bot-2").value == "EPERM"
    time.sleep(max(0.0, g.expires_at - time.time()) + 0.2)
    r = runner.call(p, "tcp", HOST4, 5432)
    assert r.value == "EPERM"
    assert r.blocked(destination=f"{HOST4}:5432")


def test_a_run_picks_up_an_approval_while_it_runs(netns: None, runner: Runner) -> None:
    p = runner.profile("g-live", {})
    bg = runner.start(p, "retry_tcp", HOST4, 8080, 8.0)
    svc = runner.escalations()
    pending = wait_for(lambda: svc.list("pending"), 10)
    assert pending and pending[0].destination == f"{HOST4}:8080"
    t0 = time.monotonic()
    svc.decide(pending[0].id, approve=True, by="alice", ttl_s=30)
    r = bg.wait()
    assert r.value["result"] == "ok", r.value
    assert r.value["at"] > 0 and time.monotonic() - t0 < 5
    assert r.of("grant_used")


@pytest.mark.parametrize("on_expiry", ["kill", "keep"])
def test_a_connection_kept_open_past_revocation_is_ended(netns: None, runner: Runner,
                                                         on_expiry: str) -> None:
    p = runner.profile(f"g-revoke-{on_expiry}", {},
                       escalation={"ttl": "30s", "maxTtl": "1m", "onExpiry": on_expiry})
    r = runner.call(p, "tcp", HOST4, 9000)
    esc = _esc(r, destination=f"{HOST4}:9000")
    svc = runner.escalations()
    gid = svc.decide(esc, approve=True, by="alice").grant_id
    bg = runner.start(p, "hold", HOST4, 9000, 15)
    time.sleep(1.5)  # connected and pinging
    t0 = time.monotonic()
    svc.revoke(gid, by="alice", why="done")
    r = bg.wait(30)
    took = time.monotonic() - t0
    assert took < 5, took
    ended = r.of("grant_ended", grant_id=gid)
    assert ended and ended[0]["why"] == "revoked"
    if on_expiry == "kill":
        assert r.code == 137 and ended[0]["killed_pids"], (r.code, r.out, ended)
    else:
        assert r.code == 0 and r.value["connect"] == "ok", r.out
        assert r.value["ended"] in ("ECONNABORTED", "ECONNRESET", "eof"), r.value
        assert not ended[0]["killed_pids"]
    # and new connects are refused again
    assert runner.call(p, "tcp", HOST4, 9000).value == "EPERM"


def test_a_connection_kept_open_past_expiry_is_ended(netns: None, runner: Runner) -> None:
    p = runner.profile("g-expire", {}, escalation={"ttl": "2s", "maxTtl": "1m",
                                                   "onExpiry": "keep"})
    esc = _esc(runner.call(p, "tcp", HOST4, 8443), destination=f"{HOST4}:8443")
    runner.escalations().decide(esc, approve=True, by="alice")
    r = runner.call(p, "hold", HOST4, 8443, 8)
    assert r.value["connect"] == "ok" and r.value["ended"] in ("ECONNABORTED", "ECONNRESET",
                                                               "eof"), r.value
    assert r.value["pings"] < 60  # ended near the 2 s expiry, not at the end of the 8 s
    assert r.of("grant_ended", why="expired")


def test_a_name_grant_and_the_address_after_the_grant_ended(netns: None, runner: Runner,
                                                            upstream: object) -> None:
    p = runner.profile("g-name", {"allow": ["web.test:8080"]})
    r = runner.call(p, "resolve_connect", "granted.test", 8080)
    assert str(r.value["addrs"]).startswith("gaierror")
    esc = _esc(r, destination="granted.test:*")
    svc = runner.escalations()
    gid = svc.decide(esc, approve=True, by="alice", ttl_s=3).grant_id
    # within the window the name resolves and its address opens (any port of the name)
    r = runner.call(p, "many", [["resolve_connect", "granted.test", 8080],
                                ["sleep", 4.0], ["tcp", HOST4B, 8080],
                                ["resolve_connect", "granted.test", 8080]])
    assert r.value[0] == {"addrs": [HOST4B], "tcp": "ok"}, r.value
    # the same address after the grant ended (a client keeping the address): refused
    assert r.value[2] == "EPERM", r.value
    assert str(r.value[3]["addrs"]).startswith("gaierror")
    assert r.of("grant_ended", grant_id=gid, why="expired")
    assert r.blocked(destination=f"{HOST4B}:8080")


def test_a_unix_socket_grant(netns: None, runner: Runner, tmp_path: object) -> None:
    import socket as s

    path = f"{tmp_path}/app.sock"
    srv = s.socket(s.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    try:
        p = runner.profile("g-unix", {})
        esc = _esc(runner.call(p, "unix", path), destination=f"unix:{path}")
        runner.escalations().decide(esc, approve=True, by="alice", ttl_s=20)
        assert runner.call(p, "unix", path).value == "ok"
    finally:
        srv.close()


def test_the_relaxed_profile_scope_and_its_window(netns: None, runner: Runner) -> None:
    """scope profile: the relaxed profile's network section for the TTL; when it closes the
    strict section applies again and what only the relaxed one allowed is ended."""
    runner.profile("g-ops", {"allow": [f"{HOST4}:9000", f"{HOST4B}:5432"]}, relax=True,
                   escalation={"ttl": "3s", "maxTtl": "1m", "onExpiry": "keep"})
    p = runner.profile("g-strict", {"allow": [f"{HOST4B}:5432"]},
                       escalation={"ttl": "3s", "maxTtl": "1m", "relaxedProfile": "g-ops",
                                   "onExpiry": "keep"})
    esc = _esc(runner.call(p, "tcp", HOST4, 9000), destination=f"{HOST4}:9000")
    rec = runner.escalations().decide(esc, approve=True, by="alice", scope="profile")
    assert runner.escalations().get_grant(rec.grant_id).scope == "profile"
    r = runner.call(p, "many", [["tcp", HOST4, 9000], ["hold", HOST4, 9000, 6],
                                ["tcp", HOST4, 9000], ["tcp", HOST4B, 5432]])
    assert r.value[0] == "ok" and r.value[1]["connect"] == "ok", r.value
    assert r.value[1]["ended"] in ("ECONNABORTED", "ECONNRESET", "eof"), r.value
    # after the window: what only the relaxed profile allowed is refused, what both allow works
    assert r.value[2:] == ["EPERM", "ok"], r.value
    assert r.of("grant_ended", why="expired")


def test_an_abstract_unix_socket_grant(netns: None, runner: Runner) -> None:
    """With a profile that lists an abstract name, the hooks guard abstract names (the run's
    Landlock domain does not scope them): an unlisted one is refused, escalatable, and an
    approved one opens for the agent's later runs (every other name stays refused)."""
    import os
    import socket as s

    name = f"gb-grant-{os.getpid()}"
    srv = s.socket(s.AF_UNIX)
    srv.bind("\0" + name)
    srv.listen(4)
    try:
        p = runner.profile("g-abstract", {"unix": [f"@{name}-listed"]})
        r = runner.call(p, "many", [["unix", f"@{name}"], ["unix", f"@{name}-other"]])
        assert r.value == ["EPERM", "EPERM"], r.value
        esc = _esc(r, destination=f"unix:@{name}")
        runner.escalations().decide(esc, approve=True, by="alice", ttl_s=20)
        r = runner.call(p, "many", [["unix", f"@{name}"], ["unix", f"@{name}-other"]])
        assert r.value == ["ok", "EPERM"], r.value
        assert r.blocked(destination=f"unix:@{name}-other", rule_id="network.unix.abstract")
    finally:
        srv.close()


def test_a_tampered_destination_grant_is_rejected(netns: None, runner: Runner) -> None:
    """The destination is signed with the rest of the grant (escalation.grantsig): a writer to
    the store who widens it (or moves it elsewhere) gets a grant no runner honours, audited."""
    import json
    import sqlite3

    p = runner.profile("g-tamper", {})
    esc = _esc(runner.call(p, "tcp", HOST4, 5432), destination=f"{HOST4}:5432")
    gid = runner.escalations().decide(esc, approve=True, by="alice", ttl_s=60).grant_id
    assert runner.call(p, "tcp", HOST4, 5432).value == "ok"  # control: the genuine grant
    db = sqlite3.connect(runner.state / "state.db")
    try:
        data = json.loads(db.execute("SELECT data FROM grants WHERE id=?",
                                     (gid,)).fetchone()[0])
        data["destination"] = "10.99.0.0/16:*"
        db.execute("UPDATE grants SET data=? WHERE id=?", (json.dumps(data), gid))
        db.commit()
    finally:
        db.close()
    r = runner.call(p, "many", [["tcp", HOST4, 5432], ["tcp", HOST4B, 8080]])
    assert r.value == ["EPERM", "EPERM"], r.value
    rejected = r.of("grant_rejected", grant_id=gid)
    assert rejected and "edited after it was signed" in rejected[0]["why"], r.events
    assert not r.of("grant_used", grant_id=gid)
