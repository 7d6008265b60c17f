"""Secrets out of escalation context. The documented rule (docs/escalation.md):

1. the value of every variable whose NAME contains (case-insensitive) TOKEN, SECRET, PASSWORD,
   PASS, KEY, CREDENTIAL, AUTH, COOKIE or SESSION is replaced by "[redacted]";
2. any other value that LOOKS like a secret is replaced too: a JWT (three base64url parts, the
   first starting "eyJ"), an AWS access key id (AKIA/ASIA + 16), a URL with user:password@, a
   private-key block, a bearer/basic authorization value, or a long high-entropy token (>= 20
   characters of [A-Za-z0-9+/=_-], no spaces, mixed classes, Shannon entropy >= 3.5 bits/char).
   A value of several parts (PATH-like, separated by ':' or ',' or spaces) is checked part by
   part, and a URL's password alone is masked so the host stays readable.
"""

from __future__ import annotations

import math
import re
from collections import Counter

REDACTED = "[redacted]"
SECRET_NAME_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASS", "KEY", "CREDENTIAL", "AUTH",
                     "COOKIE", "SESSION")
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_AWS = re.compile(r"^(AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}$")
_URL_CRED = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):([^@/\s]+)@")
_PRIVKEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_AUTHZ = re.compile(r"^(bearer|basic|token)\s+\S{8,}$", re.I)
_TOKENISH = re.compile(r"^[A-Za-z0-9+/=_\-.]{20,}$")


def secret_name(name: str) -> bool:
    up = name.upper()
    return any(w in up for w in SECRET_NAME_WORDS)


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def looks_secret(part: str) -> bool:
    if _JWT.match(part) or _AWS.match(part) or _PRIVKEY.search(part) or _AUTHZ.match(part):
        return True
    if _TOKENISH.match(part) and not part.startswith(("/", ".")):
        classes = sum(bool(re.search(p, part)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
        return classes >= 2 and _entropy(part) >= 3.5
    return False


def redact_value(value: str) -> str:
    if _PRIVKEY.search(value) or _AUTHZ.match(value.strip()) or looks_secret(value):
        return REDACTED
    value = _URL_CRED.sub(lambda m: f"{m.group(1)}:{REDACTED}@", value)
    parts = re.split(r"([:,\s]+)", value)
    return "".join(REDACTED if i % 2 == 0 and looks_secret(p) else p
                   for i, p in enumerate(parts))


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if secret_name(k) else redact_value(v)) for k, v in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """argv is kept exact (it is what the operator approves); only `--x-token=...`-style values
    and embedded URL passwords are masked."""
    out = []
    for a in argv:
        if a.startswith("-") and "=" in a:
            opt, value = a.split("=", 1)
            out.append(opt + "=" + (REDACTED if secret_name(opt) else _URL_CRED.sub(
                lambda m: f"{m.group(1)}:{REDACTED}@", value)))  # --server=https://u:pw@h
        else:
            out.append(_URL_CRED.sub(lambda m: f"{m.group(1)}:{REDACTED}@", a))
    return out


def safe_url(url: str) -> str:
    """A webhook URL fit for logs: no user:password, path segments that look secret masked
    (a Slack incoming-webhook URL is itself a credential)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host = u.netloc.rsplit("@", 1)[-1]
    segs = [REDACTED if looks_secret(s) or len(s) >= 20 else s for s in u.path.split("/")]
    return f"{u.scheme}://{host}{'/'.join(segs)}"
