"""`glassbreak trace RUN_ID`: the run's process tree with the decision taken at every exec, the
connects each process made (allowed and refused) and the DNS answers the run got, rebuilt from
the audit log (compact text, or JSON)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from sandbox.audit import read_events
from sandbox.cli.render import quote_argv, show_destination, visible
from sandbox.errors import GlassbreakError


def build_tree(events: list[dict[str, Any]]) -> dict[str, Any]:
    execs = [e for e in events if e.get("type") == "exec"]
    blocks = [e for e in events if e.get("type") == "blocked"]
    net: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("type") == "connect" or (e.get("type") == "blocked"
                                          and e.get("layer") == "network"):
            net[e.get("pid")].append(
                {"kind": e.get("kind") or "refused", "destination": e.get("destination"),
                 "name": e.get("name"),
                 "decision": e.get("decision") or e.get("verdict"),
                 "rule_id": e.get("rule_id"), "note": e.get("note") or e.get("reason"),
                 "escalation_id": e.get("escalation_id"),
                 "would_block": e.get("would_block") or e.get("enforced") is False})
    dns = [{k: e.get(k) for k in ("qname", "qtype", "action", "addresses", "rule_id",
                                  "reason", "would_block")}
           for e in events if e.get("type") == "dns"]
    started = next((e for e in events if e.get("type") == "run_started"), None)
    result = next((e for e in events if e.get("type") == "run_result"), None)
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    parent: dict[int, int | None] = {}
    for e in execs:
        by_pid[e["pid"]].append(e)
        parent.setdefault(e["pid"], e.get("ppid"))
    pids = set(by_pid)

    def node(pid: int) -> dict[str, Any]:
        kids = sorted(p for p in pids if parent.get(p) == pid and p != pid)
        return {"pid": pid, "ppid": parent.get(pid),
                "execs": [{k: e.get(k) for k in ("binary", "argv", "decision", "layer",
                                                 "rule_id", "sha256", "would_block")}
                          for e in by_pid[pid]],
                "network": net.get(pid, []),
                "children": [node(k) for k in kids]}

    roots = sorted(p for p in pids if parent.get(p) not in pids or parent.get(p) == p)
    other = {str(p): v for p, v in net.items() if p not in pids}
    return {"run_id": (started or result or {}).get("run_id"), "started": started,
            "result": result, "tree": [node(r) for r in roots],
            "network_other": other, "dns": dns,
            "blocked": [{k: b.get(k) for k in ("layer", "rule_id", "reason", "argv", "binary",
                                               "pid", "escalation_id", "verdict")}
                        for b in blocks]}


def render_trace(run_id: str, output: str = "text") -> str:
    events = list(read_events(run_id=run_id))
    if not events:
        raise GlassbreakError(
            f"no events for run {run_id!r} in the audit log",
            hint="run ids are printed in the JSON result of `glassbreak run --output json`; "
            "check GLASSBREAK_STATE_DIR points at the same state dir",
        )
    tree = build_tree(events)
    if output == "json":
        return json.dumps(tree, indent=2)
    lines: list[str] = []
    st, res = tree["started"], tree["result"]
    if st:
        lines.append(f"run {run_id}  profile={st.get('effective_profile')} "
                     f"agent={st.get('agent') or '-'} mode={st.get('mode')} "
                     f"layers={','.join(st.get('layers') or [])}")
    if res:
        lines.append(f"result: {res.get('decision')} exit={res.get('exit_code')} "
                     f"execs={res.get('execs')} blocked={res.get('blocked')}")

    def walk(n: dict[str, Any], depth: int) -> None:
        for e in n["execs"]:
            mark = {"allow": "+", "block": "x", "deny": "X"}.get(e["decision"], "?")
            if e.get("would_block"):
                mark = "~"
            argv = quote_argv(e["argv"] or [])
            lines.append(f"{'  ' * depth}{mark} [{n['pid']}] {argv}   ({visible(e['binary'])}; "
                         f"{e['decision']} by {e['layer']}: {e['rule_id']})")
        for c in n.get("network", []):
            lines.append(f"{'  ' * (depth + 1)}{_net_line(c)}")
        for c in n["children"]:
            walk(c, depth + 1)

    for r in tree["tree"]:
        walk(r, 0)
    for pid, conns in sorted(tree["network_other"].items()):
        for c in conns:
            lines.append(f"  [{pid}] {_net_line(c)}")
    for d in tree["dns"]:
        mark = {"answered": "+", "refused": "x", "servfail": "!", "dropped-address": "x"}.get(
            d["action"], "?")
        if d.get("would_block"):
            mark = "~"
        got = " -> " + ", ".join(d["addresses"]) if d.get("addresses") else ""
        lines.append(f"dns {mark} {d['qtype']} {visible(d['qname'])}{got}   ({d['action']}: "
                     f"{d['rule_id']}{'; ' + visible(d['reason']) if d.get('reason') else ''})")
    for b in tree["blocked"]:
        lines.append(f"blocked [{b['layer']}] {quote_argv(b['argv'] or [])}: {b['rule_id']} "
                     f"({visible(b['reason'])}) escalation={b['escalation_id'] or '-'}")
    return "\n".join(lines)


def _net_line(c: dict[str, Any]) -> str:
    mark = {"allow": "+", "block": "x", "deny": "X"}.get(c.get("decision") or "", "?")
    if c.get("would_block"):
        mark = "~"
    name = f" ({visible(c['name'])})" if c.get("name") else ""
    esc = f" escalation={c['escalation_id']}" if c.get("escalation_id") else ""
    dest = show_destination(str(c.get("destination") or "?"))
    return (f"{mark} net {c.get('kind')} {dest}{name}   ({c.get('decision')}: "
            f"{c.get('rule_id')}{esc})")
