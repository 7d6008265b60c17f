"""HMAC signing of webhook deliveries and decisions; Slack's v0 scheme for its callbacks.

glassbreak scheme (deliveries out, decisions in):
  X-Glassbreak-Timestamp: unix seconds
  X-Glassbreak-Delivery:  a unique id (replay protection: receivers remember it)
  X-Glassbreak-Signature: "v1=" + hex(HMAC-SHA256(secret, f"{timestamp}.{body}"))
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

from sandbox.config import read_secret
from sandbox.errors import EscalationError

WINDOW_S = 300
__all__ = ["read_secret", "sign_headers", "signature", "verify", "verify_slack"]

H_TS, H_ID, H_SIG = "X-Glassbreak-Timestamp", "X-Glassbreak-Delivery", "X-Glassbreak-Signature"


def signature(secret: str | bytes, timestamp: str | int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def sign_headers(secret: str | bytes | None, body: bytes, delivery_id: str | None = None,
                 now: float | None = None) -> dict[str, str]:
    ts = str(int(now if now is not None else time.time()))
    headers = {H_TS: ts, H_ID: delivery_id or uuid.uuid4().hex,
               "Content-Type": "application/json"}
    if secret:
        headers[H_SIG] = signature(secret, ts, body)
    return headers


def verify(secret: str | bytes, headers: dict[str, str], body: bytes,
           now: float | None = None, window_s: int = WINDOW_S) -> str:
    """Check a glassbreak-signed request; returns its delivery/nonce id. Raises EscalationError
    saying which check failed (missing, stale, forged/tampered). Replay is the caller's check."""
    h = {k.lower(): v for k, v in headers.items()}
    ts, nonce, sig = h.get(H_TS.lower()), h.get(H_ID.lower()), h.get(H_SIG.lower())
    if not (ts and nonce and sig):
        raise EscalationError(
            "unsigned decision: the X-Glassbreak-Timestamp, -Delivery and -Signature headers "
            "are required", hint="sign the body as documented in docs/escalation.md")
    try:
        age = abs((now if now is not None else time.time()) - int(ts))
    except ValueError:
        raise EscalationError(f"bad timestamp {ts!r}") from None
    if age > window_s:
        raise EscalationError(f"stale decision: timestamp is {int(age)} s away from now "
                              f"(window {window_s} s)", hint="check the clocks; resend fresh")
    if not hmac.compare_digest(signature(secret, ts, body), sig):
        raise EscalationError("signature does not match (forged, tampered with, or signed with "
                              "another secret)", hint="sign timestamp + '.' + exact body")
    return nonce


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


def verify_slack(secret: str, headers: dict[str, str], body: bytes,
                 now: float | None = None, window_s: int = WINDOW_S) -> str:
    """Slack's request signing (X-Slack-Request-Timestamp, X-Slack-Signature). Returns a nonce
    for replay protection (the signature itself: unique per timestamp + body)."""
    h = {k.lower(): v for k, v in headers.items()}
    ts, sig = h.get("x-slack-request-timestamp"), h.get("x-slack-signature")
    if not (ts and sig):
        raise EscalationError("unsigned Slack callback (X-Slack-Signature missing)")
    try:
        age = abs((now if now is not None else time.time()) - int(ts))
    except ValueError:
        raise EscalationError(f"bad Slack timestamp {ts!r}") from None
    if age > window_s:
        raise EscalationError(f"stale Slack callback ({int(age)} s old, window {window_s} s)")
    if not hmac.compare_digest(slack_signature(secret, ts, body), sig):
        raise EscalationError("Slack signature does not match (forged or tampered)")
    return "slack:" + sig
