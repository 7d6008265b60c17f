"""Who may use the console and the approval API, and from where.

- **Client networks** (`serve --decisions-from CIDR`, default loopback only): every endpoint
  that decides or revokes answers 403 (audited) to a client outside them. The address is the
  TCP peer's (uvicorn runs without proxy headers: behind a reverse proxy, the proxy is the
  client, so restrict there too).
- **Sessions**: signing in with an approver token (the same tokens the CLI and the HTTP API
  take) opens a server-side session: a random id in a cookie (`HttpOnly`, `SameSite=Strict`,
  `Secure` over https), 8 h at most and 1 h idle. The token is re-checked against the operator's
  config on every request, so removing it from `approvers:` ends its sessions at once.
- **CSRF**: every form carries the session's CSRF token (the sign-in form a pre-session one
  bound to a cookie); a POST with a foreign `Origin` is refused too.
- **Sizes**: bodies are read up to a cap (413 before anything is written); fields are capped.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = ("127.0.0.0/8", "::1/128")
SESSION_COOKIE = "gb_session"
PRESIGN_COOKIE = "gb_signin"
SESSION_MAX_S = 8 * 3600
SESSION_IDLE_S = 3600
MAX_SESSIONS = 1000
FORM_BODY_MAX = 16 * 1024          # console forms
API_BODY_MAX = 64 * 1024           # JSON decisions, Slack callbacks
REASON_MAX = 1000                  # characters of a decision or revocation reason
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+:-]{0,63}$")
ESC_ID_RE = re.compile(r"^esc-[0-9a-f]{6,32}$")
GRANT_ID_RE = re.compile(r"^gr-[0-9a-f]{6,32}$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")


class TooLarge(Exception):
    pass


def parse_networks(specs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDRs (or single addresses), comma-separated or repeated. ValueError names the bad one."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not a network or address: {part!r} (e.g. 10.0.0.0/8, "
                                 "192.0.2.7, ::1)") from None
    return out


def client_allowed(host: str | None, nets: list[Any]) -> bool:
    if not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a v4 client of a dual-stack socket
    return any(ip.version == n.version and ip in n for n in nets)


async def read_body(request: Any, limit: int) -> bytes:
    """The body, or TooLarge as soon as it passes `limit` (never buffered beyond it)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            if int(cl) > limit:
                raise TooLarge
        except ValueError:
            raise TooLarge from None
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise TooLarge
    return bytes(buf)


@dataclass
class Session:
    id: str
    approver: str
    token: str
    csrf: str
    client: str
    created: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.time)
    flash: str | None = None


class Sessions:
    """Server-side sessions of one `serve` process (a restart signs everyone out)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.key = secrets.token_bytes(32)  # binds pre-session sign-in forms to their cookie

    def open(self, approver: str, token: str, client: str) -> Session:
        s = Session(id=secrets.token_urlsafe(32), approver=approver, token=token,
                    csrf=secrets.token_urlsafe(32), client=client)
        with self._lock:
            self._prune(time.time())
            if len(self._by_id) >= MAX_SESSIONS:  # the oldest goes first
                oldest = min(self._by_id.values(), key=lambda x: x.seen)
                self._by_id.pop(oldest.id, None)
            self._by_id[s.id] = s
        return s

    def get(self, sid: str | None, config: Any) -> Session | None:
        """The live session for this cookie, its token still an approver token of that name."""
        if not sid:
            return None
        now = time.time()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if now - s.created > SESSION_MAX_S or now - s.seen > SESSION_IDLE_S:
                self._by_id.pop(sid, None)
                return None
        try:
            still = config.approver_for_token(s.token)
        except Exception:  # noqa: BLE001 - a broken config signs nobody in
            still = None
        if still != s.approver:
            self.close(sid)
            return None
        s.seen = now
        return s

    def close(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def _prune(self, now: float) -> None:
        for sid, s in list(self._by_id.items()):
            if now - s.created > SESSION_MAX_S or now - s.seen > SESSION_IDLE_S:
                self._by_id.pop(sid, None)

    def presign_csrf(self, presign: str) -> str:
        return hmac.new(self.key, b"signin:" + presign.encode(), hashlib.sha256).hexdigest()

    def presign_ok(self, presign: str | None, token: str | None) -> bool:
        return bool(presign and token) and hmac.compare_digest(
            self.presign_csrf(presign or ""), token or "")


class Throttle:
    """At most `limit` events per `window_s` per key (failed sign-ins per client address)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window_s = limit, window_s
        self._hits: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> int:
        now = time.time()
        with self._lock:
            if len(self._hits) > 10000:
                self._hits.clear()
            hits = [t for t in self._hits.get(key, []) if now - t < self.window_s]
            hits.append(now)
            self._hits[key] = hits
            return len(hits)

    def blocked(self, key: str) -> bool:
        now = time.time()
        with self._lock:
            return len([t for t in self._hits.get(key, []) if now - t < self.window_s]) \
                >= self.limit


def same_origin(request: Any) -> bool:
    """A browser's Origin (when it sends one) must be this server; no Origin (curl, an old
    browser) falls to the CSRF token alone."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a path on this server only."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")) or \
            any(c in path for c in "\r\n\\") or len(path) > 300:
        return "/escalations"
    return path
