"""A getopt_long-compatible model of argv, for safeBins rules. Pure: no I/O.

How a command line is read (the same for the pre-check and the exec gate):

- `--opt=value` and `--opt value` (a flag known to take a value consumes the next argv, even if
  it starts with '-', as getopt does). Boolean long flags also accept an inline `=value` (pflag).
- A long option may be abbreviated to any unique prefix of a KNOWN long option (every long flag
  the rule names: allowed, allowed-value, forbidden/denied, valueFlags). An exact name wins; a
  prefix of several known options is ambiguous and blocks (`safeBins.X.ambiguous:--f`).
- Short options bundle: `-rf` is `-r -f`; a value flag inside a bundle takes the rest of the
  bundle (`-n5`, `-nprod`, pflag's `-n=prod`) or, at the end of the bundle, the next argv.
- GNU permutation: options after operands still count. `--` ends the options; a lone `-` is an
  operand.
- Single-dash long options (Go's `flag`, getopt_long_only: `-force`, `-auto-approve`): a token
  `-word` is read BOTH as a short bundle and as the long option `--word`, and must pass as both.
  Entries written with one dash and several letters (`-auto-approve`) are long options.
- Allowlist: when the rule has allowedFlags or allowedValueFlags, any other flag blocks (fail
  closed). An entry `--dry-run=client` allows the flag only with that value.
- Subcommand: the first operand(s) after the global flags and their values; entries of
  restrictedCommands / deniedCommands / allowedCommands may have several words ("config set").

Unknown flags without an allowlist (the strict choice): an unknown flag may or may not take a
value, and that changes which token is the subcommand (`kubectl --foo delete pod`: is `delete`
the value of `--foo` or the subcommand?). The parser explores EVERY reading: each unknown flag
(long without `=value`, or a short letter) is tried as boolean and as value-taking, and the
command is refused if ANY reading breaks the rule. So a restricted command in any position that
could be the subcommand blocks, and a forbidden flag hidden as a possible value of an unknown
flag is still found. Readings are memoised; past MAX_STATES the argv is refused as too
ambiguous to check (fail closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sandbox.policy.profile import SafeBin

Takes = Literal["flag", "value", "maybe"]
MAX_STATES = 4096


@dataclass
class FlagSpec:
    display: str  # as the rule spells it, without "=value": "--force", "-n", "-auto-approve"
    takes: Takes | None = None  # None: unknown (only named as forbidden)
    allowed: bool = False
    values: set[str] | None = None  # allowed fixed values; None = any value
    forbidden: bool = False
    forbidden_values: set[str] = field(default_factory=set)

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


@dataclass(frozen=True)
class Violation:
    kind: str  # forbiddenFlags | allowlist | ambiguous | flagValue | missingValue |
    # restrictedCommands | deniedCommands | allowedCommands | minPositional | maxPositional |
    # tooAmbiguous
    subject: str
    reason: str
    verdict: Literal["block", "deny"]

    @property
    def rank(self) -> int:
        return 2 if self.verdict == "deny" else 1


@dataclass(frozen=True)
class ParseResult:
    violation: Violation | None
    operands: tuple[str, ...]  # of the natural reading (unknown flags taken as boolean)
    flags: tuple[str, ...]  # of the natural reading, as "--name" or "--name=value"
    readings: int  # parser states visited (1 per token when nothing is ambiguous)


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

    for e in rule.allowedValueFlags or []:
        fs, v = get(e)
        fs.set_takes("value")
        if v is None:
            fs.values, fs.allowed = None, True
        elif not fs.allowed or fs.values is not None:
            fs.values = (fs.values or set()) | {v}
            fs.allowed = True
    for e in rule.allowedFlags or []:
        fs, v = get(e)
        if v is not None:
            fs.set_takes("value")
            if not fs.allowed or fs.values is not None:
                fs.values = (fs.values or set()) | {v}
        else:
            fs.set_takes("flag")
            fs.values = None
        fs.allowed = True
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

    def cmds(entries: list[str] | None) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(e.split()) for e in entries or [] if e.split())

    denied, restricted = cmds(rule.deniedCommands), cmds(rule.restrictedCommands)
    allowed = None if rule.allowedCommands is None else cmds(rule.allowedCommands)
    depth = max((len(c) for c in (*denied, *restricted, *(allowed or ()))), default=0)
    if allowed is not None:
        depth = max(depth, 1)
    return Spec(
        longs=longs, prefixes={k: tuple(v) for k, v in prefixes.items()}, shorts=shorts,
        allowlist=rule.has_flag_allowlist, denied=denied, restricted=restricted,
        allowed_cmds=allowed, depth=depth, min_pos=rule.minPositional,
        max_pos=rule.maxPositional, on_violation=rule.onViolation,
    )


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


# A parser state: (token index, offset inside a short bundle or 0, first operands, operand
# count, note explaining a non-natural reading, natural flags/operands when tracing).
_State = tuple[int, int, tuple[str, ...], int, str, tuple[str, ...] | None]


class _Parser:
    def __init__(self, spec: Spec, args: Sequence[str], prog: str) -> None:
        self.spec, self.args, self.prog = spec, args, prog
        self.count_ops = spec.min_pos is not None or spec.max_pos is not None
        self.best: Violation | None = None
        self.natural: tuple[str, ...] | None = None
        self.stack: list[_State] = []
        self.seen: set[tuple[int, int, tuple[str, ...], int]] = set()

    # -- outcomes ------------------------------------------------------------------------------
    def fail(self, kind: str, subject: str, reason: str, note: str,
             verdict: Literal["block", "deny"] | None = None) -> None:
        if note:
            reason = f"{reason} ({note})"
        v = Violation(kind, subject, reason, verdict or self.spec.on_violation)
        if self.best is None or v.rank > self.best.rank:
            self.best = v

    def push(self, i: int, j: int, ops: tuple[str, ...], count: int, note: str,
             log: tuple[str, ...] | None, item: str | None = None) -> None:
        if log is not None and item is not None:
            log = (*log, item)
        self.stack.append((i, j, ops, count, note, log))

    def operand(self, i: int, ops: tuple[str, ...], count: int, note: str,
                log: tuple[str, ...] | None) -> None:
        tok = self.args[i]
        if len(ops) < self.spec.depth:
            ops = (*ops, tok)
        self.push(i + 1, 0, ops, count + 1 if self.count_ops else 0, note, log, "op:" + tok)

    # -- the walk ------------------------------------------------------------------------------
    def run(self, want_log: bool) -> ParseResult:
        self.push(0, 0, (), 0, "", () if want_log else None)
        while self.stack:
            i, j, ops, count, note, log = self.stack.pop()
            key = (i, j, ops, count)
            if key in self.seen:
                continue
            self.seen.add(key)
            if len(self.seen) > MAX_STATES:
                self.fail("tooAmbiguous", self.prog,
                          f"the argv of {self.prog} has too many possible readings to check "
                          "(unknown flags that may take values); spell flags as --flag=value",
                          "", "block")
                break
            if self.best is not None and self.best.verdict == "deny":
                break
            self.step(i, j, ops, count, note, log)
        flags = tuple(x[5:] for x in self.natural or () if x.startswith("flag:"))
        operands = tuple(x[3:] for x in self.natural or () if x.startswith("op:"))
        return ParseResult(self.best, operands, flags, len(self.seen))

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
            rest = tuple(args[i + 1:])
            ops = (*ops, *rest)[: self.spec.depth]
            count = count + len(rest) if self.count_ops else 0
            if log is not None:
                log = (*log, *("op:" + t for t in rest))
            self.terminal(ops, count, note, log)
        elif tok.startswith("--"):
            self.long(i, tok[2:], tok, ops, count, note, log, single_dash=False)
        elif tok.startswith("-") and tok != "-":
            if len(tok) > 2:
                self.long(i, tok[1:], tok, ops, count, note, log, single_dash=True)
                declared = self.spec.longs.get(tok[1:].partition("=")[0])
                if declared is not None and not declared.display.startswith("--"):
                    return  # a declared single-dash long option (-auto-approve): not a bundle
            self.short(i, 1, ops, count, note, log)
        else:
            self.operand(i, ops, count, note, log)

    def terminal(self, ops: tuple[str, ...], count: int, note: str,
                 log: tuple[str, ...] | None) -> None:
        if log is not None and self.natural is None:
            self.natural = log
        spec, prog = self.spec, self.prog
        for cmd in spec.denied:
            if ops[: len(cmd)] == cmd:
                c = " ".join(cmd)
                self.fail("deniedCommands", c, f"`{c}` is a denied subcommand of {prog} "
                          "(never allowed)", note, "deny")
                return
        for cmd in spec.restricted:
            if ops[: len(cmd)] == cmd:
                c = " ".join(cmd)
                self.fail("restrictedCommands", c, f"`{c}` is a restricted subcommand of "
                          f"{prog} (it needs an escalation)", note, "block")
                return
        if spec.allowed_cmds is not None and not any(
                ops[: len(c)] == c for c in spec.allowed_cmds):
            got = " ".join(ops) or "(none)"
            names = ", ".join(" ".join(c) for c in spec.allowed_cmds)
            self.fail("allowedCommands", ops[0] if ops else "(none)",
                      f"subcommand `{got}` is not among the allowed subcommands of {prog} "
                      f"({names})", note, "block")
            return
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
        if fs.allowed and fs.values is not None and value not in fs.values:
            ok = " or ".join(f"{fs.display}={v}" for v in sorted(fs.values))
            got = "no value" if value is None else f"`{value}`"
            self.fail("flagValue", fs.display, f"`{fs.display}` is allowed only as {ok}, got "
                      f"{got}", note)
            return False
        return True

    def long(self, i: int, body: str, tok: str, ops: tuple[str, ...], count: int, note: str,
             log: tuple[str, ...] | None, *, single_dash: bool) -> None:
        spec, args = self.spec, self.args
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
            if single_dash:
                return  # the short-bundle reading covers it
            if spec.allowlist:
                self.fail("allowlist", shown, f"`{shown}` is not on the flag allowlist of "
                          f"{self.prog}", note)
                return
            self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
            if not eq and i + 1 < len(args):
                self.stack.insert(len(self.stack) - 1, (
                    i + 2, 0, ops, count,
                    note or f"if the unknown flag `{shown}` takes the value `{args[i + 1]}`",
                    None))
            return
        fs = spec.longs[cands[0]]
        if fs.forbidden:
            if shown == fs.display:
                what = f"`{shown}` is a forbidden flag of {self.prog}"
            else:
                how = "a spelling" if exact else "an abbreviation"
                what = f"`{shown}` is {how} of the forbidden flag `{fs.display}`"
            self.fail("forbiddenFlags", fs.display, what, note)
            return
        if eq:
            if self.check_value(fs, shown, inline, note):
                self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
            return
        takes = fs.takes or "maybe"
        has_next = i + 1 < len(args)
        if takes in ("flag", "maybe") and self.check_value(fs, shown, None, note):
            self.push(i + 1, 0, ops, count, note, log, "flag:" + tok)
        if takes in ("value", "maybe"):
            if not has_next:
                if takes == "value":
                    self.fail("missingValue", fs.display, f"`{shown}` needs a value", note)
                return
            value = args[i + 1]
            alt = note or (f"if `{shown}` takes the value `{value}`" if takes == "maybe" else "")
            if self.check_value(fs, shown, value, alt):
                self.push(i + 2, 0, ops, count, alt, log, f"flag:{tok}={value}")

    def short(self, i: int, j: int, ops: tuple[str, ...], count: int, note: str,
              log: tuple[str, ...] | None) -> None:
        spec, args = self.spec, self.args
        tok = args[i]
        c = tok[j]
        rest = tok[j + 1:]
        fs = spec.shorts.get(c)
        in_bundle = f" (in `{tok}`)" if len(tok) > 2 else ""
        nxt_i, nxt_j = (i, j + 1) if rest else (i + 1, 0)
        if fs is None:
            if spec.allowlist:
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
        if takes in ("flag", "maybe") and self.check_value(fs, "-" + c, None, note):
            self.push(nxt_i, nxt_j, ops, count, note, log, "flag:-" + c)
        if takes in ("value", "maybe"):
            if rest:
                value = rest[1:] if rest.startswith("=") else rest
                after = i + 1
            elif i + 1 < len(args):
                value, after = args[i + 1], i + 2
            else:
                if takes == "value":
                    self.fail("missingValue", fs.display, f"`-{c}` needs a value", note)
                return
            alt = note or (f"if `-{c}` takes the value `{value}`" if takes == "maybe" else "")
            if self.check_value(fs, "-" + c, value, alt):
                if takes == "maybe":  # explored after the boolean reading
                    self.stack.insert(max(len(self.stack) - 1, 0),
                                      (after, 0, ops, count, alt, None))
                else:
                    self.push(after, 0, ops, count, alt, log, f"flag:-{c}={value}")


def parse(rule: SafeBin, args: Sequence[str], prog: str, *, trace: bool = False) -> ParseResult:
    """Read `args` (argv[1:]) under `rule`; the strictest violation of any reading, or None.

    `prog` names the program in reasons. With `trace`, the natural reading's flags and operands
    are returned too (for `glassbreak check` / `profile explain`)."""
    if trace:
        return _Parser(spec_for(rule), args, prog).run(True)
    key = (id(rule), prog, tuple(args))
    hit = _PARSE_CACHE.get(key)
    if hit is not None and hit[0] is rule:
        return hit[1]
    result = _Parser(spec_for(rule), args, prog).run(False)
    if len(_PARSE_CACHE) > 4096:
        _PARSE_CACHE.clear()
    _PARSE_CACHE[key] = (rule, result)
    return result


_PARSE_CACHE: dict[tuple[int, str, tuple[str, ...]], tuple[SafeBin, ParseResult]] = {}
