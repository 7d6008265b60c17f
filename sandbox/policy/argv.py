"""argv models for safeBins rules: how a program reads its command line. Pure: no I/O.
Why this module is long: the two dialect models (getopt, cobra) of one safeBins rule must agree (a
rule that names no dialect is read by both; the strictest wins): cobra reads flags through the same
_Parser (in pflag mode), both use compile_rule's tables and the command checks, and the docstring
below is their specification. The next seam, if it grows: cobra's router (_candidates ..
_getopt_covers_cobra) in a module of its own.

A rule names its program's parser with `dialect:`; each dialect is one model below. A rule that
names none is read by EVERY model and must pass all of them (the strictest decision wins): an
argv that routes to `delete` under cobra's rules is blocked even if getopt would read it as
`get`. (A rule that names single-dash long options, which pflag does not have, describes a
program that is not cobra-based: getopt alone reads it.) Both models share the rule's flag
tables (compile_rule) and the command checks.

getopt (GNU getopt_long: coreutils, grep, sed, sort, find-style tools, git-like subcommands)
- `--opt=value` and `--opt value` (a flag known to take a value consumes the next argv, even if
  it starts with '-'). `--opt=value` on a flag that takes no value is refused, as getopt does
  (`wc --lines=5`).
- A long option may be abbreviated to any unique prefix of a KNOWN long option (every long flag
  the rule names: allowed, allowed-value, forbidden/denied, valueFlags). An exact name wins; a
  prefix of several known options is ambiguous and blocks (`safeBins.X.ambiguous:--f`).
- Short options bundle: `-rf` is `-r -f`; a value flag inside a bundle takes the rest of the
  bundle verbatim (`-n5`, `-nprod`; `-n=prod` gives the value `=prod`) or, at the end of the
  bundle, the next argv.
- GNU permutation: options after operands still count. `--` ends the options.
- Single-dash long options (Go's `flag`, getopt_long_only: `-force`, `-auto-approve`): a token
  `-word` is read BOTH as a short bundle and as the long option `--word`, and must pass as both.
  Entries written with one dash and several letters (`-auto-approve`) are long options.

cobra (spf13/cobra on spf13/pflag: kubectl, helm, gh, docker). Two steps, as cobra runs them:
1. Routing. `Find` (the default): at each level the first argv that is not a flag, not a flag's
   value and not empty is the next subcommand; it is removed and the search starts again from
   the first argv with the subcommand's flags. While routing, `--` stops the search; an empty
   argv and a lone `-` are skipped; a token with `=` (`-n=prod`, `--all-namespaces=false`) and
   a short bundle longer than two characters (`-An`, `-nprod`) never take the next argv; a
   two-character `-x` or a `--long` without `=` takes the next argv unless the command at that
   level knows it as a boolean. `TraverseChildren` (docker): flags are consumed left to right,
   the first remaining word is the subcommand (an empty argv or `-` ends the routing), and `--`
   takes the next argv as its value. A command passes only if it passes both routers.
2. Flags (pflag, on what routing left). Long names are exact (no abbreviations) and `_` is `-`
   (kubectl normalises them: `--grace_period` is `--grace-period`); boolean flags take
   `--flag=true|false` (and `=false` turns them off), never the next argv; `-n=prod`, `-nprod`,
   `-n prod`; bundles `-An` (a value flag inside takes the rest, or the next argv); `--` ends
   the flags; empty argvs and `-` are operands. A value flag at the very end blocks only when
   the rule lists its values (pflag refuses it, or a NoOptDefVal default could be unlisted).
   The rule does not say which flags a program knows at which level (persistent flags of the
   root vs a subcommand's own flags: kubectl's `-A` is unknown at the root, so there it takes
   the next argv). So while routing, a flag the rule names as boolean (or does not name) is
   read both ways; a flag the rule names as value-taking always takes the next argv. Aliases
   and prefix matching of subcommands are the program's: list aliases in the command lists.

Both models:
- Allowlist: when the rule has allowedFlags or allowedValueFlags, any other flag blocks (fail
  closed). An entry `--dry-run=client` allows the flag only with that value. A flag that
  allowedFlags lists bare and with values (`--color`, `--color=auto`) takes an optional value
  (getopt's optional_argument, pflag's NoOptDefVal): only inline, only the listed values.
- Subcommand: restrictedCommands / deniedCommands / allowedCommands entries may have several
  words ("config set"). A lone `-` is stdin: it is neither a subcommand nor counted by
  minPositional / maxPositional.
- Unknown flags without an allowlist (the strict choice): an unknown flag may or may not take
  a value, and that changes which token is the subcommand (`kubectl --foo delete pod`). Every
  reading is explored and the command is refused if ANY reading breaks the rule. Readings are
  memoised; past MAX_STATES parser states (or MAX_ROUTES command paths) the argv is refused as
  too ambiguous to check (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

from sandbox.policy.profile import Dialect, SafeBin

# flag: no value; value: a required value; optional: only `--x=v` (getopt's optional_argument,
# pflag's NoOptDefVal), never the next argv; maybe: not known, both readings are explored
Takes = Literal["flag", "value", "optional", "maybe"]
MAX_STATES = 4096
MAX_ROUTES = 256
DIALECTS: tuple[Dialect, ...] = ("getopt", "cobra")
DIALECT_NAMES = {"getopt": "GNU getopt_long", "cobra": "cobra/pflag"}
PFLAG_BOOLS = frozenset({"1", "t", "T", "TRUE", "true", "True",
                         "0", "f", "F", "FALSE", "false", "False"})
# an unambiguous argv visits about one state per token, and the kernel accepts hundreds of
# thousands of arguments (xargs): the budget grows with the argv
STATES_PER_ARG = 4


@dataclass
class FlagSpec:
    display: str  # as the rule spells it, without "=value": "--force", "-n", "-auto-approve"
    takes: Takes | None = None  # None: unknown (only named as forbidden)
    allowed: bool = False
    any_value: bool = False  # allowedValueFlags names it without a value
    fixed: set[str] = field(default_factory=set)  # values named as `--flag=value`
    bare: bool = False  # allowedFlags names it without a value
    forbidden: bool = False
    forbidden_values: set[str] = field(default_factory=set)

    @property
    def values(self) -> set[str] | None:
        """The values an allowed flag may take; None: any."""
        return None if self.any_value or not self.fixed else self.fixed

    def set_takes(self, t: Takes) -> None:
        self.takes = t if self.takes in (None, t) else "maybe"


@dataclass(frozen=True)
class Spec:
    longs: dict[str, FlagSpec]
    prefixes: dict[str, tuple[str, ...]]  # every prefix of a long name -> the long names
    shorts: dict[str, FlagSpec]
    allowlist: bool
    denied: tuple[tuple[str, ...], ...]
    restricted: tuple[tuple[str, ...], ...]
    allowed_cmds: tuple[tuple[str, ...], ...] | None
    depth: int  # how many operands the command lists look at
    min_pos: int | None
    max_pos: int | None
    on_violation: Literal["block", "deny"]
    norm_longs: dict[str, FlagSpec]  # pflag: long names with '_' read as '-'
    single_dash: frozenset[str]  # long options the rule writes with one dash (-auto-approve)
    models: tuple[Dialect, ...]  # the models that read the argv when the rule names none
    # the command lists by first word: denied and restricted entries, allowed entries
    by_first: dict[str, tuple[tuple[str, ...], ...]]
    allowed_by_first: dict[str, tuple[tuple[str, ...], ...]]
    top: int  # the strictest rank a violation can have: once found, no reading can beat it


@dataclass(frozen=True)
class Violation:
    kind: str  # forbiddenFlags | allowlist | ambiguous | flagValue | missingValue |
    # restrictedCommands | deniedCommands | allowedCommands | minPositional | maxPositional |
    # tooAmbiguous
    subject: str
    reason: str
    verdict: Literal["block", "deny"]
    model: str = ""  # the dialect whose reading found it

    @property
    def rank(self) -> int:
        return 2 if self.verdict == "deny" else 1


class Reading(NamedTuple):
    """One model's reading of an argv: its strictest violation and its natural reading."""

    model: str
    violation: Violation | None
    command: tuple[str, ...]  # the subcommand words (up to the rule's depth)
    operands: tuple[str, ...]  # every operand, subcommand words included
    flags: tuple[str, ...]  # as "--name" or "--name=value"
    states: int


@dataclass(frozen=True)
class ParseResult:
    violation: Violation | None
    operands: tuple[str, ...]  # of the natural reading of the first model
    flags: tuple[str, ...]  # of the natural reading of the first model
    readings: int  # parser states visited (1 per token when nothing is ambiguous)
    models: tuple[Reading, ...] = ()


def _split_entry(entry: str) -> tuple[bool, str, str | None]:
    """'--dry-run=client' -> (long, 'dry-run', 'client'); '-n' -> (short, 'n', None)."""
    name, eq, val = entry.partition("=")
    value = val if eq else None
    if name.startswith("--"):
        return True, name[2:], value
    if len(name) == 2:
        return False, name[1], value
    return True, name[1:], value  # single-dash long option (-auto-approve)


def compile_rule(rule: SafeBin) -> Spec:
    longs: dict[str, FlagSpec] = {}
    shorts: dict[str, FlagSpec] = {}

    def get(entry: str) -> tuple[FlagSpec, str | None]:
        is_long, name, value = _split_entry(entry)
        table = longs if is_long else shorts
        if name not in table:
            table[name] = FlagSpec(display=entry.partition("=")[0])
        return table[name], value

    inline: set[int] = set()  # flags allowedFlags names with a value
    for e in rule.allowedValueFlags or []:
        fs, v = get(e)
        fs.set_takes("value")
        fs.allowed = True
        if v is None:
            fs.any_value = True
        else:
            fs.fixed.add(v)
    for e in rule.allowedFlags or []:
        fs, v = get(e)
        fs.allowed = True
        if v is None:
            fs.bare = True
        else:
            fs.fixed.add(v)
            inline.add(id(fs))
    for fs in (*longs.values(), *shorts.values()):
        if fs.bare and id(fs) in inline and fs.takes is None:
            fs.takes = "optional"  # `--color` and `--color=auto`: an optional value
        else:
            if fs.bare:
                fs.set_takes("flag")
            if id(fs) in inline:
                fs.set_takes("value")
    for e in rule.all_forbidden:
        fs, v = get(e)
        if v is None:
            fs.forbidden = True
        else:
            fs.forbidden_values.add(v)
            fs.set_takes("value")
    for e in rule.valueFlags:
        get(e)[0].set_takes("value")

    prefixes: dict[str, list[str]] = {}
    for name in longs:
        for k in range(1, len(name) + 1):
            prefixes.setdefault(name[:k], []).append(name)
    norm: dict[str, FlagSpec] = {}
    for name, fs in longs.items():
        key = name.replace("_", "-")
        if key not in norm or fs.forbidden:  # two spellings of one flag: the forbidden wins
            norm[key] = fs

    def cmds(entries: list[str] | None) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(e.split()) for e in entries or [] if e.split())

    single_dash = frozenset(n for n, fs in longs.items()
                            if len(n) > 1 and not fs.display.startswith("--"))
    denied, restricted = cmds(rule.deniedCommands), cmds(rule.restrictedCommands)
    allowed = None if rule.allowedCommands is None else cmds(rule.allowedCommands)
    depth = max((len(c) for c in (*denied, *restricted, *(allowed or ()))), default=0)
    if allowed is not None:
        depth = max(depth, 1)
    return Spec(
        longs=longs, prefixes={k: tuple(v) for k, v in prefixes.items()}, shorts=shorts,
        allowlist=rule.has_flag_allowlist, denied=denied, restricted=restricted,
        allowed_cmds=allowed, depth=depth, min_pos=rule.minPositional,
        max_pos=rule.maxPositional, on_violation=rule.onViolation, norm_longs=norm,
        single_dash=single_dash,
        # pflag has no single-dash long options: a rule naming one (`-delete`) describes a
        # program that is not cobra-based, and getopt's reading of `-word` covers both forms
        models=("getopt",) if single_dash else DIALECTS,
        by_first=_index((*denied, *restricted)), allowed_by_first=_index(allowed or ()),
        top=2 if denied or rule.onViolation == "deny" else 1,
    )


def _index(cmds: tuple[tuple[str, ...], ...]) -> dict[str, tuple[tuple[str, ...], ...]]:
    out: dict[str, tuple[tuple[str, ...], ...]] = {}
    for c in cmds:
        out[c[0]] = (*out.get(c[0], ()), c)
    return out


_SPEC_CACHE: dict[int, tuple[SafeBin, Spec]] = {}


def spec_for(rule: SafeBin) -> Spec:
    """The compiled rule (cached per rule object; rules are frozen)."""
    hit = _SPEC_CACHE.get(id(rule))
    if hit is not None and hit[0] is rule:
        return hit[1]
    spec = compile_rule(rule)
    if len(_SPEC_CACHE) > 1024:
        _SPEC_CACHE.clear()
    _SPEC_CACHE[id(rule)] = (rule, spec)
    return spec


def command_violation(spec: Spec, ops: tuple[str, ...], prog: str, note: str,
                      model: str) -> Violation | None:
    """The command lists against the subcommand words `ops` (denied > restricted > allowed)."""
    def v(kind: str, subject: str, reason: str, verdict: Literal["block", "deny"]) -> Violation:
        return Violation(kind, subject, f"{reason} ({note})" if note else reason, verdict, model)

    first = ops[0] if ops else None
    if first not in spec.by_first and (
            spec.allowed_cmds is None
            or any(ops[: len(c)] == c for c in spec.allowed_by_first.get(first or "", ()))):
        return None  # the common case: nothing listed starts with this word
    for cmd in spec.denied:
        if ops[: len(cmd)] == cmd:
            c = " ".join(cmd)
            return v("deniedCommands", c, f"`{c}` is a denied subcommand of {prog} "
                     "(never allowed)", "deny")
    for cmd in spec.restricted:
        if ops[: len(cmd)] == cmd:
            c = " ".join(cmd)
            return v("restrictedCommands", c, f"`{c}` is a restricted subcommand of {prog} "
                     "(it needs an escalation)", "block")
    if spec.allowed_cmds is not None and not any(ops[: len(c)] == c for c in spec.allowed_cmds):
        got = " ".join(ops) or "(none)"
        names = ", ".join(" ".join(c) for c in spec.allowed_cmds)
        return v("allowedCommands", ops[0] if ops else "(none)", f"subcommand `{got}` is not "
                 f"among the allowed subcommands of {prog} ({names})", "block")
    return None


# A parser state: (token index, offset inside a short bundle or 0, first operands, operand
# count, note explaining a non-natural reading, natural flags/operands when tracing).
_State = tuple[int, int, tuple[str, ...], int, str, tuple[str, ...] | None]


class _Parser:
    """The flag reader of one model over `args`, exploring every reading of unknown flags.

    mode "getopt": the getopt_long model, subcommand words included.
    mode "pflag": pflag's FlagSet.Parse on what cobra's routing left: no subcommand words
    (the router checks those); `extra` operands (the routed words) count for the bounds;
    `quiet`: a parent command's part of the argv under TraverseChildren, where a missing value
    ends the reading quietly (pflag's error: nothing runs); `counts`: check the bounds."""

    def __init__(self, spec: Spec, args: Sequence[str], prog: str, mode: str = "getopt", *,
                 extra: int = 0, quiet: bool = False, counts: bool = True,
                 note: str = "") -> None:
        self.spec, self.args, self.prog = spec, args, prog
        self.pflag = mode == "pflag"
        self.model = "cobra" if self.pflag else "getopt"
        self.depth = 0 if self.pflag else spec.depth
        self.extra, self.quiet, self.note0 = extra, quiet, note
        self.count_ops = (spec.min_pos is not None or spec.max_pos is not None) and counts
        self.best: Violation | None = None
        self.natural: tuple[str, ...] | None = None
        self.stack: list[_State] = []
        self.seen: set[tuple[int, int, tuple[str, ...], int]] = set()

    # -- outcomes ------------------------------------------------------------------------------
    def fail(self, kind: str, subject: str, reason: str, note: str,
             verdict: Literal["block", "deny"] | None = None) -> None:
        if note:
            reason = f"{reason} ({note})"
        v = Violation(kind, subject, reason, verdict or self.spec.on_violation, self.model)
        if self.best is None or v.rank > self.best.rank:
            self.best = v

    def push(self, i: int, j: int, ops: tuple[str, ...], count: int, note: str,
             log: tuple[str, ...] | None, item: str | None = None) -> None:
        if log is not None and item is not None:
            log = (*log, item)
        self.stack.append((i, j, ops, count, note, log))

    def alt(self, i: int, ops: tuple[str, ...], count: int, note: str) -> None:
        """A non-natural reading, explored after the natural one (which is pushed last)."""
        self.stack.insert(max(len(self.stack) - 1, 0), (i, 0, ops, count, note, None))

    def operand(self, i: int, ops: tuple[str, ...], count: int, note: str,
                log: tuple[str, ...] | None) -> None:
        tok = self.args[i]
        if tok == "-":  # stdin: not a subcommand, not counted
            self.push(i + 1, 0, ops, count, note, log, "op:-")
            return
        if len(ops) < self.depth:
            ops = (*ops, tok)
        self.push(i + 1, 0, ops, count + 1 if self.count_ops else 0, note, log, "op:" + tok)

    # -- the walk ------------------------------------------------------------------------------
    def run(self, want_log: bool) -> tuple[Violation | None, tuple[str, ...], int]:
        self.push(0, 0, (), 0, self.note0, () if want_log else None)
        while self.stack:
            i, j, ops, count, note, log = self.stack.pop()
            key = (i, j, ops, count)
            if key in self.seen:
                continue
            self.seen.add(key)
            if len(self.seen) > MAX_STATES + STATES_PER_ARG * len(self.args):
                self.fail("tooAmbiguous", self.prog,
                          f"the argv of {self.prog} has too many possible readings to check "
                          "(unknown flags that may take values); spell flags as --flag=value",
                          "", "block")
                break
            if self.best is not None and self.best.rank >= self.spec.top:
                break  # the strictest there can be (the natural reading only matters without)
            self.step(i, j, ops, count, note, log)
        return self.best, self.natural or (), len(self.seen)

    def step(self, i: int, j: int, ops: tuple[str, ...], count: int, note: str,
             log: tuple[str, ...] | None) -> None:
        args = self.args
        if i >= len(args):
            self.terminal(ops, count, note, log)
            return
        tok = args[i]
        if j:
            self.short(i, j, ops, count, note, log)
        elif tok == "--":
            rest = tuple(t for t in args[i + 1:] if t != "-")
            ops = (*ops, *rest)[: self.depth]
            count = count + len(rest) if self.count_ops else 0
            if log is not None:
                log = (*log, *("op:" + t for t in args[i + 1:]))
            self.terminal(ops, count, note, log)
        elif tok.startswith("--"):
            if self.pflag:
                self.long_pflag(i, tok[2:], tok, ops, count, note, log)
            else:
                self.long(i, tok[2:], tok, ops, count, note, log, single_dash=False)
        elif tok.startswith("-") and tok != "-":
            if self.pflag:
                if tok[1:].partition("=")[0] in self.spec.single_dash:
                    # a long option the rule writes with one dash: not pflag's, read as named
                    self.long_pflag(i, tok[1:], tok, ops, count, note, log)
                else:
                    self.short(i, 1, ops, count, note, log)
                return
            if len(tok) > 2:
                self.long(i, tok[1:], tok, ops, count, note, log, single_dash=True)
                if tok[1:].partition("=")[0] in self.spec.single_dash:
                    return  # a declared single-dash long option (-auto-approve): not a bundle
            self.short(i, 1, ops, count, note, log)
        else:
            self.operand(i, ops, count, note, log)

    def terminal(self, ops: tuple[str, ...], count: int, note: str,
                 log: tuple[str, ...] | None) -> None:
        if log is not None and self.natural is None:
            self.natural = log
        spec, prog = self.spec, self.prog
        if not self.pflag:
            v = command_violation(spec, ops, prog, note, self.model)
            if v is not None:
                if self.best is None or v.rank > self.best.rank:
                    self.best = v
                return
        if not self.count_ops:
            return
        count += self.extra
        if spec.min_pos is not None and count < spec.min_pos:
            self.fail("minPositional", str(count), f"{prog} needs at least {spec.min_pos} "
                      f"operand(s), got {count}", note, "block")
        elif spec.max_pos is not None and count > spec.max_pos:
            self.fail("maxPositional", str(count), f"{prog} takes at most {spec.max_pos} "
                      f"operand(s), got {count}", note, "block")

    def check_value(self, fs: FlagSpec, shown: str, value: str | None, note: str) -> bool:
        """Value checks of a known flag; False if the reading ends in a violation."""
        if value is not None and value in fs.forbidden_values:
            self.fail("forbiddenFlags", f"{fs.display}={value}", f"`{shown}` sets the forbidden "
                      f"value `{fs.display}={value}`", note)
            return False
        if self.spec.allowlist and not fs.allowed:
            self.fail("allowlist", fs.display, f"`{shown}` is not on the flag allowlist of "
                      f"{self.prog}", note)
            return False
        values = fs.values
        if fs.allowed and values is not None and (value not in values if value is not None
                                                  else not fs.bare):
            ok = " or ".join(f"{fs.display}={v}" for v in sorted(values))
            if fs.bare:
                ok = f"{fs.display} or {ok}"
            got = "no value" if value is None else f"`{value}`"
            self.fail("flagValue", fs.display, f"`{fs.display}` is allowed only as {ok}, got "
                      f"{got}", note)
            return False
        return True

    def check_bool(self, fs: FlagSpec, shown: str, value: str, note: str) -> bool:
        """pflag: `--flag=value` on a boolean flag; the value must be one pflag accepts."""
        if value in PFLAG_BOOLS:
            return self.check_value(fs, shown, None, note)
        self.fail("flagValue", fs.display, f"`{fs.display}` is a boolean flag: it takes only "
                  f"true or false, got `{value}`", note)
        return False

    def missing(self, fs: FlagSpec, shown: str, note: str) -> None:
        """A value flag at the end: getopt and pflag refuse it, so nothing runs. Unless the
        flag in fact has an optional value (pflag's NoOptDefVal: kubectl's --dry-run) and runs
        with its default: a violation where that default could be one the rule does not allow
        (getopt: always; pflag: when the rule lists the flag's values)."""
        if not self.quiet and (not self.pflag or fs.values is not None):
            self.fail("missingValue", fs.display, f"`{shown}` needs a value", note)

    def unknown_long(self, i: int, tok: str, shown: str, eq: str, ops: tuple[str, ...],
                     count: int, note: str, log: tuple[str, ...] | None) -> None:
        if self.spec.allowlist:
            self.fail("allowlist", shown, f"`{shown}` is not on the flag allowlist of "
                      f"{self.prog}", note)
            return
        self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
        if not eq and i + 1 < len(self.args):
            self.alt(i + 2, ops, count, note or f"if the unknown flag `{shown}` takes the value "
                     f"`{self.args[i + 1]}`")

    def known_long(self, i: int, fs: FlagSpec, tok: str, shown: str, ops: tuple[str, ...],
                   count: int, note: str, log: tuple[str, ...] | None) -> None:
        """A known long flag without `=value`."""
        takes = fs.takes or "maybe"
        if takes != "value" and self.check_value(fs, shown, None, note):
            self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
        if takes in ("value", "maybe"):
            if i + 1 >= len(self.args):
                if takes == "value":
                    self.missing(fs, shown, note)
                return
            value = self.args[i + 1]
            alt = note or (f"if `{shown}` takes the value `{value}`" if takes == "maybe" else "")
            if self.check_value(fs, shown, value, alt):
                self.push(i + 2, 0, ops, count, alt, log, f"flag:{tok}={value}")

    def forbidden(self, fs: FlagSpec, shown: str, how: str, note: str) -> None:
        if shown == fs.display:
            what = f"`{shown}` is a forbidden flag of {self.prog}"
        else:
            what = f"`{shown}` is {how} of the forbidden flag `{fs.display}`"
        self.fail("forbiddenFlags", fs.display, what, note)

    def long(self, i: int, body: str, tok: str, ops: tuple[str, ...], count: int, note: str,
             log: tuple[str, ...] | None, *, single_dash: bool) -> None:
        spec = self.spec
        name, eq, inline = body.partition("=")
        exact = name in spec.longs
        cands = (name,) if exact else spec.prefixes.get(name, ())
        shown = tok.partition("=")[0]
        if len(cands) > 1:
            if single_dash and not any(spec.longs[c].forbidden for c in cands):
                return  # read as a short bundle instead
            names = ", ".join(spec.longs[c].display for c in cands)
            self.fail("ambiguous", shown, f"`{shown}` is an ambiguous abbreviation of "
                      f"{names}", note)
            return
        if not cands:
            if not single_dash:  # otherwise the short-bundle reading covers it
                self.unknown_long(i, tok, shown, eq, ops, count, note, log)
            return
        fs = spec.longs[cands[0]]
        if fs.forbidden:
            self.forbidden(fs, shown, "a spelling" if exact else "an abbreviation", note)
            return
        if eq:
            if fs.takes == "flag":  # getopt: "option '--lines' doesn't allow an argument"
                self.fail("flagValue", fs.display, f"`{fs.display}` takes no value, got "
                          f"`{tok}`", note)
            elif self.check_value(fs, shown, inline, note):
                self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
            return
        self.known_long(i, fs, tok, shown, ops, count, note, log)

    def long_pflag(self, i: int, body: str, tok: str, ops: tuple[str, ...], count: int,
                   note: str, log: tuple[str, ...] | None) -> None:
        name, eq, inline = body.partition("=")
        fs = self.spec.norm_longs.get(name.replace("_", "-"))
        shown = tok.partition("=")[0]
        if fs is None:
            self.unknown_long(i, tok, shown, eq, ops, count, note, log)
            return
        if fs.forbidden:
            self.forbidden(fs, shown, "a spelling", note)
            return
        if eq:
            ok = self.check_bool(fs, shown, inline, note) if fs.takes == "flag" else \
                self.check_value(fs, shown, inline, note)
            if ok:
                self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
            return
        self.known_long(i, fs, tok, shown, ops, count, note, log)

    def short(self, i: int, j: int, ops: tuple[str, ...], count: int, note: str,
              log: tuple[str, ...] | None) -> None:
        spec, args = self.spec, self.args
        tok = args[i]
        c = tok[j]
        rest = tok[j + 1:]
        fs = spec.shorts.get(c)
        nxt_i, nxt_j = (i, j + 1) if rest else (i + 1, 0)
        if fs is None:
            if spec.allowlist:
                in_bundle = f" (in `{tok}`)" if len(tok) > 2 else ""
                self.fail("allowlist", "-" + c, f"`-{c}`{in_bundle} is not on the flag allowlist "
                          f"of {self.prog}", note)
                return
            fs = FlagSpec(display="-" + c, takes="maybe", allowed=True)
        elif fs.forbidden:
            what = (f"`{tok}` contains the forbidden flag `{fs.display}`" if len(tok) > 2
                    else f"`{tok}` is a forbidden flag of {self.prog}")
            self.fail("forbiddenFlags", fs.display, what, note)
            return
        takes = fs.takes or "maybe"
        if self.pflag and len(rest) > 1 and rest[0] == "=":  # pflag: -n=prod, -A=false
            value = rest[1:]
            ok = self.check_bool(fs, "-" + c, value, note) if takes == "flag" else \
                self.check_value(fs, "-" + c, value, note)
            if ok:
                self.push(i + 1, 0, ops, count, note, log, f"flag:-{c}={value}")
            return
        if takes == "optional" and not self.pflag:  # getopt: only an attached value
            if self.check_value(fs, "-" + c, rest or None, note):
                self.push(i + 1, 0, ops, count, note, log, f"flag:-{c}={rest}" if rest
                          else "flag:-" + c)
            return
        if takes != "value" and self.check_value(fs, "-" + c, None, note):
            self.push(nxt_i, nxt_j, ops, count, note, log, "flag:-" + c)
        if takes in ("value", "maybe"):
            if rest:
                value, after = rest, i + 1
            elif i + 1 < len(args):
                value, after = args[i + 1], i + 2
            else:
                if takes == "value":
                    self.missing(fs, "-" + c, note)
                return
            alt = note or (f"if `-{c}` takes the value `{value}`" if takes == "maybe" else "")
            if self.check_value(fs, "-" + c, value, alt):
                if takes == "maybe":  # explored after the boolean reading
                    self.alt(after, ops, count, alt)
                else:
                    self.push(after, 0, ops, count, alt, log, f"flag:-{c}={value}")


def _natural(log: tuple[str, ...], depth: int) -> tuple[tuple[str, ...], tuple[str, ...],
                                                        tuple[str, ...]]:
    flags = tuple(x[5:] for x in log if x.startswith("flag:"))
    operands = tuple(x[3:] for x in log if x.startswith("op:"))
    return tuple(o for o in operands if o != "-")[:depth], operands, flags


def _read_getopt(spec: Spec, args: Sequence[str], prog: str, trace: bool) -> Reading:
    best, log, states = _Parser(spec, args, prog).run(trace)
    if not trace:
        return Reading("getopt", best, (), (), (), states)
    command, operands, flags = _natural(log, spec.depth)
    return Reading("getopt", best, command, operands, flags, states)


# -- cobra ---------------------------------------------------------------------------------------
# How a token moves a router: it ends the search, is a word (a subcommand candidate), is passed
# over, takes the next argv as its value, or may do either (a flag not known at every level).
_STOP, _WORD, _SKIP, _TAKES, _EITHER = range(5)


class _TooAmbiguous(Exception):
    pass


def _find_kind(spec: Spec, tok: str) -> int:
    """cobra's stripFlags / argsMinusFirstX (Command.Find)."""
    if not tok:
        return _SKIP
    if tok[0] != "-":
        return _WORD
    if tok == "--":
        return _STOP
    if len(tok) == 1 or "=" in tok:
        return _SKIP
    if tok[1] == "-":
        fs = spec.norm_longs.get(tok[2:].replace("_", "-"))
        return _TAKES if fs is not None and fs.takes == "value" else _EITHER
    if len(tok) == 2:
        fs = spec.shorts.get(tok[1])
        return _TAKES if fs is not None and fs.takes == "value" else _EITHER
    return _SKIP  # a bundle: never takes the next argv while routing


def _traverse_kind(spec: Spec, tok: str) -> int:
    """cobra's Command.Traverse (TraverseChildren)."""
    if tok.startswith("--") and "=" not in tok:
        if tok == "--":
            return _TAKES  # a long flag named "": unknown, so it takes the next argv
        fs = spec.norm_longs.get(tok[2:].replace("_", "-"))
        return _TAKES if fs is not None and fs.takes == "value" else _EITHER
    if len(tok) == 2 and tok[0] == "-" and tok[1] not in "-=":
        fs = spec.shorts.get(tok[1])
        return _TAKES if fs is not None and fs.takes == "value" else _EITHER
    if (len(tok) >= 3 and tok.startswith("--")) or (len(tok) >= 2 and tok[0] == "-"):
        return _SKIP
    return _WORD  # words, and also "" and "-" (no such subcommand: the routing ends)


# A routing candidate: (argv index of the word or -1 for none, index of the flag read as taking
# the next argv to reach it or -1, index of that value).
_Cand = tuple[int, int, int]
_Kind = Callable[[Spec, str], int]


def _candidates(spec: Spec, kind_of: _Kind, args: Sequence[str],
                live: Sequence[int]) -> list[_Cand]:
    """The possible first words of one routing level over the argv indices `live`, natural
    reading (flags of unknown arity taken as boolean) first. A forward scan that stops at
    the first word: the common case looks at a token or two."""
    out: list[_Cand] = []
    seen: set[int] = set()
    n = len(live)
    stack: list[tuple[int, int, int]] = [(0, -1, -1)]
    while stack:
        k, f, v = stack.pop()
        if k >= n:
            k = n  # the end, however it was reached
        if k in seen:
            continue
        seen.add(k)
        if k == n:
            out.append((-1, f, v))
            continue
        kind = kind_of(spec, args[live[k]])
        if kind == _WORD:
            out.append((live[k], f, v))
        elif kind == _SKIP:
            stack.append((k + 1, f, v))
        elif kind == _TAKES:
            stack.append((k + 2, f, v))
        elif kind == _EITHER:
            if k + 1 < n:  # taking the next argv: explored after the natural reading
                stack.append((k + 2, *((f, v) if f >= 0 else (live[k], live[k + 1]))))
            stack.append((k + 1, f, v))
        elif n not in seen:  # _STOP
            seen.add(n)
            out.append((-1, f, v))
    if len(out) > MAX_ROUTES:
        raise _TooAmbiguous
    return out


_Route = tuple[tuple[int, ...], str]  # argv indices of the routed words, note


def _routes(spec: Spec, kind_of: _Kind, args: Sequence[str], depth: int,
            traverse: bool) -> list[_Route]:
    """Every command path (up to `depth` words) a router may take; natural first."""
    out: list[_Route] = []
    n = len(args)

    def walk(path: tuple[int, ...], note: str) -> None:
        if len(out) > MAX_ROUTES:
            raise _TooAmbiguous
        if len(path) == depth:
            out.append((path, note))
            return
        if traverse:
            live: Sequence[int] = range(path[-1] + 1 if path else 0, n)
        elif path:
            live = [k for k in range(n) if k not in path]
        else:
            live = range(n)
        for w, f, v in _candidates(spec, kind_of, args, live):
            why = note or (f"{f}:{v}" if f >= 0 else "")
            if w < 0:
                out.append((path, why))
            else:
                walk((*path, w), why)

    if depth == 1 and not traverse:  # the common case, without the recursion
        return [((w,) if w >= 0 else (), f"{f}:{v}" if f >= 0 else "")
                for w, f, v in _candidates(spec, kind_of, args, range(n))]
    walk((), "")
    return out


class _Cobra:
    def __init__(self, spec: Spec, args: Sequence[str], prog: str, trace: bool) -> None:
        self.spec, self.args, self.prog, self.trace = spec, args, prog, trace
        self.best: Violation | None = None
        self.states = 0
        self.memo: dict[tuple[tuple[str, ...], int, bool, bool, str], Violation | None] = {}
        self.natural: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None

    def take(self, v: Violation | None) -> None:
        if v is not None and (self.best is None or v.rank > self.best.rank):
            self.best = v

    def why(self, route_note: str, traverse: bool) -> str:
        parts = []
        if route_note:
            f, v = (int(x) for x in route_note.split(":"))
            parts.append(f"if `{self.args[f]}` takes `{self.args[v]}` as its value")
        if traverse:
            parts.append("as cobra routes with TraverseChildren (docker)")
        return "; ".join(parts)

    def flags(self, toks: tuple[str, ...], extra: int, quiet: bool, counts: bool, note: str,
              want_log: bool = False) -> Violation | None:
        key = (toks, extra, quiet, counts, note)
        if key in self.memo and not want_log:
            return self.memo[key]
        # one parse per command path: a budget for them all (that grows with the argv)
        if self.states > 2 * MAX_STATES + 2 * STATES_PER_ARG * len(self.args):
            raise _TooAmbiguous
        p = _Parser(self.spec, toks, self.prog, "pflag", extra=extra, quiet=quiet,
                    counts=counts, note=note)
        best, log, states = p.run(want_log)
        self.states += states
        self.memo[key] = best
        if want_log and self.natural is None:
            self.natural = ((), tuple(x[3:] for x in log if x.startswith("op:")),
                            tuple(x[5:] for x in log if x.startswith("flag:")))
        return best

    def run(self) -> Reading:
        n = len(self.args)
        try:
            self.find(n)
            if self.best is None or self.best.rank < self.spec.top:
                self.traverse(n)
        except _TooAmbiguous:
            self.take(Violation("tooAmbiguous", self.prog, f"the argv of {self.prog} has too "
                                "many possible subcommand readings to check (flags of unknown "
                                "arity before the subcommand); spell flags as --flag=value",
                                "block", "cobra"))
        command, operands, flags = self.natural or ((), (), ())
        return Reading("cobra", self.best, command, operands, flags, self.states)

    def find(self, n: int) -> None:
        spec, args = self.spec, self.args
        if spec.depth == 0:  # no command lists: the flags of the whole argv
            self.take(self.flags(tuple(args), 0, False, True, "", self.trace))
            return
        for r, (path, rnote) in enumerate(_routes(spec, _find_kind, args, spec.depth, False)):
            note = self.why(rnote, False) if rnote else ""
            ops = tuple(args[k] for k in path)
            self.take(command_violation(spec, ops, self.prog, note, "cobra"))
            # the final command parses what routing left; when the path is longer than the
            # program's command tree, the extra words stay (shorter paths, one word at least)
            for m in range(len(path), 0 if path else -1, -1):
                if m == 1:
                    toks = (*args[: path[0]], *args[path[0] + 1:])
                else:
                    toks = tuple(t for k, t in enumerate(args) if k not in path[:m])
                first = r == 0 and m == len(path)
                self.take(self.flags(toks, m, False, True, note, self.trace and first))
                if first and self.natural is not None and not self.natural[0]:
                    self.natural = (ops, (*ops, *self.natural[1]), self.natural[2])
            if self.best is not None and self.best.rank >= spec.top:
                return

    def traverse(self, n: int) -> None:
        """TraverseChildren. Without `--`, `""` or `-` in the argv, every path it takes is one
        Find takes too, and the flags its levels see are the flags Find's final command sees
        (or a level's parse fails, and nothing runs): then it has nothing to add."""
        spec, args = self.spec, self.args
        dashdash = "--" in args
        if not dashdash and (spec.depth == 0 or ("" not in args and "-" not in args)):
            return
        # `--` is taken as a value while routing but ends the flags of its own level: the
        # levels after it matter for the flags seen, whatever the rule's depth
        depth = max(spec.depth, 4 if dashdash else 0)
        for path, rnote in _routes(spec, _traverse_kind, args, depth, True):
            note = self.why(rnote, True)
            ops = tuple(args[k] for k in path)
            self.take(command_violation(spec, ops, self.prog, note, "cobra"))
            for m in range(len(path), 0 if path else -1, -1):
                # each level parses its own part; the bounds are Find's to check
                bounds = [-1, *path[:m], n]
                for s in range(len(bounds) - 1):
                    toks = tuple(args[bounds[s] + 1: bounds[s + 1]])
                    if toks:
                        self.take(self.flags(toks, 0, s < len(bounds) - 2, False, note))
            if self.best is not None and self.best.rank >= spec.top:
                return


def _read_cobra(spec: Spec, args: Sequence[str], prog: str, trace: bool) -> Reading:
    return _Cobra(spec, args, prog, trace).run()


_READERS = {"getopt": _read_getopt, "cobra": _read_cobra}


def _getopt_covers_cobra(spec: Spec, args: Sequence[str]) -> bool:
    """Would cobra's reading add nothing to getopt's? So when the rule has no command lists (no
    routing) and every flag token is read alike, or more strictly by getopt: a two-character
    short, or a long name the rule names exactly (no abbreviation, no `_`, `=value` on a value
    flag; getopt refuses it on a boolean). Bundles, `-n=prod`, unknown long flags and `--` (the
    TraverseChildren router) go to both models."""
    if spec.depth:
        return False
    for t in args:
        if t[:1] != "-" or t == "-":
            continue
        if t[1] != "-":
            if len(t) != 2:
                return False
        elif t == "--" or t[2:].partition("=")[0] not in spec.longs or "_" in t:
            return False
    return True


def parse(rule: SafeBin, args: Sequence[str], prog: str, *, trace: bool = False) -> ParseResult:
    """Read `args` (argv[1:]) under `rule`; the strictest violation of any reading, or None.

    The rule's `dialect` picks the model; without one every model reads the argv and the
    strictest violation wins. `prog` names the program in reasons. With `trace`, the natural
    reading (flags, operands) of each model is returned too (`glassbreak check` / `profile
    explain`)."""
    key = (id(rule), prog, tuple(args))
    if not trace:
        hit = _PARSE_CACHE.get(key)
        if hit is not None and hit[0] is rule:
            return hit[1]
    spec = spec_for(rule)
    if rule.dialect is not None:
        readings: tuple[Reading, ...] = (_READERS[rule.dialect](spec, key[2], prog, trace),)
    else:
        # a model's block is final when nothing in the rule can deny: the next need not run
        out: list[Reading] = []
        models = spec.models if trace or not _getopt_covers_cobra(spec, key[2]) \
            else ("getopt",)
        for m in models:
            out.append(_READERS[m](spec, key[2], prog, trace))
            v = out[-1].violation
            if v is not None and v.rank >= spec.top and not trace:
                break
        readings = tuple(out)
    best: Violation | None = None
    found = 0
    for r in readings:
        v = r.violation
        if v is not None:
            found += 1
            if best is None or v.rank > best.rank:
                best = v
    if best is not None and found == 1 and len(readings) > 1 and readings[0].violation is None:
        best = replace(best, reason=f"{best.reason} [as {DIALECT_NAMES[best.model]} reads it; "
                       "the rule names no dialect, so every argv model must pass]")
    first = readings[0]
    result = ParseResult(best, first.operands, first.flags, sum(r.states for r in readings),
                         readings)
    if not trace:
        if len(_PARSE_CACHE) > 4096:
            _PARSE_CACHE.clear()
        _PARSE_CACHE[key] = (rule, result)
    return result


_PARSE_CACHE: dict[tuple[int, str, tuple[str, ...]], tuple[SafeBin, ParseResult]] = {}
