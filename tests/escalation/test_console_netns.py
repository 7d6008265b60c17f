"""Decisions only from trusted client networks (issue 14): `glassbreak serve --decisions-from`,
default loopback only. A second test host in its own network namespace (its own source
address, 10.214.N.2 on a veth made here) tries to decide: 403, audited, nothing decided; reads
from it still work with a token. Everything made here is removed in a finally; every process
is ended by pid."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import is_root, require
from tests.escalation.helpers import Serve, block_ctx, token_sha

pytestmark = pytest.mark.kernel


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@dataclass
class Host:
    ns: str
    outer: str
    here: str      # this host's address on the link (root netns)
    there: str     # the test host's address (inside the netns)

    def client(self, script: str) -> Any:
        """Run a Python snippet inside the test host's netns; it prints one JSON value."""
        r = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-c",
                            script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    require(is_root(), "network namespaces need root")
    require(shutil.which("ip") is not None, "iproute2 (`ip`) is not installed")
    require(shutil.which("nsenter") is not None, "util-linux `nsenter` is not installed")
    tag = secrets.token_hex(2)
    used = sh("ip", "-4", "-o", "addr", "show").stdout
    octet = next(o for o in range(7, 250) if f" 10.214.{o}." not in used)
    h = Host(ns=f"gbc{tag}", outer=f"gbc{tag}0", here=f"10.214.{octet}.1",
             there=f"10.214.{octet}.2")
    made_ns = made_link = False
    try:
        sh("ip", "netns", "add", h.ns)
        made_ns = True
        sh("ip", "link", "add", h.outer, "type", "veth", "peer", "name", f"gbc{tag}1")
        made_link = True
        sh("ip", "addr", "add", f"{h.here}/24", "dev", h.outer)
        sh("ip", "link", "set", h.outer, "up")
        sh("ip", "link", "set", f"gbc{tag}1", "netns", h.ns)
        sh("ip", "-n", h.ns, "addr", "add", f"{h.there}/24", "dev", f"gbc{tag}1")
        sh("ip", "-n", h.ns, "link", "set", f"gbc{tag}1", "up")
        sh("ip", "-n", h.ns, "link", "set", "lo", "up")
        yield h
    except RuntimeError as e:
        require(False, f"cannot make a network namespace here: {e}")
    finally:
        if made_link:
            sh("ip", "link", "del", h.outer, check=False)  # its peer goes with it
        if made_ns:
            sh("ip", "netns", "del", h.ns, check=False)


CONFIG = {"approvers": {"alice": {"tokenSha256": token_sha("alice-token")}}}


@pytest.fixture(scope="module")
def srv(host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Serves on the link; takes decisions from this host's own address only."""
    s = Serve(tmp_path_factory.mktemp("netns"), CONFIG, host=host.here,
              args=("--decisions-from", f"{host.here}/32"))
    yield s
    s.stop()


def raise_one(srv: Serve) -> str:
    return str(srv.svc.raise_block(block_ctx(owners=["alice"], cwd=f"/srv/{uuid.uuid4().hex}"),
                                   inline_budget_s=0).id)


CLIENT = """
import json, re, httpx
from urllib.parse import urlencode
base, esc = {base!r}, {esc!r}
bearer = {{"Authorization": "Bearer alice-token"}}
out = {{}}
r = httpx.post(f"{{base}}/api/escalations/{{esc}}/decision", headers=bearer,
               json={{"escalation_id": esc, "decision": "approve", "ttl": "1m"}})
out["api"] = [r.status_code, r.json()]
out["revoke"] = httpx.post(f"{{base}}/api/grants/gr-000000000000/revoke", headers=bearer,
                           json={{"grant_id": "gr-000000000000"}}).status_code
out["slack"] = httpx.post(f"{{base}}/slack/actions", content=b"payload=x").status_code
out["read"] = httpx.get(f"{{base}}/api/escalations/{{esc}}", headers=bearer).status_code
c = httpx.Client(base_url=base)
page = c.get("/signin").text
csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
out["note"] = "you can read but not decide" in page
form = {{"Content-Type": "application/x-www-form-urlencoded"}}
r = c.post("/signin", headers=form, content=urlencode({{"csrf": csrf, "token": "alice-token"}}))
out["signin"] = r.status_code
page = c.get(f"/escalations/{{esc}}").text
m = re.search(r'name="csrf" value="([^"]+)"', page)
r = c.post(f"/escalations/{{esc}}/decide", headers=form, content=urlencode(
    {{"csrf": m.group(1), "action": "approve", "scope": "command", "ttl": "1", "ttl_unit": "m"}}))
out["console"] = r.status_code
print(json.dumps(out))
"""


def test_decision_from_an_untrusted_network_is_403_and_audited(srv: Serve, host: Host) -> None:
    esc = raise_one(srv)
    got = host.client(CLIENT.format(base=srv.base, esc=esc))
    assert got["api"][0] == 403, got
    assert "decisions only from" in got["api"][1]["error"]
    assert got["revoke"] == 403 and got["slack"] == 403 and got["console"] == 403
    assert got["read"] == 200 and got["signin"] == 303 and got["note"]
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "pending"
    assert [t.kind for t in rec.history] == ["raised"]  # the audit log only
    refused = [e for e in srv.audit() if e["type"] == "decision_refused"
               and e["caller"] and host.there in e["caller"]]
    assert len(refused) == 4, refused  # api, revoke, slack, console
    assert all("outside the networks this server takes decisions from" in e["why"]
               for e in refused)
    assert {e["escalation_id"] for e in refused} == {esc, None}
    # the same decision from the trusted address (this host, on the link) is taken
    ok = httpx.post(f"{srv.base}/api/escalations/{esc}/decision",
                    headers={"Authorization": "Bearer alice-token"},
                    json={"escalation_id": esc, "decision": "approve", "ttl": "1m"})
    assert ok.status_code == 200 and ok.json()["decided_by"] == "alice"


def test_default_is_loopback_only(host: Host, tmp_path: Path) -> None:
    s = Serve(tmp_path, CONFIG, host=host.here)  # no --decisions-from
    try:
        esc = raise_one(s)
        r = httpx.post(f"{s.base}/api/escalations/{esc}/decision",
                       headers={"Authorization": "Bearer alice-token"},
                       json={"escalation_id": esc, "decision": "approve", "ttl": "1m"})
        assert r.status_code == 403 and "127.0.0.0/8, ::1/128" in r.json()["error"]
        assert s.svc.get(esc).state == "pending"  # type: ignore[union-attr]
    finally:
        s.stop()
    log = s.log.read_text()
    assert "decisions from 127.0.0.0/8, ::1/128" in log
