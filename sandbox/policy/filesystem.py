"""The `filesystem:` section as rules: pure code, no I/O (the Landlock planning that reads the
filesystem lives in sandbox.run.filesystem).

    spelled(p)                      ~ and ${X} written the one canonical way ($HOME/..., $X)
    covers(parent_entry, entry)     is `entry` the same path as, or beneath, `parent_entry`?
    expand(p, variables)            $CWD/$HOME/$TMPDIR substituted, normalised
    FsRules.of(policy, variables)   the effective lists (defaults applied), expanded
    FsRules.judge(path, rights)     which rule refused an access Landlock denied, and its verdict

Semantics (docs/profiles.md): `read`, `write` and `execute` list trees or files; `hidden` takes
away every right but listing; where entries nest, the deepest one wins, and at equal depth the
stricter (hidden > read > write). glassbreak's trust anchors come on top, always.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sandbox.policy.profile import FilesystemPolicy

DEFAULT_READ = ("/",)
DEFAULT_WRITE = ("$CWD", "$TMPDIR")
_BRACED = re.compile(r"^\$\{(\w+)\}")
READ_RIGHTS = {"fs.read_file", "fs.read_dir"}
EXEC_RIGHTS = {"fs.execute"}


def spelled(path: str) -> str:
    """One spelling per path: ~ -> $HOME, ${X} -> $X, no trailing slash (but /)."""
    if path == "~" or path.startswith("~/"):
        path = "$HOME" + path[1:]
    path = _BRACED.sub(r"$\1", path)
    return path.rstrip("/") or "/"


def covers(parent: str, entry: str) -> bool:
    p, e = spelled(parent), spelled(entry)
    return p == "/" and e.startswith(("/", "$")) or e == p or e.startswith(p + "/")


def expand(path: str, variables: Mapping[str, str]) -> str:
    """An absolute, normalised path (variables from the run, never from its environment)."""
    p = spelled(path)
    if p.startswith("$"):
        name, _, rest = p[1:].partition("/")
        p = variables[name] + ("/" + rest if rest else "")
    return os.path.normpath(p)


def _under(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class Judgement:
    rule_id: str
    verdict: str  # block | deny
    reason: str
    access: str  # read | write | execute: what an approval would grant


@dataclass(frozen=True)
class FsRules:
    """A profile's filesystem rules for one run: (spelling, expanded path) pairs."""

    read: tuple[tuple[str, str], ...]
    write: tuple[tuple[str, str], ...]
    execute: tuple[tuple[str, str], ...]
    hidden: tuple[tuple[str, str], ...]
    default: str

    @classmethod
    def of(cls, policy: FilesystemPolicy, variables: Mapping[str, str]) -> FsRules:
        def pairs(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
            return tuple((spelled(p), expand(p, variables)) for p in items)

        return cls(read=pairs(DEFAULT_READ if policy.read is None else policy.read),
                   write=pairs(DEFAULT_WRITE if policy.write is None else policy.write),
                   execute=pairs(policy.execute or ()), hidden=pairs(policy.hidden),
                   default=policy.default)

    def governing(self, path: str) -> tuple[str, str, str] | None:
        """(kind, spelling, expanded) of the deepest entry covering `path`; hidden wins ties."""
        best: tuple[int, int, str, str, str] | None = None
        for rank, kind, entries in ((3, "hidden", self.hidden), (2, "read", self.read),
                                    (1, "write", self.write)):
            for sp, ex in entries:
                if _under(path, ex):
                    cand = (len(ex.rstrip("/")), rank, kind, sp, ex)
                    if best is None or cand[:2] > best[:2]:
                        best = cand
        return None if best is None else best[2:]

    def judge(self, path: str, rights: Sequence[str], *,
              protected: Sequence[tuple[str, str]] = ()) -> Judgement:
        """Why Landlock refused `rights` (e.g. ["fs.write_file"]) on `path`. `protected`:
        glassbreak's trust anchors as (path, what) pairs: never escalatable."""
        wants = "execute" if set(rights) & EXEC_RIGHTS else \
            "read" if set(rights) <= READ_RIGHTS else "write"
        what = ", ".join(r.removeprefix("fs.") for r in rights)
        for top, why in protected:
            if _under(path, top):
                return Judgement(f"filesystem.self-protection:{path}", "deny",
                                 f"{wants} of {path} denied ({what}): {why}", wants)
        if wants == "execute":
            return Judgement(f"filesystem.execute:{path}", "deny",
                             f"{path} is not in the exec envelope (Landlock refused {what}): "
                             "only the profile's exec.allow and safeBins programs, their "
                             "interpreters and the loader can be executed", wants)
        gov = self.governing(path)
        if gov is not None and gov[0] == "hidden":
            return Judgement(f"filesystem.hidden:{path}", self.default,
                             f"{wants} of {path} denied ({what}): hidden by the profile's "
                             f"filesystem.hidden entry {gov[1]}", wants)
        if wants == "write":
            return Judgement(f"filesystem.write:{path}", self.default,
                             f"write to {path} denied ({what}): outside the profile's "
                             f"filesystem.write ({', '.join(s for s, _ in self.write)})", wants)
        return Judgement(f"filesystem.read:{path}", self.default,
                         f"read of {path} denied ({what}): outside the profile's "
                         f"filesystem.read ({', '.join(s for s, _ in self.read)})", wants)
