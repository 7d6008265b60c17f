"""Known secret values out of everything a run records (docs/credentials.md, "Redaction").

The general redaction (escalation.redact) recognises secrets by the look of a value or the name
of a variable. A run that holds credentials knows the values themselves, so it masks them
wherever they turn up: in an exec's argv (`curl -H "Authorization: Bearer $TOKEN"` expands the
token into argv), a block's reason, the escalation context (env, ancestry, recent execs), the
audit log, the lines glassbreak writes on the caller's stderr. A value is masked whole and by
every long, secret-looking fragment (a token inside a kubeconfig, the lines of a key): a copy of
part of a credential is masked too. The replacement names the credential: `[credential NAME]`.

Pure; the supervisor keeps one mask per run that holds credentials (no cost for the others).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

_SPLIT = re.compile(r"[\s\"'`:=,;{}\[\]()<>|\\]+")
MIN_WHOLE = 8  # a value shorter than this is masked only by name (e.g. "true" would be noise)
MIN_FRAGMENT = 16


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _secretish(part: str) -> bool:
    classes = sum(bool(re.search(p, part)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return classes >= 3 or (classes == 2 and _entropy(part) >= 3.5)


def fragments(value: str) -> list[str]:
    """What to mask for one secret value: the value, and its long secret-looking parts."""
    v = value.strip()
    out: list[str] = []
    if len(v) >= MIN_WHOLE:
        out.append(v)
    for part in _SPLIT.split(v):
        if len(part) >= MIN_FRAGMENT and part != v and _secretish(part):
            out.append(part)
    return out


class SecretMask:
    """The secret values one run holds, by label (the credential's name)."""

    def __init__(self) -> None:
        self._frags: dict[str, str] = {}
        self.names: dict[str, str] = {}  # environment variable -> label (the run has it)
        self.hidden: set[str] = set()  # variables taken out of the run's environment
        self._re: re.Pattern[str] | None = None
        self._dirty = False
        self.version = 0  # grows with every value added

    def add(self, label: str, value: str, env: str | None = None) -> None:
        for f in fragments(value):
            self._frags.setdefault(f, label)
        if env:
            self.names[env] = label
        self._dirty = True
        self.version += 1

    def __bool__(self) -> bool:
        return bool(self._frags or self.names or self.hidden)

    def _regex(self) -> re.Pattern[str] | None:
        if self._dirty:
            alts = sorted(self._frags, key=len, reverse=True)  # the longest match first
            self._re = re.compile("|".join(map(re.escape, alts))) if alts else None
            self._dirty = False
        return self._re

    def text(self, s: str) -> str:
        rx = self._regex()
        if rx is None or not s or rx.search(s) is None:
            return s
        return rx.sub(lambda m: f"[credential {self._frags[m.group(0)]}]", s)

    def scrub(self, obj: Any) -> Any:
        """obj with every secret masked; the same object when there was nothing to mask."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list | tuple):
            out = [self.scrub(x) for x in obj]
            if all(a is b for a, b in zip(out, obj, strict=True)):
                return obj
            return out if isinstance(obj, list) else tuple(out)
        if isinstance(obj, dict):
            d = {k: self.scrub(v) for k, v in obj.items()}
            return obj if all(d[k] is obj[k] for k in obj) else d
        return obj

    def event(self, ev: Any) -> Any:
        """Mask an event's fields in place (an event model or a dict); returns it."""
        if isinstance(ev, dict):
            for k, v in list(ev.items()):
                nv = self.scrub(v)
                if nv is not v:
                    ev[k] = nv
            return ev
        fields = getattr(ev, "__dict__", None)
        if fields is None or self._regex() is None:
            return ev
        for k, v in list(fields.items()):
            nv = self.scrub(v)
            if nv is not v:
                fields[k] = nv  # pydantic keeps field values here (frozen models too)
        return ev

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """A run's environment as a record may show it: the credentials' variables by name,
        any other value that carries a credential by value; the hidden ones not at all."""
        out = {k: self.text(v) for k, v in env.items() if k not in self.hidden}
        for name, label in self.names.items():
            out[name] = f"[credential {label}]"
        return out
