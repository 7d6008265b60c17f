"""How glassbreak's own events look on stderr: one clear line per block (text), or JSON lines."""

from __future__ import annotations

import shlex
from typing import Any

SHOWN_ARGS = 16  # a long argv (xargs: tens of thousands) shows its first arguments and the count
SHOWN_CHARS = 1000


def show_argv(argv: list[str]) -> str:
    text = shlex.join(argv)
    if len(argv) <= 2 * SHOWN_ARGS and len(text) <= SHOWN_CHARS:
        return text
    head: list[str] = []
    used = 0
    for a in argv[:SHOWN_ARGS]:
        q = shlex.quote(a)
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
        return (f"glassbreak: {head} [{ev.layer}] profile={ev.profile} rule={ev.rule_id}: "
                f"{ev.reason} | argv: {argv} | to ask: {tail}")
    if t == "syscall_killed":
        return (f"glassbreak: pid {ev.pid} was killed by seccomp: syscall {ev.syscall} "
                f"(nr {ev.nr}, {ev.arch}); the profile's seccomp rules forbid it")
    if t == "events_lost":
        return (f"glassbreak: {ev.count} trace event(s) lost ({ev.source}); {ev.action}")
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
