"""Two-tier credentials end to end (issue 14), root in process through the real `glassbreak` CLI
and the real kernel; the daemon's side is in tests/security/test_credentials.py.

The strict profile hands the agent tier (a read-only kubeconfig file, a read API token from the
daemon's environment); its relaxed profile the escalated tier (a kubeconfig minted for the
grant's window by a fake mint command that records its TTL and arguments). Proven here: the TTL
is at most the grant's remaining window; a second run under the grant reuses the mint; a strict
run gets the low tier (and never the escalated sources, not even the operator's environment
variables an in-process run inherits); the per-run files are gone after the run and when the
grant's window closes; a mint that fails, hangs or prints nothing fails the run closed (125),
audited, without falling back to the strict tier."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._sandbox_helpers import alive
from tests.conftest import run_cli
from tests.security._credentials import (
    SHOW,
    World,
    files_gone,
    grant_of,
    make_world,
    printed,
    result,
)

pytestmark = pytest.mark.kernel

DELETE = ["kubectl", "-n", "prod", "delete", "pod", "web-1"]


@pytest.fixture
def world(tmp_path: Path, stub_kubectl: Path) -> Iterator[World]:
    yield make_world(tmp_path / "w")


def run(w: World, *argv: str, agent: str = "bot-1", timeout: float = 60) -> tuple[int, str, str]:
    r = run_cli("run", "-o", "json", "-p", "c-strict", "--agent", agent, "--", *argv,
                env=w.env(), timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def show(w: World, agent: str = "bot-1") -> tuple[dict[str, str], str]:
    code, out, err = run(w, "sh", "-c", SHOW, agent=agent)
    assert code == 0, err
    assert "stub-kubectl get pods" in out  # kubectl ran with this environment
    return printed(out), out


def approve(w: World, ttl: str = "10m", agent: str = "bot-1") -> str:
    """Blocked under the strict profile, approved by its owner: the grant id."""
    code, _, err = run(w, *DELETE, agent=agent)
    assert code == 126, err
    esc = result(err)["escalation_id"]
    ok = run_cli("escalations", "approve", esc, "--as", "alice", "--ttl", ttl, "-o", "json",
                 env=w.env())
    assert ok.returncode == 0, ok.stderr
    import json

    return str(json.loads(ok.stdout)["grant_id"])


def test_strict_tier_without_a_grant(world: World) -> None:
    p, out = show(world)
    assert f"token: {world.low_token}" in out
    assert p["api"] == world.api_read
    assert p["ops"] == "" and p["bg"] == "" and "bgtok-" not in out
    # the sources themselves (the daemon's variables) never pass into a run, whatever tier
    assert p["src"] == ""
    kc = p["kc"]
    from sandbox.run.credentials import run_root_path

    assert kc.startswith(run_root_path() + "/r-") and kc.endswith("/kubeconfig")
    assert files_gone(kc)  # removed with the run
    assert world.mints() == []  # nothing minted without a grant
    issued = [e for e in world.audit() if e["type"] == "credential_issued"]
    assert {(e["name"], e["source"], e["profile"]) for e in issued} == {
        ("kubeconfig", "file", "c-strict"), ("api", "daemonEnv", "c-strict")}


def test_escalated_tier_ttl_within_the_window_minted_once_per_grant(world: World) -> None:
    gid = approve(world)
    grant = grant_of(world.env(), gid)
    t0 = time.time()
    p, out = show(world)
    t1 = time.time()
    mints = world.mints()
    assert len(mints) == 1, mints
    m = mints[0]
    window = grant["expires_at"] - t0
    assert m.ttl_s <= window, (m.ttl_s, window)  # never past the grant's end
    assert m.ttl_s >= grant["expires_at"] - t1 - 2  # and not needlessly short
    assert f"--duration {m.ttl_s}s --agent bot-1 --grant {gid}" in m.args
    assert f"token: {m.token}" in out and world.low_token not in out
    assert p["ops"] == world.api_ops and p["api"] == ""  # `api: null` in the relaxed profile
    assert open_breakglass(out) == world.breakglass
    assert p["src"] == ""

    # a second run under the same grant reuses the mint (the command ran once)
    p2, out2 = show(world)
    assert len(world.mints()) == 1 and f"token: {m.token}" in out2
    assert p2["kc"] != p["kc"]  # each run its own private directory
    issued = [e for e in world.audit() if e["type"] == "credential_issued" and
              e["name"] == "kubeconfig"]
    assert [e["cached"] for e in issued] == [False, True]
    assert issued[0]["grant_id"] == gid and issued[0]["mint_ms"] > 0
    assert issued[0]["expires_at"] == pytest.approx(grant["expires_at"])

    # another agent, no grant: the low tier, while the grant is open
    p3, out3 = show(world, agent="bot-2")
    assert f"token: {world.low_token}" in out3 and m.token not in out3
    assert p3["ops"] == "" and p3["bg"] == ""
    assert len(world.mints()) == 1
    for kc in (p["kc"], p2["kc"], p3["kc"]):
        assert files_gone(kc)


def open_breakglass(out: str) -> str:
    return next(x for x in out.splitlines() if x.startswith("bgtok-"))


def test_expired_grant_files_gone_processes_ended(world: World) -> None:
    gid = approve(world, ttl="4s")
    script = ('echo "kc=$KUBECONFIG"; echo "bg=$BREAKGLASS"; cat "$KUBECONFIG" >/dev/null && '
              'echo read-ok; sleep 30')
    t0 = time.monotonic()
    code, out, err = run(world, "sh", "-c", script, timeout=40)
    assert code == 128 + 9, err  # ended when the window closed
    assert time.monotonic() - t0 < 15
    assert "read-ok" in out
    p = printed(out)
    for path in (p["kc"], p["bg"]):
        assert files_gone(path), path
    ended = [e for e in world.audit() if e["type"] == "grant_ended"]
    assert ended and ended[-1]["grant_id"] == gid and ended[-1]["why"] == "expired"
    # the grant's mint is forgotten with its window
    cache = world.state / "credential-cache"
    assert not [f for f in cache.iterdir() if f.suffix == ".json"], list(cache.iterdir())
    # strict again: the low tier
    p2, out2 = show(world)
    assert f"token: {world.low_token}" in out2 and p2["ops"] == ""


def test_revoked_grant_files_gone_and_mint_forgotten(world: World) -> None:
    gid = approve(world)
    import subprocess

    from tests.conftest import GLASSBREAK

    proc = subprocess.Popen(
        [GLASSBREAK, "run", "-p", "c-strict", "--agent", "bot-1", "--", "sh", "-c",
         'echo "kc=$KUBECONFIG"; sleep 30'], env=world.env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    kc = line.strip().split("=", 1)[1]
    assert os.path.exists(kc)
    cache = world.state / "credential-cache"
    assert [f for f in cache.iterdir() if f.suffix == ".json"]
    r = run_cli("grants", "revoke", gid, "--as", "alice", env=world.env())
    assert r.returncode == 0, r.stderr
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + 9, err
    assert files_gone(kc)
    assert not [f for f in cache.iterdir() if f.suffix == ".json"]


@pytest.mark.parametrize("mode,why,code", [
    ("fail", "exited 3", 3),
    ("hang", "timed out after 3s (killed)", None),
    ("empty", "printed nothing on stdout", 0),
])
def test_mint_failure_fails_closed(world: World, mode: str, why: str, code: int | None) -> None:
    gid = approve(world)
    world.mode(mode)
    t0 = time.monotonic()
    rc, out, err = run(world, "sh", "-c", SHOW)
    took = time.monotonic() - t0
    assert rc == 125, err
    assert out == ""  # nothing ran: neither tier
    res = result(err)
    assert res["decision"] == "error"
    assert "credential kubeconfig of profile c-ops could not be issued: the mint command" \
        in res["reason"] and why in res["reason"]
    assert "no other credential is used instead" in res["reason"]
    failed = [e for e in world.audit() if e["type"] == "credential_failed"]
    assert len(failed) == 1
    f = failed[0]
    assert f["name"] == "kubeconfig" and f["grant_id"] == gid and f["exit_code"] == code
    assert f["source"] == "mint" and why in f["why"]
    if mode == "fail":
        assert "serviceaccounts/token is forbidden" in f["stderr_tail"]
        assert "AKIAIOSFODNN7EXAMPLE" not in f["stderr_tail"]  # redacted
        assert "AKIAIOSFODNN7EXAMPLE" not in err
    if mode == "hang":
        assert took < 15
        for pid_file in ("mint.pid", "mint.child"):  # the mint's whole group was killed
            pid = int((world.d / pid_file).read_text())
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(pid), pid_file
    assert not [e for e in world.audit() if e["type"] == "credential_issued" and
                e["profile"] == "c-ops"]
    # the next run, with a working mint, gets the escalated tier (nothing was cached)
    world.mode(None)
    p, out2 = show(world)
    assert len(world.mints()) == 1 and p["ops"] == world.api_ops


def test_mint_without_a_grant_refused(world: World) -> None:
    """Root may name a relaxed profile; a mint still needs a grant's window."""
    r = run_cli("run", "-p", "c-ops", "--agent", "bot-1", "--", "ls", env=world.env())
    assert r.returncode == 125
    assert "minted for a grant's window, and this run has no grant" in r.stderr
    assert world.mints() == []


def test_runs_starting_together_under_one_grant_mint_once(world: World) -> None:
    import subprocess

    from tests.conftest import GLASSBREAK

    approve(world)
    procs = [subprocess.Popen([GLASSBREAK, "run", "-p", "c-strict", "--agent", "bot-1", "--",
                               "sh", "-c", 'grep token: "$KUBECONFIG"'], env=world.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    (m,) = world.mints()  # one mint for the three (a lock per grant and credential)
    assert all(m.token in out for out, _ in outs)
