"""Issue 14: the escalated credential exists only inside the grant's window, and no credential
value leaks.

- Redaction with the REAL values, everywhere a record goes: the audit log, the store (SQLite
  state.db and its WAL / every Redis key), webhook bodies caught by a real HTTP receiver,
  glassbreak's lines on the run's stderr, `escalations show|list` and `grants list`. The run's
  own stdout prints what the program prints (and does: the values are real).
- Through the daemon: a non-root caller gets the tier of its run in files of its own (0600 in a
  0700 directory), minted once per grant by the daemon; the caller's environment is never a
  source; a revocation ends the run and removes its files.
- Only the operator's profiles carry sources: a mint from a profile file someone else can change
  never runs.
- A strict run cannot read the escalated sources, the mint cache or other runs' credential
  files, even as root: the filesystem layer's self-protection (branch landlock) must hide them;
  until the branches meet these are expected failures (sandbox.run.credentials.credential_paths
  lists what to hide)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GLASSBREAK, RedisServer, run_cli
from tests.escalation.helpers import SECRET, Receiver
from tests.security._credentials import (
    SHOW,
    World,
    files_gone,
    grant_of,
    make_world,
    printed,
    result,
)
from tests.security._trust import NOBODY, Daemon, as_uid, gb, start_daemon, workdir

pytestmark = pytest.mark.kernel

DELETE = ["kubectl", "-n", "prod", "delete", "pod", "web-1"]
OTHER_UID = 64990


# ----------------------------------------------------------------------------- redaction


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    if request.param == "redis":
        srv: RedisServer = request.getfixturevalue("redis_server")
        return srv.url
    return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def store_bytes(w: World, url: str | None) -> bytes:
    """Everything the store holds, as bytes."""
    if url is None:
        out = b""
        for f in w.state.iterdir():
            if f.name.startswith("state.db"):
                out += f.read_bytes()
        db = sqlite3.connect(w.state / "state.db")  # and as SQLite reads it (WAL merged)
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 - our own tables
                out += repr(row).encode()
        db.close()
        return out
    import redis

    r = redis.Redis.from_url(url)
    out = b""
    for key in r.scan_iter("*"):
        kind = r.type(key)
        out += key + b"="
        if kind == b"string":
            out += r.get(key) or b""
        elif kind == b"hash":
            out += repr(r.hgetall(key)).encode()
        elif kind == b"set":
            out += repr(r.smembers(key)).encode()
        elif kind == b"zset":
            out += repr(r.zrange(key, 0, -1, withscores=True)).encode()
        elif kind == b"list":
            out += repr(r.lrange(key, 0, -1)).encode()
        out += b"\n"
    r.close()
    return out


LEAK = ('tok=$(grep token: "$KUBECONFIG"); bg=$(cat "$BREAKGLASS"); '
        'echo "printed: $tok $OPS_API_TOKEN $bg"; '
        'ls -d / $tok "$OPS_API_TOKEN" "$bg" >/dev/null 2>&1; '
        'rm -f $tok "$OPS_API_TOKEN" "$bg" 2>/dev/null; echo done')


def test_no_credential_value_reaches_any_record(tmp_path: Path, stub_kubectl: Path,
                                                store: str | None, receiver: Receiver) -> None:
    w = make_world(tmp_path / "w", webhook_url=receiver.url)
    extra = {"GB_TEST_WEBHOOK_SECRET": SECRET}
    if store:
        extra["GLASSBREAK_STORE"] = store
    env = w.env(**extra)
    stderr: list[str] = []

    def run(agent: str, *argv: str) -> subprocess.CompletedProcess[str]:
        r = run_cli("run", "-o", "json", "-p", "c-strict", "--agent", agent,
                    "--reason", "needs it", "--", *argv, env=env)
        stderr.append(r.stderr)
        return r

    # a pre-check block under the strict tier, the operator's source variables in the env
    r = run("bot-1", *DELETE)
    assert r.returncode == 126, r.stderr
    esc1 = result(r.stderr)["escalation_id"]
    ok = run_cli("escalations", "approve", esc1, "--as", "alice", env=env)
    assert ok.returncode == 0, ok.stderr
    # the escalated tier: the values in argv of execs that run, and of one that is blocked
    r = run("bot-1", "sh", "-c", LEAK)
    assert r.returncode == 0, r.stderr
    mint = w.mints()[0].token
    for value in (mint, w.api_ops, w.breakglass):  # the values were real, and the program's
        assert value in r.stdout                   # own output shows them
    blocked = [json.loads(x) for x in r.stderr.splitlines() if '"type":"blocked"' in x]
    assert blocked and blocked[0]["escalation_id"], r.stderr
    esc2 = blocked[0]["escalation_id"]
    assert "[credential kubeconfig]" in blocked[0]["argv"]  # what glassbreak shows on stderr
    # the strict tier's values, in another agent's blocked exec
    r = run("bot-2", "sh", "-c", 'ls -d / "$API_TOKEN" >/dev/null 2>&1; '
            'rm -f "$API_TOKEN" "$(grep token: "$KUBECONFIG")" 2>/dev/null; echo done')
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    esc3 = [json.loads(x) for x in r.stderr.splitlines() if '"type":"blocked"' in x][0][
        "escalation_id"]
    # an agent that saw a value (stdout is its own) and passes it on: masked in what this run,
    # which holds that credential, records (its run_started argv, the shell's exec)
    r = run("bot-2", "sh", "-c", f"echo replay {w.low_token} {w.api_read} >/dev/null")
    assert r.returncode == 0, r.stderr
    started = [e for e in w.audit() if e["type"] == "run_started"][-1]
    assert started["argv"][-1] == "echo replay [credential kubeconfig] [credential api] " \
        ">/dev/null"
    flush = run_cli("escalations", "deliver", env=env)
    assert flush.returncode == 0, flush.stderr
    deadline = time.monotonic() + 10
    while len({g["json"]["escalation"]["id"] for g in receiver.got}) < 3 and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert {esc1, esc2, esc3} <= {g["json"]["escalation"]["id"] for g in receiver.got}

    views = {"stderr": "\n".join(stderr),
             "audit": (w.state / "audit.jsonl").read_text(),
             "store": store_bytes(w, store).decode(errors="replace"),
             "webhooks": "\n".join(g["body"].decode() for g in receiver.got)}
    for esc in (esc1, esc2, esc3):
        for args in (("escalations", "show", esc), ("escalations", "show", esc, "-o", "json")):
            out = run_cli(*args, env=env)
            assert out.returncode == 0, out.stderr
            views[" ".join(args)] = out.stdout + out.stderr
    for args in (("escalations", "list", "-o", "json"), ("grants", "list", "--all", "-o",
                                                         "json")):
        views[" ".join(args)] = run_cli(*args, env=env).stdout
    values = w.secrets()
    assert len(values) == 5  # four sources and the one mint
    for where, text in views.items():
        for what, value in values.items():
            assert value not in text, f"{what} leaked into {where}"

    # what the records say instead
    shown = json.loads(run_cli("escalations", "show", esc2, "-o", "json", env=env).stdout)
    ctx = shown.get("context", shown)
    assert ctx["env"]["KUBECONFIG"] == "[credential kubeconfig]"
    assert ctx["env"]["OPS_API_TOKEN"] in ("[credential opsapi]", "[redacted]")
    assert "GB_TEST_API_OPS" not in ctx["env"] and "GB_TEST_API_READ" not in ctx["env"]
    assert "[credential kubeconfig]" in ctx["argv"] and "[credential opsapi]" in ctx["argv"]
    first = json.loads(run_cli("escalations", "show", esc1, "-o", "json", env=env).stdout)
    assert "GB_TEST_API_OPS" not in first.get("context", first)["env"]  # blocked pre-run too
    execs = [e for e in w.audit() if e["type"] == "exec" and e["argv"][:1] == ["ls"]]
    assert any("[credential breakglass]" in e["argv"] for e in execs)


# ----------------------------------------------------------------------------- the daemon


@pytest.fixture(scope="module")
def daemon_world() -> Iterator[tuple[Daemon, World]]:
    d = workdir("gb-creds-daemon-")
    w = make_world(d / "w")
    config = {"agents": {"ops-bot": {"users": ["nobody"], "profiles": ["c-strict"]},
                         "other-bot": {"users": [OTHER_UID], "profiles": ["c-strict"]}}}
    dm = start_daemon(d, config, GLASSBREAK_PROFILE_PATH=str(w.profiles), **w.source_env())
    w.state = dm.state
    try:
        yield dm, w
    finally:
        dm.stop()


def client(dm: Daemon) -> dict[str, str]:
    # the caller's own variables of the sources' names: never used
    return dm.client_env(GB_TEST_API_OPS="caller-forged-ops", GB_TEST_API_READ="caller-forged")


def show_as(dm: Daemon, prefix: tuple[str, ...]) -> tuple[dict[str, str], str, str]:
    script = SHOW + '; stat -c "mode=%a %u" "$KUBECONFIG" "${KUBECONFIG%/*}"'
    r = gb("run", "-o", "json", "--", "sh", "-c", script, env=client(dm), prefix=prefix)
    assert r.returncode == 0, r.stderr
    return printed(r.stdout), r.stdout, r.stderr


def test_daemon_issues_each_caller_its_tier(daemon_world: tuple[Daemon, World],
                                            stub_kubectl: Path) -> None:
    dm, w = daemon_world
    p, out, err = show_as(dm, NOBODY)
    assert f"token: {w.low_token}" in out and p["api"] == w.api_read
    assert p["src"] == "" and p["ops"] == ""
    assert "mode=600 65534" in out and "mode=700 65534" in out  # the caller's, private
    assert files_gone(p["kc"])

    r = gb("run", "-o", "json", "--", *DELETE, env=client(dm), prefix=NOBODY)
    assert r.returncode == 126, r.stderr
    esc = result(r.stderr)["escalation_id"]
    root = dict(dm.env, GLASSBREAK_NO_DAEMON="1")
    ok = run_cli("escalations", "approve", esc, "--as", "alice", "-o", "json", env=root)
    assert ok.returncode == 0, ok.stderr
    gid = json.loads(ok.stdout)["grant_id"]
    expires = grant_of(root, gid)["expires_at"]
    t0 = time.time()
    p1, out1, err1 = show_as(dm, NOBODY)
    (m,) = w.mints()
    assert m.ttl_s <= expires - t0 and "--agent ops-bot" in m.args
    assert f"token: {m.token}" in out1 and w.low_token not in out1
    assert p1["ops"] == w.api_ops != "caller-forged-ops"
    assert "mode=600 65534" in out1 and "mode=700 65534" in out1
    p2, out2, _ = show_as(dm, NOBODY)
    assert len(w.mints()) == 1 and f"token: {m.token}" in out2  # reused by the daemon
    # another caller, no grant: the low tier while ops-bot's grant is open
    p3, out3, err3 = show_as(dm, as_uid(OTHER_UID))
    assert f"token: {w.low_token}" in out3 and m.token not in out3 and p3["ops"] == ""
    assert f"mode=600 {OTHER_UID}" in out3
    for e in (err, err1, err3):
        for value in w.secrets().values():
            assert value not in e

    # a revocation ends the run and removes its files
    proc = subprocess.Popen([*NOBODY, GLASSBREAK, "run", "--", "sh", "-c",
                             'echo "kc=$KUBECONFIG"; sleep 30'], env=client(dm), cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    kc = proc.stdout.readline().strip().split("=", 1)[1]
    assert os.path.exists(kc) and os.stat(kc).st_uid == 65534
    rv = run_cli("grants", "revoke", gid, "--as", "alice", env=root)
    assert rv.returncode == 0, rv.stderr
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + 9
    assert files_gone(kc)
    audit = (dm.state / "audit.jsonl").read_text()
    for value in w.secrets().values():
        assert value not in audit



# ----------------------------------------------------------------------------- trust


def test_sources_only_from_the_operators_profiles(tmp_path: Path, stub_kubectl: Path) -> None:
    w = make_world(tmp_path / "w")
    loose = tmp_path / "loose"  # a directory anyone can write to
    loose.mkdir()
    loose.chmod(0o777)
    mint = f"{w.d}/mint.sh create token x --duration {{ttl}}"
    evil = ("name: evil-base\nowners: [alice]\nexec: {allow: [ls], default: block}\n"
            f"credentials:\n  k: {{file: {w.creds}/readonly.kubeconfig, env: KUBECONFIG}}\n")
    (loose / "evil-base.yaml").write_text(evil)
    (loose / "evil-base.yaml").chmod(0o644)
    # a trusted profile that extends, by path, a file someone else can change
    (w.profiles / "t-evil.yaml").write_text("name: t-evil\nextends: ../../loose/evil-base.yaml\n")
    r = run_cli("run", "-p", "t-evil", "--agent", "bot-1", "--", "ls", env=w.env())
    assert r.returncode == 125, r.stderr
    assert "outside the trusted profile directories" in r.stderr
    assert "only the operator's profiles may carry credential sources" in r.stderr
    # root naming a file in that directory: its own choice, but not a file others can change
    (loose / "mine.yaml").write_text(evil.replace("evil-base", "mine") +
                                     f"  m: {{mint: \"{mint}\", env: T, deliver: env}}\n")
    (loose / "mine.yaml").chmod(0o644)
    r = run_cli("run", "-p", str(loose / "mine.yaml"), "--agent", "bot-1", "--", "ls",
                env=w.env())
    assert r.returncode == 125 and "is writable by its group or others" in r.stderr, r.stderr
    assert w.mints() == []  # no mint ran
    # the same file where only root can write: root's choice, honoured
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    (own / "own.yaml").write_text(evil.replace("evil-base", "own"))
    r = run_cli("run", "-p", str(own / "own.yaml"), "--agent", "bot-1", "--", "ls", env=w.env())
    assert r.returncode == 0, r.stderr
    refused = [e for e in w.audit() if e["type"] == "run_result" and e["exit_code"] == 125]
    assert len(refused) == 2


def test_credential_paths_name_what_a_run_must_not_read(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the filesystem layer hides (sandbox.run.credentials.credential_paths): the
    config's credentialsDir, every source of the run's profiles and of the relaxed profile a
    strict one names, and the other runs' credential directories."""
    from sandbox.config import Config
    from sandbox.policy import loader
    from sandbox.run.credentials import credential_paths, run_root_path

    w = make_world(tmp_path / "w")
    monkeypatch.setenv("GLASSBREAK_PROFILE_PATH", str(w.profiles))
    loader._CACHE.clear()
    strict = loader.load_profile("c-strict")
    paths = [p for p, _ in credential_paths([strict], config=Config(credentialsDir=str(w.creds)))]
    assert paths[0] == str(w.creds)
    assert f"{w.creds}/readonly.kubeconfig" in paths
    assert f"{w.creds}/ops-breakglass.token" in paths  # the relaxed tier's, for a strict run
    assert run_root_path() in paths


def test_strict_run_cannot_read_escalated_sources_even_as_root(tmp_path: Path,
                                                               stub_kubectl: Path) -> None:
    w = make_world(tmp_path / "w")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({"credentialsDir": str(w.creds)}))
    cfg.chmod(0o644)
    env = w.env(GLASSBREAK_CONFIG=str(cfg))
    esc = result(run_cli("run", "-o", "json", "-p", "c-strict", "--agent", "bot-1", "--",
                         *DELETE, env=env).stderr)["escalation_id"]
    assert run_cli("escalations", "approve", esc, "--as", "alice", env=env).returncode == 0
    assert run_cli("run", "-p", "c-strict", "--agent", "bot-1", "--", "ls", env=env
                   ).returncode == 0  # minted: the cache holds it now
    cache = w.state / "credential-cache"
    assert [f for f in cache.iterdir() if f.suffix == ".json"]
    r = run_cli("run", "-p", "c-strict", "--agent", "bot-2", "--", "sh", "-c",
                f"cat {w.creds}/ops-breakglass.token; cat {w.creds}/readonly.kubeconfig; "
                f"cat {cache}/*.json; ls {w.creds} {cache}", env=env)
    assert w.breakglass not in r.stdout and w.low_token not in r.stdout
    assert w.mints()[0].token not in r.stdout
    # names stay listable (Landlock keeps READ_DIR on the ancestors of hidden paths, so that
    # `ls /` works: docs/filesystem.md); their contents are what is protected
    assert "Permission denied" in r.stderr


def test_a_run_cannot_read_another_runs_credential_files(tmp_path: Path,
                                                         stub_kubectl: Path) -> None:
    w = make_world(tmp_path / "w")
    env = w.env()
    esc = result(run_cli("run", "-o", "json", "-p", "c-strict", "--agent", "bot-1", "--",
                         *DELETE, env=env).stderr)["escalation_id"]
    assert run_cli("escalations", "approve", esc, "--as", "alice", env=env).returncode == 0
    proc = subprocess.Popen([GLASSBREAK, "run", "-p", "c-strict", "--agent", "bot-1", "--",
                             "sh", "-c", 'echo "kc=$KUBECONFIG"; cat "$KUBECONFIG" >/dev/null '
                             '&& echo own-readable; sleep 20'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        kc = proc.stdout.readline().strip().split("=", 1)[1]
        assert proc.stdout.readline().strip() == "own-readable"  # the control: its own tier
        r = run_cli("run", "-p", "c-strict", "--agent", "bot-2", "--", "sh", "-c",
                    f"cat {kc}; ls {os.path.dirname(os.path.dirname(kc))}", env=env)
        assert w.mints()[0].token not in r.stdout
        assert "Permission denied" in r.stderr  # the other run's kubeconfig cannot be read
    finally:
        proc.kill()
        proc.communicate(timeout=30)
