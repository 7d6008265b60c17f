"""Real processes against the real stores: one-shot races, revocation across processes, a
Redis that dies mid-use (fail closed), and the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from escalation.backends import open_store
from escalation.service import EscalationService
from sandbox.errors import StoreError
from tests.conftest import RedisServer, run_cli
from tests.escalation.helpers import block_ctx, make_config

pytestmark = pytest.mark.redis
REPO = Path(__file__).resolve().parents[2]

RACER = """
import sys, time
from escalation.service import EscalationService
from escalation.backends import open_store
svc = EscalationService(open_store(sys.argv[1]), emit=lambda e: None)
argv = ["kubectl", "-n", "prod", "delete", "pod", "x"]
while time.time() < float(sys.argv[2]):
    pass
g = svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=argv, cwd="/srv/app",
                     binary_sha256="cd" * 32)
print("WON" if g else "LOST", flush=True)
"""


def test_racing_processes_one_shot_grant(store_url: str) -> None:
    svc = EscalationService(open_store(store_url), emit=lambda e: None, config=make_config())
    rec = svc.raise_block(block_ctx(relaxed_profile=None))
    svc.decide(rec.id, approve=True, by="alice", scope="command", one_shot=True)
    start_at = f"{time.time() + 1.5:.3f}"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, store_url, start_at], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert sorted(outs) == ["LOST"] * 5 + ["WON"], outs


WATCHER = """
import sys, time
from escalation.service import EscalationService
from escalation.backends import open_store
svc = EscalationService(open_store(sys.argv[1]), emit=lambda e: None)
stop = svc.subscribe_revocations(lambda gid: print(f"REVOKED {gid} {time.time():.6f}",
                                                   flush=True))
print("READY", flush=True)
time.sleep(20)
"""


def test_revocation_seen_by_second_process_within_a_second(redis_server: RedisServer) -> None:
    svc = EscalationService(open_store(redis_server.url), emit=lambda e: None,
                            config=make_config())
    gid = svc.decide(svc.raise_block(block_ctx()).id, approve=True, by="alice").grant_id
    w = subprocess.Popen([sys.executable, "-c", WATCHER, redis_server.url], cwd=REPO,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout is not None and w.stdout.readline().strip() == "READY"
        t0 = time.time()
        svc.revoke(gid or "", by="bob", why="done")
        line = w.stdout.readline().split()
        assert line[:2] == ["REVOKED", gid]
        assert float(line[2]) - t0 < 1.0
        # and the second host's own store read agrees
        other = EscalationService(open_store(redis_server.url), emit=lambda e: None)
        assert other.grant_status(gid or "") == "revoked"
    finally:
        w.kill()
        w.wait()


def test_redis_killed_mid_use_fails_closed(redis_server: RedisServer) -> None:
    svc = EscalationService(open_store(redis_server.url), emit=lambda e: None,
                            config=make_config())
    svc.decide(svc.raise_block(block_ctx()).id, approve=True, by="alice")
    assert svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["x"], cwd="/")
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        svc.active_grant(agent="agent-7", profile="k8s-readonly", argv=["x"], cwd="/")
    assert "unreachable" in e.value.message and "strict profile" in (e.value.hint or "")
    assert time.monotonic() - t0 < 5
    with pytest.raises(StoreError):
        svc.raise_block(block_ctx())
    with pytest.raises(StoreError):
        svc.grant_status("gr-x")


def test_cli_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db'}"
    env = {"GLASSBREAK_STORE": url, "GLASSBREAK_STATE_DIR": str(tmp_path)}
    svc = EscalationService(open_store(url), emit=lambda e: None, config=make_config())
    esc = svc.raise_block(block_ctx()).id
    lst = run_cli("escalations", "list", "-o", "json", env=env)
    assert lst.returncode == 0 and json.loads(lst.stdout)[0]["id"] == esc
    r = run_cli("escalations", "approve", esc, "--as", "agent-7", env=env)
    assert r.returncode == 1 and "requesting agent" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("escalations", "approve", esc, "--as", "alice", "--ttl", "2h", env=env)
    assert r.returncode == 1 and "maxTtl" in r.stderr
    r = run_cli("escalations", "approve", esc, "--as", "alice", "--ttl", "10m", "-o", "json",
                env=env)
    assert r.returncode == 0, r.stderr
    gid = json.loads(r.stdout)["grant_id"]
    shown = run_cli("escalations", "show", esc, env=env).stdout
    assert "approved by alice" in shown and "refused   by agent-7" in shown
    gl = json.loads(run_cli("grants", "list", "-o", "json", env=env).stdout)
    assert gl[0]["id"] == gid and gl[0]["status"] == "active"
    r = run_cli("grants", "revoke", gid, "--as", "bob", env=env)
    assert r.returncode == 0 and "revoked by bob" in r.stdout
    assert run_cli("grants", "list", env=env).stdout.strip() == "no active grants"
    esc2 = svc.raise_block(block_ctx(cwd="/x")).id
    r = run_cli("escalations", "deny", esc2, "--as", "bob", "--reason", "freeze", env=env)
    assert r.returncode == 0 and "denied by bob" in r.stdout
    events = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    kinds = {e["type"] for e in events}
    assert {"decision_refused", "escalation_decided", "grant_ended"} <= kinds
    bad = run_cli("escalations", "show", "esc-nope", env={**env, "GLASSBREAK_STORE":
                                                          "redis://127.0.0.1:1/0"})
    assert bad.returncode == 125 and "unreachable" in bad.stderr and "Traceback" not in bad.stderr
    assert os.path.exists(tmp_path / "db")
