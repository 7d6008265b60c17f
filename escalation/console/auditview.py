"""The audit log for the console: the newest events first, filtered by run, agent, escalation
and type. Reads at most the last SCAN_BYTES of the log (said on the page when it is cut).
audit_row renders one event of the audit page."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from escalation.console.html import Markup, command_line, esc, h, join, when
from sandbox.cli.render import show_destination

SCAN_BYTES = 32 * 1024 * 1024


@dataclass
class AuditView:
    events: list[dict[str, Any]] = field(default_factory=list)
    scanned: int = 0
    truncated: bool = False       # older events exist beyond what was read
    more: int = 0                 # matching events not shown (over the limit)
    missing: bool = False


def _tail_lines(path: Path, limit: int) -> tuple[list[bytes], int, bool]:
    size = path.stat().st_size
    start = max(0, size - limit)
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(size - start)
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # a cut first line
    return lines, len(data), start > 0


def read_audit(path: Path, *, run: str | None = None, agent: str | None = None,
               escalation: str | None = None, escalation_runs: list[str] | None = None,
               grant: str | None = None, type_: str | None = None, limit: int = 200
               ) -> AuditView:
    view = AuditView()
    if not path.exists():
        view.missing = True
        return view
    raw, view.scanned, view.truncated = _tail_lines(path, SCAN_BYTES)
    evs: list[dict[str, Any]] = []
    for line in raw:
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            evs.append(ev)
    runs: set[str] | None = None
    if agent:
        runs = {str(e.get("run_id")) for e in evs
                if e.get("type") in ("run_started", "run_refused") and e.get("agent") == agent
                and e.get("run_id")}
    esc_runs = set(escalation_runs or [])

    def keep(e: dict[str, Any]) -> bool:
        if type_ and e.get("type") != type_:
            return False
        if run and e.get("run_id") != run:
            return False
        if runs is not None and e.get("run_id") not in runs and e.get("agent") != agent:
            return False
        if escalation:
            mine = e.get("escalation_id") == escalation or (
                bool(e.get("run_id")) and e.get("run_id") in esc_runs) or (
                grant is not None and e.get("grant_id") == grant)
            if not mine:
                return False
        return True

    picked = [e for e in reversed(evs) if keep(e)]
    view.events = picked[:limit]
    view.more = max(0, len(picked) - limit)
    return view


def audit_path() -> Path:
    from sandbox.paths import audit_log_path

    return Path(os.fspath(audit_log_path()))


def _summary(e: dict[str, Any]) -> Markup:
    t = e.get("type")
    argv = e.get("argv")
    if t in ("exec", "blocked", "run_started", "run_refused", "escalation_raised") and \
            isinstance(argv, list):
        extra = {"exec": f"{e.get('decision')} by {e.get('layer')}: {e.get('rule_id')}",
                 "blocked": f"[{e.get('layer')}] {e.get('rule_id')}: {e.get('reason')}"
                            + (f" (destination {show_destination(str(e['destination']))})"
                               if e.get("destination") else ""),
                 "run_started": f"profile {e.get('effective_profile')}, agent "
                                f"{e.get('agent') or '-'}",
                 "run_refused": f"{e.get('why')}",
                 "escalation_raised": f"{e.get('rule_id')} ×{e.get('count')}"}[str(t)]
        return h('{} <span class="muted">{}</span>',
                 command_line([str(a) for a in argv], 400), extra)
    keys = {"escalation_decided": ("state", "by", "why", "authn", "grant_id"),
            "decision_refused": ("by", "why", "caller"),
            "grant_used": ("grant_id", "approver", "relaxed_profile"),
            "grant_ended": ("grant_id", "why", "by", "killed_pids"),
            "grant_rejected": ("grant_id", "why"),
            "console_session": ("action", "approver", "client", "why"),
            "webhook_delivery": ("status", "url", "attempts", "error"),
            "run_result": ("decision", "exit_code", "execs", "blocked", "reason"),
            "degraded": ("what", "why"),
            "syscall_killed": ("pid", "syscall", "arch"),
            "connect": ("kind", "destination", "name", "decision", "rule_id"),
            "dns": ("qtype", "qname", "action", "addresses", "rule_id")}.get(str(t), ())
    parts = [f"{k}={e.get(k)}" for k in keys if e.get(k) not in (None, "", [])]
    return esc(" · ".join(parts))


def audit_row(e: dict[str, Any]) -> Markup:
    ts = e.get("ts") if isinstance(e.get("ts"), (int, float)) else None
    run = e.get("run_id") or ""
    esc_id = e.get("escalation_id") or ""
    links = join([h('<a href="/runs/{}">run {}</a>', run, str(run)[:14]) if run else
                  Markup(""),
                  h(' <a href="/escalations/{}">{}</a>', esc_id, esc_id) if esc_id
                  else Markup("")])
    return h('<li><div class="row1"><span class="when">{}</span><span class="type {}">{}</span>'
             '{}</div><div class="row2">{}</div><details><summary>record</summary>'
             '<pre>{}</pre></details></li>', when(ts), e.get("type"), e.get("type"), links,
             _summary(e), Markup(_pre(json.dumps(e, indent=1, ensure_ascii=True))))


def _pre(text: str) -> str:
    import html as _html

    return _html.escape(text)  # ensure_ascii: every non-ASCII character is already \uXXXX
