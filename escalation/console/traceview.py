"""A run's page (GET /runs/{run_id}): its process tree, connects, DNS and blocks, as
`glassbreak trace` builds them (sandbox.cli.trace). Pure: a tree in, Markup out."""

from __future__ import annotations

from typing import Any

from escalation.console.html import (
    Markup,
    command_line,
    dl,
    h,
    join,
)
from sandbox.cli.render import show_destination


def trace_body(run_id: str, tree: dict[str, Any]) -> Markup:
    st, res = tree.get("started") or {}, tree.get("result") or {}
    mark = {"allow": "✓", "block": "✗", "deny": "⛔"}

    def node(n: dict[str, Any]) -> Markup:
        execs = join(h('<div class="exec {}"><span class="mark">{}</span> <span class="pid">'
                       '{}</span> {} <span class="muted">{} by {}: {}</span></div>',
                       x.get("decision"), "~" if x.get("would_block") else
                       mark.get(str(x.get("decision")), "?"), n["pid"],
                       command_line([str(a) for a in x.get("argv") or []], None),
                       x.get("decision"),
                       x.get("layer"), x.get("rule_id")) for x in n["execs"])
        nets = join(_net_row(c) for c in n.get("network") or [])
        kids = h('<ul>{}</ul>', join(node(c) for c in n["children"])) if n["children"] \
            else Markup("")
        return h('<li>{}{}{}</li>', execs, nets, kids)

    others = join(_net_row(c) for conns in (tree.get("network_other") or {}).values()
                  for c in conns)
    dns = join(h('<li><span class="mark">{}</span> {} <code>{}</code>{} <span class="muted">'
                 '{}: {}</span></li>', "~" if d.get("would_block") else
                 {"answered": "✓", "refused": "✗", "servfail": "!",
                  "dropped-address": "✗"}.get(str(d.get("action")), "?"),
                 d.get("qtype"), d.get("qname"),
                 h(' → {}', ", ".join(str(a) for a in d.get("addresses") or []))
                 if d.get("addresses") else Markup(""), d.get("action"), d.get("rule_id"))
               for d in tree.get("dns") or [])

    blocked = join(h('<li><span class="badge bad">blocked</span> [{}] {}: {} '
                     '({}){}</li>', b.get("layer"), command_line([str(a) for a in
                                                                  b.get("argv") or []], None),
                     b.get("rule_id"), b.get("reason"),
                     h(' → <a href="/escalations/{}">{}</a>', b["escalation_id"],
                       b["escalation_id"]) if b.get("escalation_id") else Markup(""))
                   for b in tree.get("blocked") or [])
    net = (h('<h3>Network (processes not in the tree)</h3><ul>{}</ul>', others) if others
           else Markup("")) + (h('<h3>DNS</h3><ul>{}</ul>', dns) if dns else Markup(""))
    return h('<div class="head"><h1>Run <code>{}</code></h1></div>'
             '<section class="card">{}</section>'
             '<section class="card"><h2>Process tree</h2><ul class="tree">{}</ul>'
             '{}{}</section><p><a href="/audit?run={}">All audit events of this run</a></p>',
             run_id, dl([("profile", st.get("effective_profile") or "-"),
                          ("agent", st.get("agent") or "-"), ("mode", st.get("mode") or "-"),
                          ("layers", ", ".join(st.get("layers") or []) or "-"),
                          ("result", f"{res.get('decision', '-')} exit "
                                     f"{res.get('exit_code', '-')}, {res.get('execs', 0)} "
                                     f"exec(s), {res.get('blocked', 0)} blocked")]),
             join(node(n) for n in tree.get("tree") or []) or
             Markup('<li class="muted">no execs recorded</li>'),
             h('<h3>Blocked</h3><ul>{}</ul>', blocked) if blocked else Markup(""),
             Markup(net), run_id)


def _net_row(c: dict[str, Any]) -> Markup:
    """One connect seen by the network hooks (a `connect` event or a network block)."""
    mark = "~" if c.get("would_block") else {"allow": "✓", "block": "✗", "deny": "⛔"}.get(
        str(c.get("decision")), "?")
    return h('<div class="net {}"><span class="mark">{}</span> net {} <code>{}</code>{} '
             '<span class="muted">{}: {}</span>{}</div>', c.get("decision"), mark,
             c.get("kind"), show_destination(str(c.get("destination") or "?")),
             h(' ({})', c.get("name")) if c.get("name") else Markup(""), c.get("decision"),
             c.get("rule_id"),
             h(' → <a href="/escalations/{}">{}</a>', c["escalation_id"], c["escalation_id"])
             if c.get("escalation_id") else Markup(""))
