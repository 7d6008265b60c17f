"""Webhooks over real HTTP on 127.0.0.1: signed, retried, durable across a killed runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from escalation.backends import open_store
from escalation.service import EscalationService
from tests.escalation.helpers import Receiver, Recorder, block_ctx, hook, make_config

REPO = Path(__file__).resolve().parents[2]


def test_delivered_and_signature_verifies(svc: EscalationService, receiver: Receiver,
                                          events: Recorder) -> None:
    receiver.start()
    rec = svc.raise_block(block_ctx(webhooks=[hook(receiver.url)]))
    assert rec.delivery_status == "delivered"
    assert len(receiver.got) == 1 and receiver.got[0]["valid"]
    h, body = receiver.got[0]["headers"], receiver.got[0]["json"]
    assert h["X-Glassbreak-Delivery"] == rec.deliveries[0].id
    assert body["event"] == "escalation.raised" and body["escalation"]["id"] == rec.id
    assert body["escalation"]["env"]["GITHUB_TOKEN"] == "[redacted]"
    assert body["escalation"]["owners"] == ["alice", "bob"]
    # a receiver with another secret, or a tampered body, does not verify
    assert not Receiver(secret="other").verify(h, receiver.got[0]["body"])
    assert not receiver.verify(h, receiver.got[0]["body"].replace(b"alice", b"mallo"))
    ev = events.of("webhook_delivery")
    assert ev[-1].status == "delivered" and ev[-1].escalation_id == rec.id
    # the decision is notified too
    svc.decide(rec.id, approve=False, by="bob", reason="no")
    assert receiver.got[-1]["json"]["event"] == "escalation.decided"
    assert receiver.got[-1]["json"]["escalation"]["state"] == "denied"


def test_generic_payload_has_the_documented_fields(svc: EscalationService, receiver: Receiver
                                                  ) -> None:
    """Every field docs/escalation.md documents for the generic body is in a real delivery
    (the demo's receiver once read fields that were not there)."""
    import re

    doc = (REPO / "docs" / "escalation.md").read_text()
    table = doc.split("The `generic` (and `n8n`) body", 1)[1]
    table = table.split("Every delivery is signed", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines()
                   if line.startswith("| `")]
    fields = {f for cell in first_cells for f in re.findall(r"`([a-z_.0-9]+)`", cell)}
    assert {"escalation.id", "escalation.agent", "escalation.owners", "delivery_id"} <= fields
    receiver.start()
    rec = svc.raise_block(block_ctx(webhooks=[hook(receiver.url)], agent_reason="why"))
    body = receiver.got[0]["json"]
    for f in sorted(fields):
        if f.startswith("links."):
            continue  # only with publicUrl (tested in test_api)
        node = body
        for part in f.split("."):
            assert isinstance(node, dict) and part in node, f"documented field {f} missing"
            node = node[part]
    assert body["escalation"]["id"] == rec.id and body["escalation"]["agent"] == rec.agent


def test_slack_block_kit_buttons_carry_the_id(svc: EscalationService, receiver: Receiver,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBREAK_PUBLIC_URL", "http://gb.example:8787")
    receiver.start()
    rec = svc.raise_block(block_ctx(webhooks=[hook(receiver.url, "slack")]))
    msg = receiver.got[0]["json"]
    assert receiver.got[0]["valid"] and "kubectl -n prod delete pod x" in msg["text"]
    actions = [b for b in msg["blocks"] if b["type"] == "actions"][0]["elements"]
    by_id = {a["action_id"]: a for a in actions}
    assert by_id["glassbreak_approve"]["value"] == rec.id
    assert by_id["glassbreak_deny"]["value"] == rec.id
    assert "url" not in by_id["glassbreak_approve"]  # the button posts a signed callback
    assert by_id["glassbreak_review"]["url"] == \
        f"http://gb.example:8787/escalations/{rec.id}?action=approve"  # a confirmation page


def test_endpoint_down_then_up_delivered_once(svc: EscalationService, receiver: Receiver,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBREAK_WEBHOOK_BACKOFF", "0.2")
    rec = svc.raise_block(block_ctx(webhooks=[hook(receiver.url)]))  # nobody listening
    assert rec.delivery_status == "retrying"
    receiver.mode = "fail"
    receiver.start()
    time.sleep(0.25)
    svc.deliver()
    got = svc.get(rec.id)
    assert got is not None and got.delivery_status == "retrying"
    assert got.deliveries[0].attempts == 2 and "HTTP 500" in (got.deliveries[0].last_error or "")
    receiver.mode = "ok"
    time.sleep(0.45)
    svc.deliver()
    svc.deliver()  # nothing due any more: not sent twice
    ok = [g for g in receiver.got if g["mode"] == "ok"]
    assert len(ok) == 1 and ok[0]["valid"]
    assert {g["headers"]["X-Glassbreak-Delivery"] for g in receiver.got} == {got.deliveries[0].id}
    got = svc.get(rec.id)
    assert got is not None and got.delivery_status == "delivered"
    assert got.deliveries[0].attempts == 3


def test_failed_for_good_is_visible(svc: EscalationService, receiver: Receiver,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBREAK_WEBHOOK_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("GLASSBREAK_WEBHOOK_BACKOFF", "0.05")
    receiver.mode = "fail"
    receiver.start()
    rec = svc.raise_block(block_ctx(webhooks=[hook(receiver.url)]))
    time.sleep(0.1)
    svc.deliver()
    got = svc.get(rec.id)
    assert got is not None and got.delivery_status == "failed"
    assert "gave up after 2" in (got.deliveries[0].last_error or "")


RUNNER = """
import sys
from escalation.service import EscalationService
from escalation.backends import open_store
from tests.escalation.helpers import block_ctx, hook, make_config
svc = EscalationService(open_store(sys.argv[1]), emit=lambda e: None, config=make_config())
print("raising", flush=True)
svc.raise_block(block_ctx(webhooks=[hook(sys.argv[2])]))
print("done", flush=True)
"""


def test_runner_killed_mid_delivery_is_delivered_after(store_url: str, receiver: Receiver,
                                                       events: Recorder) -> None:
    receiver.mode = "hang"
    receiver.start()
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, store_url, receiver.url],
                            cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.arrived.wait(20), "the runner never reached the webhook"
        os.kill(proc.pid, signal.SIGKILL)  # mid-delivery: the request is in flight
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    first = receiver.got[0]["headers"]["X-Glassbreak-Delivery"]
    receiver.mode = "ok"
    receiver.release.set()
    svc = EscalationService(open_store(store_url), emit=events.append, config=make_config())
    esc = svc.get(svc.list()[0].id)
    assert esc is not None
    assert esc.delivery_status == "pending"  # in the outbox, not lost
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not svc.deliver():
        time.sleep(0.25)  # the dead runner's lease runs out (timeout + 2 s)
    got = svc.get(esc.id)
    assert got is not None and got.delivery_status == "delivered"
    oks = [g for g in receiver.got if g["mode"] == "ok"]
    assert len(oks) == 1 and oks[0]["valid"]
    assert oks[0]["headers"]["X-Glassbreak-Delivery"] == first  # same id: receivers dedupe


def test_cli_deliver_flushes_outbox(tmp_path: Path, receiver: Receiver,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import run_cli

    url = f"sqlite:///{tmp_path / 'db'}"
    svc = EscalationService(open_store(url), emit=lambda e: None, config=make_config())
    rec = svc.raise_block(block_ctx(webhooks=[hook(receiver.url)]), inline_budget_s=0)
    receiver.start()
    env = {"GLASSBREAK_STORE": url, "GLASSBREAK_STATE_DIR": str(tmp_path),
           "GB_TEST_WEBHOOK_SECRET": "whsec-test-0123456789"}
    r = run_cli("escalations", "deliver", "-o", "json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out[0]["escalation_id"] == rec.id and out[0]["state"] == "delivered"
    assert receiver.got and receiver.got[0]["valid"]
    shown = run_cli("escalations", "show", rec.id, env=env)
    assert "delivered after 1 attempt" in shown.stdout
