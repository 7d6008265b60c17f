"""Safe HTML for the console: every value put into a page is escaped, and every character that
does not show as itself (newline, bidi override, zero-width...) is made visible first, unless it
is already `Markup` (HTML this module built). No template engine, no front-end build.

    h("<p>{}</p>", untrusted)           -> Markup, untrusted escaped and made visible
    join(h("<li>{}</li>", x) for x in xs)
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox.cli.render import argv_warnings, quote_arg, visible


class Markup(str):
    """A string of HTML that this module built (safe to put in a page as is)."""

    __slots__ = ()


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(visible("" if value is None else value), quote=True))


def h(fmt: str, *args: object, **kw: object) -> Markup:
    """`fmt` is trusted HTML (written here); every argument is escaped (see esc)."""
    return Markup(fmt.format(*(esc(a) for a in args), **{k: esc(v) for k, v in kw.items()}))


def join(parts: Iterable[Markup], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p) for p in parts))


_BLANK_RUN = re.compile(r"( {2,})")


def mark_blanks(text: str) -> Markup:
    """Escaped text whose runs of blanks are marked (and, with `white-space: break-spaces`,
    never collapse): 300 spaces inside one argument cannot pass for one space."""
    parts = []
    for i, piece in enumerate(_BLANK_RUN.split(text)):
        if i % 2:
            parts.append(h('<span class="blank" title="{} blank characters">{}</span>',
                           len(piece), piece))
        else:
            parts.append(esc(piece))
    return join(parts)


def arg_html(arg: str) -> Markup:
    """One argument, shell-quoted, hidden characters escaped, blank runs marked."""
    return mark_blanks(quote_arg(arg))


def argv_html(argv: Sequence[str]) -> Markup:
    """The command argument by argument (numbered, one per row), with what could be misread."""
    rows = join(h('<li><span class="n">{}</span><code class="arg">{}</code>'
                  '<span class="len">{} chars</span></li>', i, arg_html(a), len(a))
                for i, a in enumerate(argv))
    warns = argv_warnings(argv)
    warn = h('<ul class="warnings">{}</ul>', join(h('<li>⚠ {}</li>', w) for w in warns)) \
        if warns else Markup("")
    return h('<ol class="argv" start="0">{}</ol>{}', rows, warn)


def command_line(argv: Sequence[str], limit: int | None = 160) -> Markup:
    """The quoted command (every argument quoted on its own, hidden characters escaped, blank
    runs marked), cut at `limit` characters with the count of what is cut, and a badge when
    something in it could be misread."""
    from sandbox.cli.render import quote_argv

    q = quote_argv(argv)
    cut = h('<span class="more">… +{} chars</span>', len(q) - limit) \
        if limit is not None and len(q) > limit else ""
    warns = argv_warnings(argv)
    badge = h(' <span class="badge warn" title="{}">⚠ read carefully</span>',
              "; ".join(warns)) if warns else ""
    return h('<code class="cmd">{}</code>{}{}', mark_blanks(q[:limit] if limit else q), cut,
             badge)


def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    d = (now or time.time()) - ts
    return duration(abs(d)) + (" ago" if d >= 0 else " from now")


def duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(ts: float | None) -> Markup:
    """A time as the server's local time, with the full UTC stamp on hover."""
    if not ts:
        return Markup("-")
    return h('<time datetime="{}" title="{}">{}</time>',
             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
             time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)))


def page(title: str, body: Markup, *, who: str | None = None, csrf: str | None = None,
         nav: str = "", refresh: int | None = None, status_note: Markup | None = None) -> str:
    """The whole document: viewport for phones, one stylesheet, no script."""
    meta = h('<meta http-equiv="refresh" content="{}">', refresh) if refresh else ""
    links = join(h('<a href="{}"{}>{}</a>', href, Markup(' aria-current="page"')
                   if key == nav else Markup(""), label)
                 for key, href, label in (("inbox", "/escalations", "Inbox"),
                                          ("grants", "/grants", "Grants"),
                                          ("audit", "/audit", "Audit")))
    user = h('<form class="signout" method="post" action="/signout">'
             '<input type="hidden" name="csrf" value="{}"><span class="me">{}</span>'
             '<button type="submit" class="link">Sign out</button></form>', csrf or "", who) \
        if who else Markup("")
    header = h('<header><a class="brand" href="/escalations">glassbreak</a>'
               '<nav>{}</nav>{}</header>', links, user) if who else \
        Markup('<header><span class="brand">glassbreak</span></header>')
    return str(h('<!doctype html><html lang="en"><head><meta charset="utf-8">'
                 '<meta name="viewport" content="width=device-width, initial-scale=1">'
                 '{}<title>{} · glassbreak</title>'
                 '<link rel="stylesheet" href="/static/console.css"></head>'
                 '<body>{}<main>{}{}</main></body></html>',
                 meta, title, header, status_note or Markup(""), body))


def dl(rows: list[tuple[str, Any]]) -> Markup:
    return h('<dl class="kv">{}</dl>', join(h('<dt>{}</dt><dd>{}</dd>', k, v) for k, v in rows))
