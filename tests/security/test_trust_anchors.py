"""Nothing inside a run can write what glassbreak trusts, or read its secrets (issue 9, attacks 2
and 3 and their variants). Each attack runs as root in-process (Landlock confines root), a set of
them also as a non-root caller through the daemon with every file opened up by DAC (so only
Landlock stands). After every attack: the audit log holds every earlier record (count and
content) and the store's escalations and grants are intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GLASSBREAK, REPO, VENV_BIN, is_root, load_bench, require, run_cli

pytestmark = pytest.mark.kernel

ATTACK_PROFILE = """\
name: anchors
extends: base
owners: [sec-team]
exec:
  allow: [sh, dash, cat, printf, echo, ln, mv, rm, chmod, head, "true", "/usr/bin/python3*"]
  default: block
escalation:
  webhooks: [{url: "http://127.0.0.1:9/hook", secretFile: "{secrets}/profile-hook"}]
"""
SECRET_VALUES = ("decision-s3cret", "alice-t0ken", "hook-s3cret", "profile-hook-s3cret")


@dataclass
class Site:
    root: Path
    work: Path
    state: Path
    profiles: Path
    etc: Path
    secrets: Path

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(self.state),
                "GLASSBREAK_PROFILE_PATH": str(self.profiles),
                "GLASSBREAK_CONFIG": str(self.etc / "config.yaml")}

    def fill(self, text: str) -> str:
        return text.format(root=self.root, state=self.state, profiles=self.profiles,
                           etc=self.etc, secrets=self.secrets, repo=REPO,
                           venv=VENV_BIN.parent)

    def audit_lines(self) -> list[str]:
        return (self.state / "audit.jsonl").read_text().splitlines()

    def store(self) -> tuple[list[tuple[str, str]], list[tuple[str, str, float]]]:
        from escalation.backends import open_store

        s = open_store(f"sqlite:///{self.state / 'state.db'}")
        try:
            escs = sorted((r.id, r.state) for r in s.list_escalations(None, limit=1000))
            grants = sorted((g.id, g.status(), g.expires_at)
                            for g in s.list_grants(include_ended=True))
        finally:
            s.close()
        return escs, grants


def make_site(root: Path) -> Site:
    s = Site(root, root / "work", root / "state", root / "profiles", root / "etc",
             root / "secrets")
    for d in (s.work, s.state, s.profiles, s.etc / "tokens", s.secrets):
        d.mkdir(parents=True)
    shutil.copy(REPO / "profiles" / "k8s-readonly.yaml", s.profiles)
    (s.profiles / "anchors.yaml").write_text(ATTACK_PROFILE.replace("{secrets}",
                                                                    str(s.secrets)))
    (s.etc / "decision-secret").write_text("decision-s3cret\n")
    (s.etc / "tokens" / "alice").write_text("alice-t0ken\n")
    (s.secrets / "hook").write_text("hook-s3cret\n")
    (s.secrets / "profile-hook").write_text("profile-hook-s3cret\n")
    (s.etc / "config.yaml").write_text(json.dumps({
        "decisionSecretFile": str(s.etc / "decision-secret"),
        "approverTokens": {"alice": {"tokenFile": "tokens/alice"}},
        "webhooks": [{"url": "http://127.0.0.1:9/hook", "secretFile": str(s.secrets / "hook")}],
    }))
    return s


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A site with history: a pre-check block (escalation, approved: a grant) and a filesystem
    block (escalation, pending)."""
    require(is_root(), "the runner needs root")
    s = make_site(tmp_path_factory.mktemp("anchors"))
    r = run_cli("run", "-p", "anchors", "--", "id", "-u", env=s.env(), cwd=str(s.work))
    esc = json.loads([ln for ln in s.audit_lines() if '"escalation_raised"' in ln][-1])
    assert r.returncode == 126 and esc["escalation_id"]
    a = run_cli("escalations", "approve", esc["escalation_id"], "--as", "sec-team", "--scope",
                "command", env=s.env())
    assert a.returncode == 0, a.stderr
    run_cli("run", "-p", "anchors", "--", "sh", "-c", "echo x > /etc/gb-anchors-test",
            env=s.env(), cwd=str(s.work))
    escs, grants = s.store()
    assert len(escs) == 2 and len(grants) == 1, (escs, grants)
    return s


ATTACKS = {
    # issue 9, attack 2: a run rewrites its own profile (and adds one, in every profile dir)
    "profile-rewrite": "printf 'name: k8s-readonly\\nexec:\\n  default: allow\\n' > "
                       "{profiles}/k8s-readonly.yaml",
    "profile-add": "printf 'name: evil\\n' > {profiles}/evil.yaml",
    "shipped-profiles": "printf 'name: evil\\n' > {repo}/profiles/gb-anchors-evil.yaml",
    # attack 3: a run erases the evidence (or forges it)
    "audit-truncate": ": > {state}/audit.jsonl",
    "audit-append": "echo '{{\"type\":\"forged\"}}' >> {state}/audit.jsonl",
    "db-truncate": ": > {state}/state.db",
    "db-rewrite": "python3 -c \"open('{state}/state.db', 'r+b').write(b'x')\"",
    # the same through other names for the same files
    "proc-self-fd": ": > /proc/self/fd/0",  # stdin: the audit log, opened read-only
    "symlink": "ln -s {state}/audit.jsonl link; : > link",
    "hardlink": "ln {state}/state.db hard; : > hard",
    "proc-root": ": > /proc/self/root{state}/audit.jsonl; : > /proc/$PPID/root{state}/state.db",
    "rename": "mv {state}/audit.jsonl {state}/old.jsonl; mv {state}/state.db {root}/moved.db; "
              "mv {state} {root}/state-moved",
    "unlink": "rm -f {state}/state.db {state}/audit.jsonl; rm -rf {state}",
    "chmod": "chmod 666 {state}/state.db; chmod 777 {state}",
    # the config and glassbreak's own install
    "config": "printf 'webhooks: []\\n' > {etc}/config.yaml; : > {etc}/gb-evil",
    "install": ": > {repo}/sandbox/gb-anchors-evil.py; : > {venv}/gb-anchors-evil; "
               "printf '' >> {repo}/sandbox/__init__.py",
}
CREATED = ("{profiles}/evil.yaml", "{repo}/profiles/gb-anchors-evil.yaml", "{root}/moved.db",
           "{root}/state-moved", "{etc}/gb-evil", "{repo}/sandbox/gb-anchors-evil.py",
           "{venv}/gb-anchors-evil", "{state}/old.jsonl")


def _guarded(site: Site) -> dict[str, Any]:
    files = [site.profiles / "k8s-readonly.yaml", site.etc / "config.yaml",
             REPO / "sandbox" / "__init__.py"]
    return {"files": {str(f): f.read_bytes() for f in files},
            "modes": {str(p): p.stat().st_mode for p in (site.state, site.state / "state.db")},
            "audit": site.audit_lines(), "store": site.store()}


def _unharmed(site: Site, before: dict[str, Any]) -> None:
    for f, data in before["files"].items():
        assert Path(f).read_bytes() == data, f"{f} changed"
    for p, mode in before["modes"].items():
        assert Path(p).stat().st_mode == mode, f"mode of {p} changed"
    for c in CREATED:
        path = Path(site.fill(c))
        assert not path.exists(), f"{path} was created"
    after = site.audit_lines()
    # every earlier record, by count and content, and nothing forged in between
    assert after[:len(before["audit"])] == before["audit"]
    assert all(json.loads(ln)["type"] != "forged" for ln in after)
    escs, grants = site.store()
    assert set(before["store"][0]) <= set(escs), "an escalation was lost or changed"
    assert grants == before["store"][1], "a grant was lost or changed"


def _cleanup(site: Site) -> None:
    for c in CREATED:
        p = Path(site.fill(c))
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_as_root(site: Site, attack: str) -> None:
    before = _guarded(site)
    stdin = os.open(site.state / "audit.jsonl", os.O_RDONLY)
    try:
        # `exit 1`: an attacked run fails, and a failed run's report waits for its denials
        r = subprocess.run([GLASSBREAK, "run", "-p", "anchors", "--", "sh", "-c",
                            site.fill(ATTACKS[attack]) + "; exit 1"], stdin=stdin,
                           capture_output=True,
                           text=True, env={**os.environ, **site.env()}, cwd=site.work,
                           timeout=60)
    finally:
        os.close(stdin)
        try:
            _unharmed(site, before)
        finally:
            _cleanup(site)
    assert "denied" in r.stderr or "Operation not permitted" in r.stderr, r.stderr
    # (chmod: refused by the supervisor, which performs a root run's chmod only on files the
    # run may write: the same self-protection rule, tests/security/test_root_attrs.py)
    new = [json.loads(ln) for ln in site.audit_lines()[len(before["audit"]):]]
    prot = [e for e in new if e["type"] == "blocked" and e["layer"] == "filesystem"]
    assert prot, new
    assert all(e["verdict"] == "deny" and e["escalation_id"] is None for e in prot
               if "self-protection" in e["rule_id"])
    if attack == "chmod":
        assert {(e["rule_id"], e["syscall"]) for e in prot} == {
            (f"filesystem.self-protection:{site.state}/state.db", "fchmodat"),
            (f"filesystem.self-protection:{site.state}", "fchmodat")}, prot


def test_secrets_and_state_are_not_readable(site: Site) -> None:
    r = run_cli("run", "-p", "anchors", "--", "sh", "-c", site.fill(
        "cat {etc}/decision-secret {etc}/tokens/alice {secrets}/hook {secrets}/profile-hook; "
        "head -c 64 {state}/state.db; cat /proc/self/root{state}/audit.jsonl; "
        "python3 -c \"import os; print(os.listdir('{state}'))\"; cat {etc}/config.yaml"),
        env=site.env(), cwd=str(site.work))
    for v in SECRET_VALUES:
        assert v not in r.stdout
    assert "SQLite" not in r.stdout and "run_started" not in r.stdout
    assert "audit.jsonl" in r.stdout  # names stay listable (stat() shows them anyway)
    assert "decisionSecretFile" in r.stdout  # the config itself is readable, not writable
    new = [json.loads(ln) for ln in site.audit_lines() if 'self-protection:' in ln]
    paths = {e["path"] for e in new if e["type"] == "blocked"}
    assert {str(site.etc / "decision-secret"), str(site.etc / "tokens" / "alice"),
            str(site.secrets / "hook"), str(site.secrets / "profile-hook"),
            str(site.state / "state.db")} <= paths


# ---- the same as a non-root caller through the daemon, with DAC out of the way ------------
NON_ROOT = ["profile-rewrite", "profile-add", "audit-truncate", "audit-append", "db-truncate",
            "symlink", "rename", "unlink"]


@pytest.fixture(scope="module")
def daemon_site() -> Iterator[tuple[Site, Any]]:
    require(is_root(), "the daemon needs root")
    root = Path(tempfile.mkdtemp(prefix="gb-anchors-"))  # `nobody` must reach it (not pytest's)
    os.chmod(root, 0o755)
    s = make_site(root)
    dp = load_bench("daemons").start_daemon(root / "daemon", env={**os.environ, **s.env()})
    try:
        env = {**os.environ, "GLASSBREAK_SOCKET": str(dp.sock)}
        env.pop("GLASSBREAK_NO_DAEMON", None)
        r = subprocess.run([GLASSBREAK, "run", "-p", "anchors", "--", "id", "-u"],
                           env=env, cwd=s.work, capture_output=True, text=True, timeout=30)
        assert r.returncode == 126, r.stderr
        # only Landlock stands: the state, the profiles and the cwd world-writable (the config
        # and the directories above it stay root's: glassbreak refuses a config others could
        # write, docs/identity.md)
        for d in (s.state, s.profiles, s.work):
            os.chmod(d, 0o777)
        for f in [*s.state.iterdir(), *s.profiles.iterdir()]:
            os.chmod(f, 0o666)
        yield s, dp
    finally:
        dp.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("attack", NON_ROOT)
def test_attack_as_a_non_root_caller_through_the_daemon(daemon_site: tuple[Site, Any],
                                                        attack: str) -> None:
    site, dp = daemon_site
    before = _guarded(site)
    env = {**os.environ, "GLASSBREAK_SOCKET": str(dp.sock), "PATH": "/usr/bin:/bin"}
    env.pop("GLASSBREAK_NO_DAEMON", None)
    stdin = os.open(site.state / "audit.jsonl", os.O_RDONLY)
    try:
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            GLASSBREAK, "run", "-p", "anchors", "--", "sh", "-c",
                            "python3 -c 'import os; print(os.getuid())'; "
                            + site.fill(ATTACKS[attack]) + "; exit 1"],
                           stdin=stdin, capture_output=True, text=True, env=env, cwd=site.work,
                           timeout=60)
    finally:
        os.close(stdin)
        try:
            _unharmed(site, before)
        finally:
            _cleanup(site)
    assert r.stdout.strip().splitlines()[:1] == ["65534"], (r.stdout, r.stderr)
    assert "denied" in r.stderr, r.stderr
