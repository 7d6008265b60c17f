"""Helpers for the credential tests (issue 14): two tiers of profiles, operator-owned sources
(a read-only kubeconfig file, daemon environment variables), a fake mint command that records
the TTL it got, its arguments and the token it printed (a real process; no real cloud)."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import GLASSBREAK

# the fake mint: `mint.mode` in its directory says how to fail (fail | hang | empty)
MINT = r"""#!/bin/sh
d=$(dirname "$0")
mode=$(cat "$d/mint.mode" 2>/dev/null)
case "$mode" in
  fail) echo "error: serviceaccounts/token is forbidden; key AKIAIOSFODNN7EXAMPLE" >&2; exit 3;;
  hang) sleep 60 & echo $! > "$d/mint.child"; echo $$ > "$d/mint.pid"; wait; exit 0;;
  empty) echo "warning: nothing minted" >&2; exit 0;;
esac
tok="gbops-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$GLASSBREAK_TTL_S" "$tok" "$*" >> "$d/mint.log"
printf '%s\n' "$tok"
"""

STRICT = """\
name: c-strict
description: the agent tier (read-only kubeconfig, a read API token)
owners: [alice]
safeBins:
  kubectl: {{dialect: cobra, restrictedCommands: [delete]}}
exec:
  allow: [sh, dash, bash, cat, ls, sleep, echo, grep, test, stat, kubectl]
  default: block
credentials:
  kubeconfig: {{file: {creds}/readonly.kubeconfig, env: KUBECONFIG}}
  api: {{daemonEnv: GB_TEST_API_READ, env: API_TOKEN, deliver: env}}
escalation:
  relaxedProfile: c-ops
  ttl: 10m
  maxTtl: 1h
{webhooks}"""

OPS = """\
name: c-ops
description: the escalated tier (a kubeconfig minted for the grant's window)
extends: c-strict
relax: true
safeBins:
  kubectl: {{restrictedCommands: []}}
credentials:
  kubeconfig:
    mint: [{mint}, create, token, ops-writer, -n, agents, --duration, "{{ttl}}",
           --agent, "{{agent}}", --grant, "{{grant_id}}"]
    timeout: 3s
    env: KUBECONFIG
    template: |
      apiVersion: v1
      kind: Config
      users:
      - name: ops-writer
        user:
          token: {{token}}
  api: null
  opsapi: {{daemonEnv: GB_TEST_API_OPS, env: OPS_API_TOKEN, deliver: env}}
  breakglass: {{file: {creds}/ops-breakglass.token, env: BREAKGLASS, fileName: breakglass}}
"""

# what a run prints about the credentials it holds (stdout is the program's own)
SHOW = ('kubectl get pods; echo "kc=$KUBECONFIG"; cat "$KUBECONFIG"; echo "api=$API_TOKEN"; '
        'echo "ops=$OPS_API_TOKEN"; echo "bg=$BREAKGLASS"; test -z "$BREAKGLASS" || '
        'cat "$BREAKGLASS"; echo "src=$GB_TEST_API_READ$GB_TEST_API_OPS"')


@dataclass
class Mint:
    t: float
    ttl_s: int
    token: str
    args: str


@dataclass
class World:
    d: Path
    profiles: Path
    creds: Path
    state: Path
    low_token: str
    api_read: str
    api_ops: str
    breakglass: str

    def source_env(self) -> dict[str, str]:
        return {"GB_TEST_API_READ": self.api_read, "GB_TEST_API_OPS": self.api_ops}

    def env(self, **extra: str) -> dict[str, str]:
        """Root in process (the operator's environment carries the daemon-env sources)."""
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_NO_DAEMON": "1",
                "GLASSBREAK_STATE_DIR": str(self.state),
                "GLASSBREAK_PROFILE_PATH": str(self.profiles), **self.source_env(), **extra}

    def mode(self, mode: str | None) -> None:
        p = self.d / "mint.mode"
        if mode is None:
            p.unlink(missing_ok=True)
        else:
            p.write_text(mode)

    def mints(self) -> list[Mint]:
        p = self.d / "mint.log"
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            t, ttl, tok, args = line.split("\t")
            out.append(Mint(float(t), int(ttl), tok, args))
        return out

    def secrets(self) -> dict[str, str]:
        """Every credential value a run of either tier could hold (for leak searches)."""
        out = {"low kubeconfig token": self.low_token, "api read": self.api_read,
               "api ops": self.api_ops, "breakglass": self.breakglass}
        for i, m in enumerate(self.mints()):
            out[f"mint {i}"] = m.token
        return out

    def audit(self) -> list[dict[str, Any]]:
        p = self.state / "audit.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def make_world(d: Path, *, webhook_url: str | None = None) -> World:
    """Profiles, sources and the fake mint in d (root's, not writable by others)."""
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    creds = d / "credentials"
    creds.mkdir(mode=0o700)
    profiles = d / "profiles"
    profiles.mkdir(mode=0o755)
    state = d / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    low = "lowtok-" + secrets.token_hex(16)
    (creds / "readonly.kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\nusers:\n- name: agents-view\n  user:\n"
        f"    token: {low}\n")
    bg = "bgtok-" + secrets.token_hex(16)
    (creds / "ops-breakglass.token").write_text(bg + "\n")
    for f in creds.iterdir():
        f.chmod(0o600)
    mint = d / "mint.sh"
    mint.write_text(MINT)
    mint.chmod(0o755)
    hooks = ""
    if webhook_url:
        hooks = (f"  webhooks:\n    - {{url: \"{webhook_url}\", format: generic, "
                 "secretEnv: GB_TEST_WEBHOOK_SECRET, timeout: 2}\n")
    (profiles / "c-strict.yaml").write_text(STRICT.format(creds=creds, webhooks=hooks))
    (profiles / "c-ops.yaml").write_text(OPS.format(creds=creds, mint=mint))
    for f in profiles.iterdir():
        f.chmod(0o644)
    return World(d, profiles, creds, state, low, "apiread-" + secrets.token_hex(16),
                 "apiops-" + secrets.token_hex(16), bg)


def result(stderr: str) -> dict[str, Any]:
    lines = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    assert lines, stderr
    return lines[-1]  # type: ignore[no-any-return]


def printed(stdout: str) -> dict[str, str]:
    """The `key=value` lines SHOW prints."""
    return dict(x.split("=", 1) for x in stdout.splitlines() if "=" in x and x[:3] in
                ("kc=", "api", "ops", "bg=", "src"))


def grant_of(env: dict[str, str], grant_id: str) -> dict[str, Any]:
    import subprocess

    r = subprocess.run([GLASSBREAK, "grants", "list", "--all", "-o", "json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return next(g for g in json.loads(r.stdout) if g["id"] == grant_id)  # type: ignore[no-any-return]


def wait_gone(path: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def files_gone(path: str, timeout: float = 5.0) -> bool:
    """A credential file is gone, and its run's directory with it or empty (a daemon keeps an
    emptied directory for the user's next run)."""
    if not wait_gone(path, timeout):
        return False
    d = os.path.dirname(path)
    try:
        return not os.listdir(d)
    except FileNotFoundError:
        return True
