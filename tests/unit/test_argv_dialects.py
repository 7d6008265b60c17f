"""Parser dialects (issue 10): cobra/pflag and getopt, each against a small reference parser.

The references below are written from the parsers' behaviour (spf13/cobra's Command.Find /
stripFlags / argsMinusFirstX / Traverse, spf13/pflag's FlagSet.Parse, GNU getopt_long), for a
concrete program: a command tree with persistent and local flags, or an option table. They are
deliberately simpler than sandbox.policy.argv, which does not know the program's tree and has to
explore every reading instead. The properties:
- soundness: whenever the reference program would run and route to a restricted subcommand or
  set a forbidden (or not allowlisted) flag, the production model blocks;
- agreement: the production model's natural reading sees the same subcommand, flags and
  operands as the reference, and what the reference runs cleanly the production allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.policy.argv import MAX_STATES, parse
from sandbox.policy.check import check_argv
from sandbox.policy.decision import Verdict
from sandbox.policy.loader import load_profile
from sandbox.policy.profile import SafeBin

# -- the issue's spellings, with the shipped profile -------------------------------------------
ISSUE_SPELLINGS = [
    ["kubectl", "-An", "delete", "prod", "--all-namespaces=false", "pod", "x"],
    ["kubectl", "", "delete", "pod", "x"],
]


@pytest.mark.parametrize("argv", ISSUE_SPELLINGS, ids=["bundle-An-and-false", "empty-arg"])
def test_issue_spellings_route_to_delete_with_the_shipped_profile(argv: list[str]) -> None:
    """`kubectl -An delete prod --all-namespaces=false pod x` and `kubectl "" delete pod x`
    were allowed by k8s-readonly (getopt read `-n delete` and the subcommand `prod`)."""
    d = check_argv(load_profile("k8s-readonly"), argv, lenient=True)
    assert d.verdict is Verdict.BLOCK, d
    assert d.rule_id == "safeBins.kubectl.restrictedCommands:delete"


def test_issue_spelling_reads_like_kubectl() -> None:
    """cobra routes to delete; pflag then reads -A, -n prod, and --all-namespaces=false."""
    rule = load_profile("k8s-readonly").safeBins["kubectl"]
    assert rule.dialect == "cobra"
    relaxed = rule.model_copy(update={"restrictedCommands": ["patch"]})
    r = parse(relaxed, ISSUE_SPELLINGS[0][1:], "kubectl", trace=True)
    assert r.violation is None
    (cobra,) = r.models
    assert cobra.command == ("delete",)
    assert cobra.flags == ("-A", "-n=prod", "--all-namespaces=false")
    assert cobra.operands == ("delete", "pod", "x")
    r = parse(relaxed, ISSUE_SPELLINGS[1][1:], "kubectl", trace=True)
    assert r.models[0].command == ("delete",) and r.models[0].operands == ("delete", "", "pod",
                                                                            "x")


def test_issue_spellings_also_blocked_without_a_dialect() -> None:
    """A rule that names no dialect is read by every model: cobra's reading blocks, and the
    reason says which model objected (getopt alone allows it)."""
    rule = load_profile("k8s-readonly").safeBins["kubectl"]
    unknown = rule.model_copy(update={"dialect": None})
    getopt = rule.model_copy(update={"dialect": "getopt"})
    for argv in (ISSUE_SPELLINGS[1], ["kubectl", "-An", "delete", "prod", "pod", "x"]):
        assert parse(getopt, argv[1:], "kubectl").violation is None, argv  # -n delete, prod
        v = parse(unknown, argv[1:], "kubectl").violation
        assert v is not None and (v.kind, v.subject, v.model) == ("restrictedCommands", "delete",
                                                                   "cobra")
        assert "cobra/pflag" in v.reason and "every argv model" in v.reason
    # getopt itself refuses `--all-namespaces=false` now (a value on a flag that takes none)
    v = parse(getopt, ISSUE_SPELLINGS[0][1:], "kubectl").violation
    assert v is not None and (v.kind, v.subject) == ("flagValue", "--all-namespaces")
    assert parse(unknown, ISSUE_SPELLINGS[0][1:], "kubectl").violation is not None


# -- cobra: each behaviour of the issue's list ---------------------------------------------------
KUBECTL = SafeBin(
    dialect="cobra",
    allowedValueFlags=["-n", "--namespace", "-o", "--output", "--dry-run=client"],
    allowedFlags=["-A", "--all-namespaces", "-w", "--watch"],
    forbiddenFlags=["--force", "--grace-period"],
    restrictedCommands=["delete", "patch", "apply", "edit", "drain", "exec", "rollout restart"],
)
LOOSE = SafeBin(dialect="cobra", forbiddenFlags=["--force", "--grace-period"],
                restrictedCommands=["delete", "config set"], valueFlags=["-n", "--namespace"])


def verdict(rule: SafeBin, argv: list[str]) -> tuple[str, str] | None:
    v = parse(rule, argv, "kubectl").violation
    return None if v is None else (v.kind, v.subject)


@pytest.mark.parametrize("argv", [
    ["get", "pods", "--watch=true"], ["get", "pods", "--watch=false"], ["get", "-A=false", "x"],
    ["get", "pods", "--all-namespaces=true", "-w"],  # bool flags take true/false inline
    ["get", "pods", "-Aw"], ["get", "-wA", "pods"], ["-An", "prod", "get", "pods"],  # bundles
    ["-n=prod", "get", "pods"], ["-nprod", "get", "pods"], ["get", "pods", "-n=prod"],
    ["-n", "prod", "get"], ["--namespace=prod", "get"], ["--namespace", "delete", "get"],
    ["", "get", "pods"], ["get", "", "pods"], ["get", "-"],  # empty arguments, stdin
    ["get", "--", "--force", "delete"], ["--", "delete", "pod"],  # `--` ends flags and routing
    ["get", "pods", "-o", "json", "-n", "prod"],  # flags after the subcommand
    ["get", "pods", "--dry-run=client"],
    ["get", "pods", "-o"],  # pflag refuses it (nothing runs), or any default value is allowed
])
def test_cobra_allowed(argv: list[str]) -> None:
    assert verdict(KUBECTL, argv) is None


@pytest.mark.parametrize("argv,expected", [
    (["-An", "delete", "prod", "--all-namespaces=false", "pod", "x"],
     ("restrictedCommands", "delete")),  # a bundle longer than two takes no value in routing
    (["", "delete", "pod", "x"], ("restrictedCommands", "delete")),  # "" is skipped
    (["-", "delete", "pod"], ("restrictedCommands", "delete")),  # so is a lone "-"
    (["-n=prod", "delete", "x"], ("restrictedCommands", "delete")),
    (["-nprod", "delete", "x"], ("restrictedCommands", "delete")),
    (["-A", "x", "delete", "pod"], ("restrictedCommands", "delete")),  # -A is local: at the
    # root it is unknown and takes `x`
    (["--watch", "x", "delete"], ("restrictedCommands", "delete")),
    (["-w=false", "delete"], ("restrictedCommands", "delete")),
    (["delete", "-n", "prod", "pod"], ("restrictedCommands", "delete")),
    (["rollout", "-n", "prod", "restart", "deploy/x"], ("restrictedCommands", "rollout restart")),
    (["-n", "prod", "rollout", "-A", "restart"], ("restrictedCommands", "rollout restart")),
    (["--", "x", "delete", "pod"], ("restrictedCommands", "delete")),  # TraverseChildren: `--`
    # takes `x` as its value while routing (docker)
    (["get", "pods", "--force"], ("forbiddenFlags", "--force")),
    (["get", "pods", "--force=false"], ("forbiddenFlags", "--force")),
    (["get", "pods", "--grace_period=0"], ("forbiddenFlags", "--grace-period")),  # _ is -
    (["get", "pods", "--forc"], ("allowlist", "--forc")),  # pflag: no abbreviations
    (["get", "pods", "--nam", "prod"], ("allowlist", "--nam")),
    (["get", "pods", "--watch=yes"], ("flagValue", "--watch")),
    (["get", "pods", "-A=1x"], ("flagValue", "-A")),
    (["get", "pods", "--dry-run"], ("missingValue", "--dry-run")),  # NoOptDefVal: a default
    (["get", "pods", "--dry-run=server"], ("flagValue", "--dry-run")),
    (["get", "pods", "-x"], ("allowlist", "-x")),
    (["get", "pods", "-Ax"], ("allowlist", "-x")),
])
def test_cobra_blocked(argv: list[str], expected: tuple[str, str]) -> None:
    assert verdict(KUBECTL, argv) == expected


@pytest.mark.parametrize("argv,expected", [
    (["--foo", "delete", "x"], ("restrictedCommands", "delete")),
    (["--foo", "x", "delete"], ("restrictedCommands", "delete")),  # --foo may take x
    (["-z", "x", "delete"], ("restrictedCommands", "delete")),
    (["--foo", "x", "config", "--bar", "y", "set"], ("restrictedCommands", "config set")),
    (["config", "-z", "view", "set"], ("restrictedCommands", "config set")),
    (["--foo", "--", "--force"], ("forbiddenFlags", "--force")),  # --foo may take the `--`
    (["-zforce"], None), (["-z", "--force"], ("forbiddenFlags", "--force")),
    (["get", "--foo=1", "delete"], None), (["get", "x", "--foo", "delete"], None),
    (["-zy", "x", "delete"], None),  # a bundle: takes no value while routing, x is the command
    (["-n", "delete", "get"], None), (["--namespace=delete", "get"], None),
])
def test_cobra_unknown_flags_every_reading(argv: list[str],
                                           expected: tuple[str, str] | None) -> None:
    assert verdict(LOOSE, argv) == expected


def test_cobra_non_natural_reading_is_explained() -> None:
    v = parse(LOOSE, ["--foo", "x", "delete"], "kubectl").violation
    assert v is not None and "if `--foo` takes `x` as its value" in v.reason
    v = parse(LOOSE, ["--", "x", "delete"], "kubectl").violation
    assert v is not None and "TraverseChildren" in v.reason


def test_cobra_single_dash_words_are_bundles() -> None:
    rule = SafeBin(dialect="cobra", allowedFlags=["-a", "-p"], forbiddenFlags=["-r"])
    assert verdict(rule, ["-ap"]) is None
    assert verdict(rule, ["-apr"]) == ("forbiddenFlags", "-r")
    assert verdict(rule, ["-pa=true"]) is None


def test_cobra_too_many_routes_fails_closed() -> None:
    """Bounded work per argv (the exec gate judges every exec): too many command paths, or too
    many parser states over all of them, is refused (fail closed)."""
    argv = [t for i in range(300) for t in (f"--u{i}", f"w{i}")]
    v = parse(LOOSE, argv, "kubectl").violation
    assert v is not None and v.kind == "tooAmbiguous"
    rule = SafeBin(dialect="cobra", forbiddenFlags=["--force"], restrictedCommands=["delete"])
    argv = [t for i in range(150) for t in ("-z", f"w{i}")]  # 150 paths, one parse each
    r = parse(rule, argv, "kubectl")
    assert r.violation is not None and r.violation.kind == "tooAmbiguous"
    assert r.readings < 3 * MAX_STATES
    ok = [t for i in range(20) for t in ("-z", f"w{i}")]
    assert parse(rule, ok, "kubectl").violation is None


def test_kubectl_profiles_examples_cover_cobra() -> None:
    for name in ("k8s-readonly", "k8s-ops-escalated"):
        p = load_profile(name)
        assert p.safeBins["kubectl"].dialect == "cobra"
    ex = load_profile("k8s-readonly").examples
    assert 'kubectl "" delete pod x' in ex.block
    assert "kubectl -An delete prod --all-namespaces=false pod x" in ex.block


def test_dialect_merge_is_never_looser() -> None:
    from sandbox.policy.merge import _merge_safebin

    cobra = SafeBin(dialect="cobra", restrictedCommands=["delete"])
    none = SafeBin(restrictedCommands=["delete"])
    getopt = SafeBin(dialect="getopt")
    assert _merge_safebin(cobra, SafeBin(forbiddenFlags=["--force"]), False).dialect == "cobra"
    assert _merge_safebin(cobra, getopt, False).dialect is None  # every model
    assert _merge_safebin(none, SafeBin(dialect="cobra"), False).dialect is None
    assert _merge_safebin(none, SafeBin(dialect="cobra"), True).dialect == "cobra"  # relax


# -- getopt: issue 10's two changes, and OpenClaw's vectors ------------------------------------
WC = SafeBin(allowedFlags=["-l", "--lines", "-w", "--words", "-c", "--bytes"], maxPositional=0)
GREP = SafeBin(allowedValueFlags=["-e", "--regexp"], allowedFlags=["-i", "--color",
               "--color=auto", "--color=never"], maxPositional=0)


@pytest.mark.parametrize("dialect", ["getopt", None])
def test_openclaw_wc_lines_takes_no_value(dialect: str | None) -> None:
    rule = WC.model_copy(update={"dialect": dialect})
    assert verdict(rule, ["--lines"]) is None and verdict(rule, ["-lw"]) is None
    assert verdict(rule, ["--lines=5"]) == ("flagValue", "--lines")
    assert verdict(rule, ["--li=5"]) == ("flagValue", "--lines")
    v = parse(rule, ["--lines=5"], "wc").violation
    assert v is not None and v.reason == "`--lines` takes no value, got `--lines=5`"


@pytest.mark.parametrize("dialect", ["getopt", "cobra", None])
def test_openclaw_grep_lone_dash_is_stdin(dialect: str | None) -> None:
    rule = GREP.model_copy(update={"dialect": dialect})
    assert verdict(rule, ["-e", "needle", "--", "-"]) is None
    assert verdict(rule, ["-e", "needle", "-"]) is None
    assert verdict(rule, ["-e", "needle", "--", "../secret.txt"]) == ("maxPositional", "1")
    assert verdict(rule, ["-e", "needle", ".env"]) == ("maxPositional", "1")


@pytest.mark.parametrize("dialect", ["getopt", "cobra", None])
def test_optional_value_flag_only_its_values(dialect: str | None) -> None:
    """`--color[=WHEN]`: listed bare and with values, it takes only those, and only inline."""
    rule = GREP.model_copy(update={"dialect": dialect})
    assert verdict(rule, ["-e", "x", "--color"]) is None
    assert verdict(rule, ["-e", "x", "--color=auto"]) is None
    assert verdict(rule, ["-e", "x", "--color=always"]) == ("flagValue", "--color")
    assert verdict(rule, ["--color", "-e", "x"]) is None  # never takes the next argv


def test_getopt_short_value_keeps_its_equals_sign() -> None:
    rule = SafeBin(dialect="getopt", allowedValueFlags=["-o=json"])
    assert verdict(rule, ["-ojson"]) is None and verdict(rule, ["-o", "json"]) is None
    assert verdict(rule, ["-o=json"]) == ("flagValue", "-o")  # getopt's value is `=json`
    assert verdict(rule.model_copy(update={"dialect": "cobra"}), ["-o=json"]) is None


def test_getopt_lone_dash_is_not_a_subcommand() -> None:
    rule = SafeBin(dialect="getopt", restrictedCommands=["delete"])
    assert verdict(rule, ["-", "delete"]) == ("restrictedCommands", "delete")
    assert verdict(rule, ["--", "-", "delete"]) == ("restrictedCommands", "delete")


# == reference models ===========================================================================
# -- cobra + pflag -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    name: str
    short: str | None
    bool: bool


@dataclass
class Cmd:
    name: str
    local: list[Flag] = field(default_factory=list)
    persistent: list[Flag] = field(default_factory=list)
    children: dict[str, Cmd] = field(default_factory=dict)
    parent: Cmd | None = None

    def add(self, *cs: Cmd) -> Cmd:
        for c in cs:
            c.parent = self
            self.children[c.name] = c
        return self

    def flags(self) -> list[Flag]:
        """What c.Flags() holds after mergePersistentFlags: own flags and every ancestor's
        persistent ones."""
        out, c = list(self.local) + list(self.persistent), self.parent
        while c is not None:
            out += c.persistent
            c = c.parent
        return out


class PflagError(Exception):
    pass


def _lookup(flags: list[Flag], *, name: str | None = None, short: str | None = None) -> Flag | None:
    for f in flags:
        if (name is not None and f.name == name.replace("_", "-")) or \
                (short is not None and f.short == short):
            return f
    return None


def ref_pflag(args: list[str], flags: list[Flag]) -> tuple[list[tuple[str, str]], list[str]]:
    """pflag's Parse (interspersed): [(flag name, "typed spelling")], positional args."""
    seen: list[tuple[str, str]] = []
    pos: list[str] = []
    i = 0
    while i < len(args):
        s = args[i]
        i += 1
        if s == "" or s == "-" or not s.startswith("-"):
            pos.append(s)
        elif s == "--":
            pos += args[i:]
            break
        elif s.startswith("--"):
            name, eq, val = s[2:].partition("=")
            if not name or name[0] in "-=":
                raise PflagError(s)
            f = _lookup(flags, name=name)
            if f is None:
                raise PflagError(f"unknown flag {s}")
            if eq:
                if f.bool and val not in ("true", "false", "1", "0", "t", "f", "True", "False",
                                          "TRUE", "FALSE", "T", "F"):
                    raise PflagError(f"bad bool {s}")
                seen.append((f.name, s))
            elif f.bool:
                seen.append((f.name, s))
            elif i < len(args):
                seen.append((f.name, f"{s}={args[i]}"))
                i += 1
            else:
                raise PflagError(f"{s} needs a value")
        else:
            sh = s[1:]
            while sh:
                c = sh[0]
                f = _lookup(flags, short=c)
                if f is None:
                    raise PflagError(f"unknown shorthand {c} in {s}")
                if len(sh) > 2 and sh[1] == "=":
                    if f.bool and sh[2:] not in ("true", "false", "1", "0", "t", "f", "True",
                                                 "False", "TRUE", "FALSE", "T", "F"):
                        raise PflagError(f"bad bool {s}")
                    seen.append((f.name, f"-{c}={sh[2:]}"))
                    sh = ""
                elif f.bool:
                    seen.append((f.name, f"-{c}"))
                    sh = sh[1:]
                elif len(sh) > 1:
                    seen.append((f.name, f"-{c}={sh[1:]}"))
                    sh = ""
                elif i < len(args):
                    seen.append((f.name, f"-{c}={args[i]}"))
                    i += 1
                    sh = ""
                else:
                    raise PflagError(f"-{c} needs a value")
    return seen, pos


def _takes_next(tok: str, flags: list[Flag]) -> bool:
    """While routing: does this flag token take the next argv (not a known boolean)?"""
    if tok.startswith("--"):
        f = _lookup(flags, name=tok[2:])
    else:
        f = _lookup(flags, short=tok[1])
    return f is None or not f.bool


def ref_strip(args: list[str], cmd: Cmd) -> list[tuple[int, str]]:
    """stripFlags: the (index, word) of every argv that may be a subcommand, in order."""
    flags, out, i = cmd.flags(), [], 0
    while i < len(args):
        s = args[i]
        i += 1
        if s == "--":
            break
        if s.startswith("--") and "=" not in s or (len(s) == 2 and s[0] == "-" and s != "--"
                                                   and "=" not in s):
            if _takes_next(s, flags):
                i += 1
        elif s and not s.startswith("-"):
            out.append((i - 1, s))
    return out


@dataclass
class Run:
    path: tuple[str, ...]
    flags: list[tuple[str, str]]
    positionals: list[str]


def ref_find(root: Cmd, args: list[str]) -> Run:
    """Command.Find, then the found command's flag parsing. Raises PflagError when the
    program would refuse the command line (unknown command at the root, flag errors)."""
    cmd, cur, path = root, list(args), []
    while True:
        words = ref_strip(cur, cmd)
        if not words or words[0][1] not in cmd.children:
            break
        k, w = words[0]
        del cur[k]  # argsMinusFirstX removes that occurrence
        cmd = cmd.children[w]
        path.append(w)
    if cmd is root and root.children and ref_strip(cur, cmd):
        raise PflagError("unknown command")  # legacyArgs
    seen, pos = ref_pflag(cur, cmd.flags())
    return Run(tuple(path), seen, pos)


def ref_traverse(root: Cmd, args: list[str]) -> Run:
    """Command.Traverse (TraverseChildren): each level parses the flags before its
    subcommand; the last level parses the rest."""
    cmd, start, path, seen_all = root, 0, [], []
    while True:
        flags, in_flag, j, found = cmd.flags(), False, start, None
        while j < len(args):
            a = args[j]
            if a.startswith("--") and "=" not in a:
                in_flag = a == "--" or _takes_next(a, flags)
            elif a.startswith("-") and "=" not in a and len(a) == 2 and _takes_next(a, flags):
                in_flag = True
            elif in_flag:
                in_flag = False
            elif (len(a) >= 3 and a.startswith("--")) or (len(a) >= 2 and a[0] == "-"
                                                           and a[1] != "-"):
                pass
            else:
                found = j
                break
            j += 1
        if found is None or args[found] not in cmd.children:
            seen, pos = ref_pflag(args[start:], flags)
            return Run(tuple(path), seen_all + seen, pos)
        seen, _ = ref_pflag(args[start:found], flags)
        seen_all += seen
        cmd = cmd.children[args[found]]
        path.append(args[found])
        start = found + 1


N = Flag("namespace", "n", False)
V = Flag("verbosity", "v", False)  # a persistent flag no rule below names
DEBUG = Flag("debug", None, True)
A = Flag("all-namespaces", "A", True)
OUT = Flag("output", "o", False)
W = Flag("watch", "w", True)
FORCE = Flag("force", None, True)
GRACE = Flag("grace-period", None, False)
INTERACTIVE = Flag("interactive", "i", True)  # local to delete, no rule names it
RAW = Flag("raw", None, True)


def tree(global_flags: bool) -> Cmd:
    """kubectl-like: persistent -n/-v/--debug on the root; -A, -o, -w, --force, ... local to
    the subcommands (or, with global_flags, everything persistent on the root)."""
    local = {"get": [A, OUT, W], "delete": [A, OUT, FORCE, GRACE, INTERACTIVE],
             "view": [RAW], "set": []}
    if global_flags:
        every = [N, V, DEBUG, A, OUT, W, FORCE, GRACE, INTERACTIVE, RAW]
        local = {k: [] for k in local}
    else:
        every = [N, V, DEBUG]
    root = Cmd("kubectl", persistent=every)
    root.add(Cmd("get", local["get"]), Cmd("delete", local["delete"]),
             Cmd("config").add(Cmd("view", local["view"]), Cmd("set", local["set"])))
    return root


TREE, TREE_GLOBAL = tree(False), tree(True)
ALLOWED = {"namespace", "output", "all-namespaces", "watch", "debug"}
FORBIDDEN = {"force", "grace-period"}
RESTRICTED = [("delete",), ("config", "set")]
STRICT = SafeBin(dialect="cobra", allowedValueFlags=["-n", "--namespace", "-o", "--output"],
                 allowedFlags=["-A", "--all-namespaces", "-w", "--watch", "--debug"],
                 forbiddenFlags=["--force", "--grace-period"],
                 restrictedCommands=["delete", "config set"])
LOOSE2 = SafeBin(dialect="cobra", forbiddenFlags=["--force", "--grace-period"],
                 restrictedCommands=["delete", "config set"],
                 valueFlags=["-n", "--namespace", "-o", "--output"])


def ref_violates(run: Run, allowlist: bool) -> bool:
    if any(run.path[: len(r)] == r for r in RESTRICTED):
        return True
    names = {n for n, _ in run.flags}
    return bool(names & FORBIDDEN) or (allowlist and not names <= ALLOWED)


VALUES = st.sampled_from(["prod", "delete", "get", "set", "config", "", "-", "--force", "x=y"])
WORDS = st.sampled_from(["get", "delete", "config", "view", "set", "pods", "prod", "x"])


@st.composite
def cobra_unit(draw: st.DrawFn) -> list[str]:
    v = draw(VALUES)
    attached = draw(st.sampled_from(["prod", "x", "delete", "json"]))
    return draw(st.sampled_from([
        [draw(WORDS)], [draw(WORDS)], [draw(WORDS)], [""], ["-"], ["--"],
        ["-n", v], [f"-n{attached}"], [f"-n={v}"], ["--namespace", v], [f"--namespace={v}"],
        ["-o", v], [f"--output={v}"], ["-v", v], [f"--verbosity={v}"],
        ["-A"], ["-A=false"], ["--all-namespaces"], ["--all-namespaces=false"],
        ["--all_namespaces"],
        ["-w"], ["--watch=true"], ["-Aw"], ["-wA"], ["-An", v], [f"-An{attached}"], ["-Ao", v],
        ["--debug"], ["--debug=false"], ["--force"], ["--force=false"], ["--grace-period", v],
        ["--grace_period=0"], ["-i"], ["-Ai"], ["--raw"], ["--bogus"], ["--bogus", v], ["-z"],
    ]))


def flat(units: list[list[str]]) -> list[str]:
    return [t for u in units for t in u]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cobra_unit(), max_size=8), st.sampled_from(["find", "traverse"]),
       st.sampled_from(["strict", "loose"]))
def test_cobra_soundness_against_the_reference(units: list[list[str]], router: str,
                                               which: str) -> None:
    """Whatever the reference kubectl would run that routes to a restricted subcommand, or sets
    a forbidden or (strict) a non-allowlisted flag, the production model blocks. The reference
    has local flags (-A is unknown at the root) and flags no rule names (-v, -i, --raw)."""
    argv = flat(units)
    try:
        run = (ref_find if router == "find" else ref_traverse)(TREE, argv)
    except PflagError:
        return  # the program refuses it: nothing runs
    rule = STRICT if which == "strict" else LOOSE2
    if ref_violates(run, which == "strict"):
        assert parse(rule, argv, "kubectl").violation is not None, (argv, run)


# the agreement properties use a depth-1 rule over a flat tree whose flags are all persistent:
# there the production model's natural reading (flags of unknown arity taken as boolean) is the
# program's reading
STRICT1 = STRICT.model_copy(update={"restrictedCommands": ["delete"]})
TREE1 = Cmd("kubectl", persistent=[N, DEBUG, A, OUT, W, FORCE, GRACE]).add(Cmd("get"),
                                                                          Cmd("delete"))


@st.composite
def known_unit(draw: st.DrawFn) -> list[str]:
    """A unit whose every flag STRICT1 names (so the natural reading is the program's)."""
    v = draw(VALUES)
    attached = draw(st.sampled_from(["prod", "x", "delete", "json"]))
    return draw(st.sampled_from([
        [draw(WORDS)], [""], ["-"], ["--"],
        ["-n", v], [f"-n{attached}"], [f"-n={v}"], ["--namespace", v], [f"--namespace={v}"],
        ["-o", v], [f"-o={v}"], [f"--output={v}"], ["-A"], ["-A=false"], ["--all-namespaces"],
        ["--all-namespaces=false"], ["-w"], ["--watch=true"], ["-Aw"], ["-wA"], ["-An", v],
        [f"-An{attached}"], ["-Ao", v], ["--debug"], ["--debug=false"],
    ]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(known_unit(), max_size=8))
def test_cobra_natural_reading_agrees_with_the_reference(units: list[list[str]]) -> None:
    """Routing and flags: the subcommand the reference routes to, the flags it sets (as typed)
    and its positional args are the production model's natural reading."""
    argv = flat(units)
    try:
        run = ref_find(TREE1, argv)
    except PflagError:
        return
    if ref_violates(run, True):
        assert parse(STRICT1, argv, "kubectl").violation is not None, (argv, run)
        return
    r = parse(STRICT1.model_copy(update={"restrictedCommands": ["patch"]}), argv, "kubectl",
              trace=True)
    assert r.violation is None, (argv, r.violation)
    (cobra,) = r.models
    assert cobra.flags == tuple(typed for _, typed in run.flags), (argv, run, cobra)
    assert cobra.operands == (*run.path, *run.positionals), (argv, run, cobra)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(known_unit().filter(lambda u: u[0] in ("-n", "--namespace", "-o") or "=" in u[0]
                                    and not u[0].startswith("-A") and not u[0].startswith("-w")),
                max_size=4),
       st.sampled_from(["get", "delete"]), st.lists(known_unit(), max_size=4))
def test_cobra_clean_commands_stay_allowed(before: list[list[str]], sub: str,
                                           after: list[list[str]]) -> None:
    """The other side: value flags (which always take the next argv) before the subcommand,
    anything after it. Where the reference runs `get` cleanly, the production allows it; where
    it runs `delete`, the production blocks it. (Boolean flags before the subcommand are read
    both ways on purpose: they may be unknown at the root, as kubectl's -A is.)"""
    argv = flat([*before, [sub], *after])
    try:
        run = ref_find(TREE1, argv)
    except PflagError:
        return
    v = parse(STRICT1, argv, "kubectl").violation
    if ref_violates(run, True):
        assert v is not None, (argv, run)
    else:
        assert v is None, (argv, run, v)


# -- getopt_long ---------------------------------------------------------------------------------
class GetoptError(Exception):
    pass


LONGS = {"namespace": "req", "output": "req", "all-namespaces": "no", "watch": "no",
         "force": "no", "grace-period": "req", "color": "opt"}
SHORTS = {"n": ("namespace", "req"), "o": ("output", "req"), "A": ("all-namespaces", "no"),
          "w": ("watch", "no")}
G_STRICT = SafeBin(dialect="getopt", allowedValueFlags=["-n", "--namespace", "-o", "--output"],
                   allowedFlags=["-A", "--all-namespaces", "-w", "--watch", "--color",
                                 "--color=auto", "--color=never"],
                   forbiddenFlags=["--force", "--grace-period"],
                   restrictedCommands=["delete", "config set"])
G_ALLOWED = {"namespace", "output", "all-namespaces", "watch", "color"}


def ref_getopt(args: list[str]) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """GNU getopt_long with permutation: [(name, typed spelling, value)], operands."""
    opts: list[tuple[str, str, str | None]] = []
    ops: list[str] = []
    i = 0
    while i < len(args):
        s = args[i]
        i += 1
        if s == "--":
            ops += args[i:]
            break
        if s.startswith("--"):
            name, eq, val = s[2:].partition("=")
            cands = [n for n in LONGS if n == name] or [n for n in LONGS if n.startswith(name)]
            if len(cands) != 1:
                raise GetoptError(f"unknown or ambiguous {s}")
            full, has = cands[0], LONGS[cands[0]]
            typed = s.partition("=")[0]
            if eq:
                if has == "no":
                    raise GetoptError(f"{s}: no argument allowed")
                opts.append((full, s, val))
            elif has == "req":
                if i >= len(args):
                    raise GetoptError(f"{s} needs an argument")
                opts.append((full, f"{typed}={args[i]}", args[i]))
                i += 1
            else:
                opts.append((full, typed, None))
        elif s.startswith("-") and s != "-":
            j = 1
            while j < len(s):
                c = s[j]
                if c not in SHORTS:
                    raise GetoptError(f"invalid option -{c}")
                full, has = SHORTS[c]
                if has == "no":
                    opts.append((full, f"-{c}", None))
                    j += 1
                    continue
                if j + 1 < len(s):
                    value = s[j + 1:]
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    raise GetoptError(f"-{c} needs an argument")
                opts.append((full, f"-{c}={value}", value))
                break
        else:
            ops.append(s)
    return opts, ops


G_RESTRICTED = [("delete",), ("config", "set")]


def g_violates(opts: list[tuple[str, str, str | None]], ops: list[str]) -> bool:
    words = tuple(o for o in ops if o != "-")
    if any(words[: len(r)] == r for r in G_RESTRICTED):
        return True
    names = {n for n, _, _ in opts}
    colors = {v for n, _, v in opts if n == "color"} - {None, "auto", "never"}
    return bool(names & {"force", "grace-period"} or not names <= G_ALLOWED or colors)


@st.composite
def getopt_unit(draw: st.DrawFn) -> list[str]:
    v = draw(VALUES)
    # attached values that do not also spell a long option when read as `-word` (getopt's model
    # reads single-dash words both ways, on purpose)
    attached = draw(st.sampled_from(["prod", "x", "delete", "json"]))
    return draw(st.sampled_from([
        [draw(WORDS)], [draw(WORDS)], [""], ["-"], ["--"],
        ["-n", v], [f"-n{attached}"], ["--namespace", v], [f"--namespace={v}"], ["--nam", v],
        [f"--names={v}"], ["--out", v], [f"--o={v}"], ["-o", v], [f"-o{attached}"],
        ["-A"], ["-Aw"], ["-wA"], ["-An", v], [f"-An{attached}"], ["--all-namespaces"],
        ["--all"], ["--wat"], ["--watch=true"], ["--force"], ["--fo"], ["--gr", v],
        [f"--grace-period={v}"], ["--color"], ["--color=auto"], ["--color=always"], ["--col"],
        ["-x"], ["--zzz"],
    ]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(getopt_unit(), max_size=8))
def test_getopt_against_the_reference(units: list[list[str]]) -> None:
    """Soundness, the allowed side, and the natural reading (command, options as typed,
    operands) of the getopt model, against getopt_long itself."""
    argv = flat(units)
    try:
        opts, ops = ref_getopt(argv)
    except GetoptError:
        return  # getopt refuses it: nothing runs
    r = parse(G_STRICT, argv, "prog", trace=True)
    if g_violates(opts, ops):
        assert r.violation is not None, (argv, opts, ops)
        return
    assert r.violation is None, (argv, opts, ops, r.violation)
    (getopt,) = r.models
    assert getopt.flags == tuple(t for _, t, _ in opts), (argv, opts, getopt)
    assert getopt.operands == tuple(ops), (argv, ops, getopt)
    assert getopt.command == tuple(o for o in ops if o != "-")[:2]


# -- the shortcut of the every-model default ------------------------------------------------------
FLAT = SafeBin(allowedValueFlags=["-k", "--key", "-t"], allowedFlags=["-r", "--reverse", "-u",
               "--color", "--color=auto"], forbiddenFlags=["-o", "--output",
               "--compress-program"], maxPositional=1)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([
    "-k", "--key", "-t", "-r", "--reverse", "-u", "--color", "--color=auto", "--color=x", "-o",
    "--output", "--output=x", "--compress-program", "--reverse=true", "--key=2", "x", "", "-",
    "2", "-z", "--zz", "-ru", "-k2", "--", "--rev", "--compress_program=sh"]), max_size=7))
def test_getopt_alone_when_it_covers_cobra(argv: list[str]) -> None:
    """Without command lists, an argv whose flag tokens both models read alike is read by
    getopt alone (a cheaper check): that must never miss what cobra's reading would find."""
    from sandbox.policy.argv import _getopt_covers_cobra, spec_for

    if not _getopt_covers_cobra(spec_for(FLAT), argv):
        return
    cobra = parse(FLAT.model_copy(update={"dialect": "cobra"}), argv, "sort").violation
    getopt = parse(FLAT.model_copy(update={"dialect": "getopt"}), argv, "sort").violation
    if cobra is not None:
        assert getopt is not None and getopt.rank >= cobra.rank, (argv, cobra, getopt)
