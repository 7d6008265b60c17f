"""Webhook delivery from the durable outbox: payload formats, signing, retries with backoff.

Formats: generic JSON (n8n takes the same), Slack Block Kit with Approve / Deny buttons whose
action value is the escalation id, and a "Review" link to the confirmation page (a GET never
decides). httpx is imported only when something is sent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from escalation.models import Delivery, EscalationRecord
from escalation.redact import safe_url
from escalation.signing import sign_headers
from escalation.store import Store
from sandbox.cli.render import argv_warnings, quote_arg, quote_argv, show_destination, visible
from sandbox.errors import GlassbreakError
from sandbox.events import WebhookDelivery

LEASE_MARGIN_S = 2.0  # a lease outlives one attempt by this much


def max_attempts() -> int:
    return int(os.environ.get("GLASSBREAK_WEBHOOK_MAX_ATTEMPTS", "8"))


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts` (1, 2, ...): base * 2^(n-1), capped at 10 min."""
    base = float(os.environ.get("GLASSBREAK_WEBHOOK_BACKOFF", "2"))
    return float(min(base * 2 ** max(0, attempts - 1), 600.0))


def links(rec: EscalationRecord, public_url: str | None) -> dict[str, str]:
    if not public_url:
        return {}
    base = public_url.rstrip("/")
    return {"show": f"{base}/escalations/{rec.id}",
            "api": f"{base}/api/escalations/{rec.id}",
            "approve": f"{base}/escalations/{rec.id}?action=approve",
            "deny": f"{base}/escalations/{rec.id}?action=deny"}


def summary(rec: EscalationRecord) -> str:
    """One line for a person: the command quoted argument by argument, every untrusted string
    with its control and bidi characters made visible."""
    return (f"glassbreak: {rec.display_state}: agent {visible(rec.agent or '-', 64)} on "
            f"{visible(rec.host, 64)} ran {quote_argv(rec.argv)} (profile "
            f"{visible(rec.profile)}, rule {visible(rec.rule_id)}"
            + (f", destination {show_destination(rec.destination)}" if rec.destination else "")
            + ")")


def generic_payload(rec: EscalationRecord, event: str, public_url: str | None
                    ) -> dict[str, Any]:
    data = json.loads(rec.stored())
    data["display_state"] = rec.display_state
    return {"event": event, "escalation": data, "links": links(rec, public_url),
            "display": {"command": quote_argv(rec.argv), "warnings": argv_warnings(rec.argv),
                        "text": summary(rec)},
            "how_to_decide": f"glassbreak escalations approve {rec.id} [--ttl 10m] "
                             + ("[--scope destination]" if rec.destination else
                                "[--scope command --once]")
                             + " (as an approver: docs/identity.md)"}


def _mrkdwn(text: str) -> str:
    """Slack mrkdwn: &, < and > are control characters (links, mentions) and must be escaped;
    the text itself is already visible()."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(rec: EscalationRecord, event: str, public_url: str | None) -> dict[str, Any]:
    # every argument quoted, hidden characters and backticks (which would end the code
    # block) escaped; everything untrusted made visible and mrkdwn-escaped (no links, no
    # mentions smuggled in through argv or the agent's reason)
    cmd = _mrkdwn(quote_argv(rec.argv, also="`"))
    if len(cmd) > 2800:
        cmd = cmd[:2800] + f"... (+{len(cmd) - 2800} characters: see the console)"
    title = ("Escalation requested" if event == "escalation.raised"
             else f"Escalation {rec.display_state} by {visible(rec.decided_by or '?', 64)}")
    text = _mrkdwn(f"glassbreak: {title}: {quote_argv(rec.argv, also='`')[:300]} "
                   f"({visible(rec.profile)}, agent {visible(rec.agent or '-', 64)})")
    fields = [("Agent", rec.agent or "-"), ("Host", rec.host),
              ("Profile", f"{rec.profile} ({rec.profile_hash[:12]})"),
              ("Trigger", f"{rec.layer} / {rec.rule_id}"
                          + (f" -> {show_destination(rec.destination)}" if rec.destination
                             else "")),
              ("Owners", ", ".join(rec.owners)),
              ("State", f"{rec.display_state} (seen {rec.count}x)")]
    warnings = "".join(f"\n:warning: {_mrkdwn(w)}" for w in argv_warnings(rec.argv))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{cmd}```{warnings}\n"
                                     f"*Why blocked:* {_mrkdwn(visible(rec.rule_reason, 500))}"
                                     "\n*Agent's reason:* " + _mrkdwn(visible(
                                         rec.agent_reason or '(none given)', 500))}},
        {"type": "section", "fields": [{"type": "mrkdwn",
                                        "text": f"*{k}:* {_mrkdwn(visible(v, 200))}"}
                                       for k, v in fields]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(
            f"id {rec.id} · cwd {quote_arg(rec.cwd, also='`')} · binary "
            f"{quote_arg(rec.binary or '?', also='`')}")}]},
    ]
    if rec.state == "pending":
        actions: list[dict[str, Any]] = [
            {"type": "button", "action_id": "glassbreak_approve", "value": rec.id,
             "style": "primary", "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "glassbreak_deny", "value": rec.id,
             "style": "danger", "text": {"type": "plain_text", "text": "Deny"}},
        ]
        if public_url:
            actions.append({"type": "button", "action_id": "glassbreak_review", "value": rec.id,
                            "url": links(rec, public_url)["approve"],
                            "text": {"type": "plain_text", "text": "Review"}})
        blocks.append({"type": "actions", "block_id": f"glassbreak:{rec.id}",
                       "elements": actions})
    return {"text": text, "blocks": blocks}


def body_for(d: Delivery, rec: EscalationRecord, public_url: str | None) -> bytes:
    if d.webhook.format == "slack":
        payload = slack_payload(rec, d.event, public_url)
    else:
        payload = generic_payload(rec, d.event, public_url)
        payload["delivery_id"] = d.id
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def _secret(d: Delivery) -> str | None:
    from escalation.signing import read_secret

    return read_secret(d.webhook.secretEnv, d.webhook.secretFile, "webhook secret")


def attempt(d: Delivery, rec: EscalationRecord, public_url: str | None,
            timeout: float | None = None) -> tuple[bool, bool, int | None, str | None]:
    """One POST. -> (delivered, retryable, http status, error text)."""
    import httpx

    try:
        secret = _secret(d)
    except GlassbreakError as e:
        return False, True, None, e.message
    body = body_for(d, rec, public_url)
    headers = sign_headers(secret, body, delivery_id=d.id)
    headers["User-Agent"] = "glassbreak-webhook/1"
    t = timeout if timeout is not None else d.webhook.timeout
    try:
        resp = httpx.post(d.webhook.url, content=body, headers=headers, timeout=t)
    except httpx.TimeoutException:
        return False, True, None, f"timed out after {t:g} s"
    except httpx.HTTPError as e:
        return False, True, None, f"{type(e).__name__}: {e}"
    if 200 <= resp.status_code < 300:
        return True, False, resp.status_code, None
    retry = resp.status_code >= 500 or resp.status_code in (408, 429)
    return False, retry, resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]}"


def flush(store: Store, get_record: Callable[[str], EscalationRecord | None],
          emit: Callable[[object], None], public_url: str | None, *,
          escalation_id: str | None = None, budget_s: float = 30.0,
          timeout: float | None = None) -> list[Delivery]:
    """Send what is due, within `budget_s`. Each delivery is leased first, so concurrent
    flushers (runs, `escalations deliver`, `serve`) never send the same message together."""
    deadline = time.monotonic() + budget_s
    done: list[Delivery] = []
    for d in store.due_deliveries(time.time(), escalation_id=escalation_id):
        if time.monotonic() >= deadline:
            break
        lease = (timeout or d.webhook.timeout) + LEASE_MARGIN_S
        if not store.claim_delivery(d.id, lease, time.time()):
            continue
        rec = get_record(d.escalation_id)
        if rec is None:
            d.state, d.last_error = "failed", "escalation record missing"
        else:
            ok, retry, status, err = attempt(d, rec, public_url, timeout)
            d.attempts += 1
            d.last_status, d.last_error = status, err
            if ok:
                d.state, d.delivered_at = "delivered", time.time()
            elif retry and d.attempts < max_attempts():
                d.state, d.next_at = "retrying", time.time() + backoff(d.attempts)
            else:
                d.state = "failed"
                d.last_error = f"{err} (gave up after {d.attempts} attempt(s))"
        store.save_delivery(d)
        emit(WebhookDelivery(escalation_id=d.escalation_id, delivery_id=d.id,
                             url=safe_url(d.webhook.url), status=("retrying" if d.state == "pending"
                                                        else d.state),
                             attempts=d.attempts, error=d.last_error))
        done.append(d)
    return done
