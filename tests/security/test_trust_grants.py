"""Issue 9, attack 5: a writer to the store minted grants. Four plain Redis writes (the grant
JSON, its `live` key, two index entries) made a run use the relaxed profile for an escalation
that never existed; an edited state.db is the same hole.

Grants are now signed (Ed25519) by the deciding service; a runner honours only a grant whose
signature verifies with its key and whose signed fields match the run. Real redis-server, real
SQLite file, root in process (the operator may name any agent, as in the issue's command)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer, grant_keypair, run_cli
from tests.security._trust import last_json, of, workdir

pytestmark = [pytest.mark.kernel, pytest.mark.redis]

FORGED = ["kubectl", "-n", "prod", "delete", "pod", "forged"]


def env_for(state: Path, store: str | None = None, config: Path | None = None
            ) -> dict[str, str]:
    env = {"GLASSBREAK_STATE_DIR": str(state), "GLASSBREAK_NO_DAEMON": "1",
           "PATH": "/usr/local/bin:/usr/bin:/bin"}
    if store:
        env["GLASSBREAK_STORE"] = store
    if config:
        env["GLASSBREAK_CONFIG"] = str(config)
    return env


def audit(state: Path) -> list[dict[str, Any]]:
    p = state / "audit.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def forged_grant(gid: str, agent: str = "evil-bot", **over: Any) -> dict[str, Any]:
    now = time.time()
    g = {"id": gid, "escalation_id": "esc-never-existed", "agent": agent,
         "profile": "k8s-readonly", "scope": "profile", "relaxed_profile": "k8s-ops-escalated",
         "approver": "sre-oncall", "created_at": now, "expires_at": now + 600}
    g.update(over)
    return g


def four_redis_writes(url: str, g: dict[str, Any]) -> None:
    """Exactly what the issue did, with redis-py."""
    import redis

    r = redis.Redis.from_url(url)
    r.set("gb:grant:" + g["id"], json.dumps(g))
    r.set("gb:grant:live:" + g["id"], "1", px=600_000)
    r.sadd(f"gb:grants:profile:{g['profile']}:{g['agent']}", g["id"])
    r.zadd("gb:grants:index", {g["id"]: g["created_at"]})
    r.close()


def run_as(env: dict[str, str], agent: str, argv: list[str]) -> Any:
    return run_cli("run", "-o", "json", "-p", "k8s-readonly", "--agent", agent, "--", *argv,
                   env=env)


def approve(env: dict[str, str], agent: str, argv: list[str]) -> dict[str, Any]:
    """The genuine path: blocked, escalated, approved by the owner."""
    r = run_as(env, agent, argv)
    assert r.returncode == 126, r.stderr
    esc = last_json(r.stderr)["escalation_id"]
    ok = run_cli("escalations", "approve", esc, "--as", "sre-oncall", "-o", "json", env=env)
    assert ok.returncode == 0, ok.stderr
    return json.loads(ok.stdout)  # type: ignore[no-any-return]


def test_four_redis_writes_mint_nothing(redis_server: RedisServer, tmp_path: Path,
                                        stub_kubectl: Path) -> None:
    state = tmp_path / "state"
    env = env_for(state, redis_server.url)
    four_redis_writes(redis_server.url, forged_grant("gr-forged0001"))
    r = run_as(env, "evil-bot", FORGED)
    assert r.returncode == 126 and "stub-kubectl" not in r.stdout, r.stderr
    assert "approved by sre-oncall" not in r.stderr
    rejected = of(audit(state), "grant_rejected", grant_id="gr-forged0001")
    assert rejected and "unsigned" in rejected[-1]["why"]
    assert rejected[-1]["agent"] == "evil-bot" and rejected[-1]["run_id"]
    # signed with a key of the attacker's own: rejected too
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from escalation.grantsig import Signer, key_id
    from escalation.models import Grant

    k = Ed25519PrivateKey.generate()
    g = Signer(k, key_id(k.public_key()), "attacker").sign(
        Grant.model_validate(forged_grant("gr-forged0002")))
    four_redis_writes(redis_server.url, json.loads(g.model_dump_json()))
    r = run_as(env, "evil-bot", FORGED)
    assert r.returncode == 126 and "stub-kubectl" not in r.stdout
    why = of(audit(state), "grant_rejected", grant_id="gr-forged0002")[-1]["why"]
    assert f"signature is by key {key_id(k.public_key())}" in why
    # control: a genuine approval for evil-bot works on the same store
    approve(env, "evil-bot", FORGED)
    r = run_as(env, "evil-bot", FORGED)
    assert r.returncode == 0 and r.stdout.startswith("stub-kubectl"), r.stderr


def test_tampered_redis_grant_rejected(redis_server: RedisServer, tmp_path: Path,
                                       stub_kubectl: Path) -> None:
    import redis

    state = tmp_path / "state"
    env = env_for(state, redis_server.url)
    argv = [*FORGED[:-1], "tampered"]
    rec = approve(env, "bot-1", argv)
    assert run_as(env, "bot-1", argv).returncode == 0
    r = redis.Redis.from_url(redis_server.url)
    key = "gb:grant:" + rec["grant_id"]
    g = json.loads(r.get(key))  # type: ignore[arg-type]
    g["expires_at"] += 3600  # extend the window
    r.set(key, json.dumps(g))
    res = run_as(env, "bot-1", argv)
    assert res.returncode == 126 and "stub-kubectl" not in res.stdout
    why = of(audit(state), "grant_rejected", grant_id=rec["grant_id"])[-1]["why"]
    assert "edited after it was signed" in why
    # the same grant moved to another agent's index
    g["expires_at"] -= 3600
    g["agent"] = "evil-bot"
    r.set(key, json.dumps(g))
    r.sadd("gb:grants:profile:k8s-readonly:evil-bot", rec["grant_id"])
    assert run_as(env, "evil-bot", argv).returncode == 126
    # restored byte for byte from the signed fields: honoured again (it was never the key)
    g["agent"] = "bot-1"
    r.set(key, json.dumps(g))
    assert run_as(env, "bot-1", argv).returncode == 0
    r.close()


def test_edited_sqlite_grant_rejected(tmp_path: Path, stub_kubectl: Path) -> None:
    state = tmp_path / "state"
    env = env_for(state)
    argv = [*FORGED[:-1], "sqlite"]
    rec = approve(env, "bot-1", argv)
    assert run_as(env, "bot-1", argv).returncode == 0  # control: genuine grant works
    db = sqlite3.connect(state / "state.db")
    data = json.loads(db.execute("SELECT data FROM grants WHERE id=?",
                                 (rec["grant_id"],)).fetchone()[0])
    data["agent"] = "evil-bot"
    db.execute("UPDATE grants SET agent='evil-bot', data=? WHERE id=?",
               (json.dumps(data), rec["grant_id"]))
    forged = forged_grant("gr-forged0003")
    db.execute("INSERT INTO grants VALUES (?,?,?,?,?,?,?,?,?,?)",
               (forged["id"], "evil-bot", "k8s-readonly", "profile", None, 0,
                forged["expires_at"], None, None, json.dumps(forged)))
    db.commit()
    db.close()
    r = run_as(env, "evil-bot", argv)
    assert r.returncode == 126 and "stub-kubectl" not in r.stdout, r.stderr
    rejected = {e["grant_id"]: e["why"] for e in of(audit(state), "grant_rejected")}
    assert "edited after it was signed" in rejected[rec["grant_id"]]
    assert "unsigned" in rejected["gr-forged0003"]
    assert run_as(env, "bot-1", argv).returncode == 126  # the edited grant is no one's now


def test_runner_with_only_the_public_key(redis_server: RedisServer, stub_kubectl: Path
                                         ) -> None:
    d = workdir("gb-trust-keys-")
    key, pub = grant_keypair(d)
    (d / "decider.yaml").write_text(json.dumps({"grantSigning": {
        "privateKeyFile": str(key), "publicKeyFile": str(pub)}}))
    (d / "runner.yaml").write_text(json.dumps({"grantSigning": {"publicKeyFile": str(pub)}}))
    for f in ("decider.yaml", "runner.yaml"):
        (d / f).chmod(0o644)
    runner = env_for(d / "runner-state", redis_server.url, d / "runner.yaml")
    decider = env_for(d / "decider-state", redis_server.url, d / "decider.yaml")
    argv = [*FORGED[:-1], "pubkey"]
    r = run_as(runner, "bot-1", argv)
    assert r.returncode == 126
    esc = last_json(r.stderr)["escalation_id"]
    # the runner host cannot decide: it holds no signing key
    no = run_cli("escalations", "approve", esc, "--as", "sre-oncall", env=runner)
    assert no.returncode != 0 and "only the public grant key" in no.stderr, no.stderr
    assert not (d / "runner-state" / "grant-signing.key").exists()
    ok = run_cli("escalations", "approve", esc, "--as", "sre-oncall", env=decider)
    assert ok.returncode == 0, ok.stderr
    r = run_as(runner, "bot-1", argv)
    assert r.returncode == 0 and r.stdout.startswith("stub-kubectl"), r.stderr
    # a private key readable by others is refused (root checks it)
    key.chmod(0o644)
    try:
        esc2 = last_json(run_as(runner, "bot-2", argv).stderr)["escalation_id"]
        bad = run_cli("escalations", "approve", esc2, "--as", "sre-oncall", env=decider)
        assert bad.returncode != 0 and "a secret key must be 0600" in bad.stderr
    finally:
        key.chmod(0o600)


def test_every_signed_field_is_covered(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from escalation.grantsig import SIGNED_FIELDS, Signer, key_id
    from escalation.models import Grant

    k = Ed25519PrivateKey.generate()
    s = Signer(k, key_id(k.public_key()), "test")
    g = s.sign(Grant.model_validate(forged_grant("gr-fields", scope="command",
                                                 relaxed_profile=None, argv=["a"], cwd="/",
                                                 binary_sha256="ab", cmd_key="cd")))
    v = s.verifier()
    assert v.why_invalid(g) is None
    changes = {"id": "gr-x", "escalation_id": "esc-x", "agent": "x", "profile": "x",
               "scope": "profile", "relaxed_profile": "x", "argv": ["b"], "cwd": "/x",
               "binary_sha256": "ef", "cmd_key": "gh", "one_shot": True, "approver": "x",
               "created_at": g.created_at - 1, "expires_at": g.expires_at + 1,
               "on_expiry": "keep"}
    assert set(changes) == set(SIGNED_FIELDS)
    for f, val in changes.items():
        assert v.why_invalid(g.model_copy(update={f: val})) is not None, f
    # store state that only narrows a grant is not signed
    assert v.why_invalid(g.model_copy(update={"revoked_at": 1.0, "consumed_at": 2.0})) is None


@pytest.mark.parametrize("fields", [{"fs_path": "/srv/data", "fs_access": "write"},
                                    {"destination": "10.20.0.5:5432"}])
def test_scope_fields_are_signed_when_set(fields: dict[str, str]) -> None:
    """A path grant's path and access and a destination grant's destination are signed: edited,
    removed or added to another grant, the signature no longer verifies. A grant without them
    signs the same bytes as before they existed (older grants keep their signatures)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from escalation.grantsig import SIGNED_IF_SET, Signer, key_id, payload
    from escalation.models import Grant

    assert {"fs_path", "fs_access", "destination"} <= set(SIGNED_IF_SET)
    k = Ed25519PrivateKey.generate()
    s = Signer(k, key_id(k.public_key()), "test")
    scope = "destination" if "destination" in fields else "path"
    plain = Grant.model_validate(forged_grant("gr-plain", scope="profile"))
    assert not any(f.encode() in payload(plain) for f in SIGNED_IF_SET)
    g = s.sign(Grant.model_validate(forged_grant("gr-scope", scope=scope, relaxed_profile=None,
                                                 **fields)))
    v = s.verifier()
    assert v.why_invalid(g) is None
    for f in fields:
        assert v.why_invalid(g.model_copy(update={f: None})) is not None, f  # removed
    other = {"fs_path": "/", "fs_access": "read", "destination": "0.0.0.0/0:*"}
    for f in fields:
        assert v.why_invalid(g.model_copy(update={f: other[f]})) is not None, f  # edited
    signed_plain = s.sign(plain)
    for f, val in fields.items():  # added to a grant that had none
        assert v.why_invalid(signed_plain.model_copy(update={f: val})) is not None, f


HOT_PATH = """
import os, sys
from sandbox.run.supervisor import RunRequest, Supervisor
from sandbox.run.runclient import make_emit
fd = os.open(os.devnull, os.O_WRONLY)
res = Supervisor().run(RunRequest(argv=["/bin/sh", "-c", "true"], profile="k8s-readonly",
                                  agent="bot-1", stdout=fd, stderr=fd), make_emit("text", fd))
print(res.exit_code, "cryptography" in sys.modules)
"""


def test_an_allowed_run_without_grants_never_loads_cryptography(tmp_path: Path) -> None:
    """Grant checks cost nothing on the hot path: the signature code is imported only when the
    store holds a candidate grant for this run."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = dict(env_for(tmp_path / "state"), PATH=os.environ["PATH"])
    r = subprocess.run([sys.executable, "-c", HOT_PATH], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=60)
    assert r.stdout.split() == ["0", "False"], r.stderr
