"""How glassbreak shows things to people: one clear line per block on stderr (text), and the one
way every surface (stderr, the CLI, the console, Slack and webhook text) quotes an argv.

Text shown to a person quotes argv argument by argument (shell-style: what is shown can be
pasted back into a shell and runs the same command) and makes control, format and bidi
characters visible, so the command shown is the command run:

    quote_argv(["kubectl", "web-1 --all"])         -> kubectl 'web-1 --all'
    quote_argv(["rm", "web-4\u202e lla-- "])        -> rm $'web-4\u202e lla-- '
    visible("ok\n  12:00 approved by sre-oncall")  -> ok\n  12:00 approved by sre-oncall (one line)
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

_SAFE = re.compile(r"^[A-Za-z0-9@%+=:,./_-]+$")
_SIMPLE_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b",
                   "\f": "\\f", "\v": "\\v", "\x1b": "\\e"}


def hidden_char(ch: str) -> bool:
    """A character that does not show as itself: controls (C0, C1, DEL), format characters
    (bidi overrides and isolates, zero-width, soft hyphen, BOM), line/paragraph separators,
    spaces other than U+0020, private-use, unassigned, and lone surrogates (undecodable bytes)."""
    if " " <= ch <= "~":
        return False
    cat = unicodedata.category(ch)
    return cat[0] == "C" or cat in ("Zl", "Zp") or (cat == "Zs" and ch != " ")


def _escape(ch: str) -> str:
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch]
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): the byte itself
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x80:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def quote_arg(arg: str, also: str = "") -> str:
    """One argument, shell-quoted; `$'...'` (bash ANSI-C quoting, still exact) when it holds a
    character that does not show as itself, or one of `also` (e.g. a backtick for Slack)."""
    if arg and _SAFE.match(arg):
        return arg
    if not any(hidden_char(c) or c in also for c in arg):
        return shlex.quote(arg)
    out = []
    for c in arg:
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append("\\'")
        elif hidden_char(c) or c in also:
            out.append(_escape(c))
        else:
            out.append(c)
    return "$'" + "".join(out) + "'"


def quote_argv(argv: Iterable[str], also: str = "") -> str:
    """The whole command, every argument quoted on its own (see quote_arg)."""
    return " ".join(quote_arg(a, also) for a in argv)


def visible(text: object, limit: int | None = None) -> str:
    """Free text (a reason, a name, a path) on one line: every character that does not show as
    itself (newline, bidi override, zero-width...) is written as its escape. `limit`: at most
    that many characters, then how many more there were."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit]
        more = len(str(text)) - limit
    else:
        more = 0
    if any(hidden_char(c) for c in s):
        s = "".join(_escape(c) if hidden_char(c) else c for c in s)
    return s + (f"... (+{more} characters)" if more else "")


def show_destination(dest: str) -> str:
    """A network destination (a network.allow entry, or unix:PATH) on one line: a unix path is
    quoted like an argument (a run picks it: spaces, quotes and hidden characters included);
    host:port entries are shown as they are, hidden characters made visible."""
    if dest.startswith("unix:"):
        return "unix:" + quote_arg(dest[5:])
    return visible(dest)


def _char_name(ch: str) -> str:
    try:
        return f"U+{ord(ch):04X} {unicodedata.name(ch)}"
    except ValueError:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            return f"the byte 0x{ord(ch) - 0xDC00:02x} (not UTF-8)"
        return f"U+{ord(ch):04X}"


def argv_warnings(argv: Sequence[str]) -> list[str]:
    """What a person could misread in this argv: one line per finding, argument numbers from 0
    (argv[0] is the program). Empty when the command reads as it runs."""
    out: list[str] = []
    for i, a in enumerate(argv):
        hidden = sorted({c for c in a if hidden_char(c)})
        if hidden:
            names = ", ".join(_char_name(c) for c in hidden[:3])
            more = f" and {len(hidden) - 3} more kind(s)" if len(hidden) > 3 else ""
            out.append(f"argument {i} contains characters that do not show as themselves: "
                       f"{names}{more} (shown escaped)")
        runs = [len(m.group(0)) for m in re.finditer(r"\s{8,}", a)]
        if runs:
            out.append(f"argument {i} contains a run of {max(runs)} blank characters; what "
                       f"follows it is part of the same argument")
        elif re.search(r"\s-", a):
            out.append(f"argument {i} is ONE argument that contains spaces followed by '-' "
                       "(it is not several options)")
        if len(a) > 256:
            out.append(f"argument {i} is {len(a):,} characters long")
    return out


SHOWN_ARGS = 16  # a long argv (xargs: tens of thousands) shows its first arguments and the count
SHOWN_CHARS = 1000


def show_argv(argv: list[str]) -> str:
    """quote_argv for one line on stderr: a long argv shows its first arguments and the count
    (every argument shown is quoted and its hidden characters visible, as everywhere)."""
    text = quote_argv(argv)
    if len(argv) <= 2 * SHOWN_ARGS and len(text) <= SHOWN_CHARS:
        return text
    head: list[str] = []
    used = 0
    for a in argv[:SHOWN_ARGS]:
        q = quote_arg(a)
        if head and used + len(q) > SHOWN_CHARS:
            break
        head.append(q[:SHOWN_CHARS] + ("..." if len(q) > SHOWN_CHARS else ""))
        used += len(q) + 1
    return " ".join(head) + f" ... (+{len(argv) - len(head)} more; {len(argv)} arguments)"


def ask_hint(escalation_id: str | None, verdict: str, owners: str = "") -> str:
    if verdict == "deny":
        return "this rule is not escalatable (deny); change the command or the profile"
    if escalation_id:
        return (f"escalation {escalation_id} is pending{owners}: "
                f"`glassbreak escalations show {escalation_id}`, or rerun with --wait")
    return "rerun with --reason \"why\" to raise an escalation, or ask the profile's owners"


def render_text(ev: Any) -> str | None:
    t = getattr(ev, "type", "")
    if t == "blocked":
        argv = show_argv(list(ev.argv)) if ev.argv else ""
        head = "BLOCKED" if ev.enforced else "WOULD BLOCK (monitor)"
        verdict = "deny" if ev.verdict == "deny" else "block"
        tail = ask_hint(ev.escalation_id, verdict) if ev.enforced else "not enforced"
        dest = getattr(ev, "destination", None)
        where = f" | destination: {show_destination(dest)}" if dest else ""
        return (f"glassbreak: {head} [{ev.layer}] profile={ev.profile} rule={ev.rule_id}: "
                f"{visible(ev.reason)}{where} | argv: {argv} | to ask: {tail}")
    if t == "syscall_killed":
        return (f"glassbreak: pid {ev.pid} was killed by seccomp: syscall {ev.syscall} "
                f"(nr {ev.nr}, {ev.arch}); the profile's seccomp rules forbid it")
    if t == "events_lost":
        return (f"glassbreak: {ev.count} trace event(s) lost ({ev.source}); {ev.action}")
    if t == "dns" and ev.action == "servfail":
        return f"glassbreak: DNS {ev.qtype} {ev.qname!r} not answered: {ev.reason}"
    if t == "degraded":
        return f"glassbreak: warning: {ev.what}: {ev.why}"
    if t == "grant_used":
        return (f"glassbreak: grant {ev.grant_id} (approved by {ev.approver}) -> profile "
                f"{ev.relaxed_profile}")
    if t == "grant_rejected":
        return (f"glassbreak: warning: grant {ev.grant_id} in the store is ignored: {ev.why} "
                "(recorded in the audit log)")
    if t == "grant_ended":
        killed = f"; ended pids {ev.killed_pids}" if ev.killed_pids else ""
        return f"glassbreak: grant {ev.grant_id} {ev.why}: strict profile again{killed}"
    if t == "run_result":
        if ev.decision == "error" and ev.reason:
            hint = f"\n  hint: {ev.hint}" if ev.hint else ""
            return f"glassbreak: {ev.reason}{hint}"
        if ev.reason and (ev.layer == "seccomp" or ev.layer == "filesystem"
                          and ev.decision != "block"):  # e.g. not in the exec envelope
            return f"glassbreak: {ev.reason}"
        if ev.reason and ev.reason.startswith("the grant"):
            return f"glassbreak: {ev.reason}"
        return None
    return None
