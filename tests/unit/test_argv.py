"""The getopt_long argv model (sandbox.policy.argv): every spelling from issue 2, plus property
tests."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.policy.argv import MAX_STATES, compile_rule, parse
from sandbox.policy.profile import SafeBin

# the getopt model, on a kubectl-like rule (kubectl itself parses as cobra: test_argv_dialects)
KUBECTL = SafeBin(
    dialect="getopt",
    allowedValueFlags=["-n", "--namespace", "-o", "--output", "--dry-run=client"],
    allowedFlags=["-A", "--all-namespaces", "-w", "--watch"],
    forbiddenFlags=["--force", "--grace-period"],
    restrictedCommands=["delete", "patch", "apply", "edit", "drain", "exec", "rollout restart"],
)
# forbiddenFlags-only rule (no allowlist): unknown flags are allowed, but must not hide anything
LOOSE = SafeBin(forbiddenFlags=["--force", "-f", "-r", "--recursive"],
                restrictedCommands=["delete", "config set"], valueFlags=["-n", "--namespace"])
RM = SafeBin(allowedFlags=["-i", "-v", "--verbose", "-d"], forbiddenFlags=["-r", "-R", "-f",
             "--recursive", "--force"])


def verdict(rule: SafeBin, line: str) -> tuple[str, str] | None:
    v = parse(rule, line.split(), "prog").violation
    return None if v is None else (v.kind, v.subject)


# -- the "Done means" and every listed spelling ------------------------------------------
@pytest.mark.parametrize("line", [
    "get pods -n prod", "get pods --namespace prod", "get pods --namespace=prod",
    "-n prod get pods",
    "get pods -nprod", "-nprod get pods", "get -A pods", "get pods -Aw", "-An prod get pods",
    "get pods -o wide", "get pods -owide", "get pods --out=json", "get pods --nam prod",
    "get pods --dry-run=client", "get pods --dry-run client", "-n delete get pods",
    "--namespace delete get pods", "get pods -- --force", "get -", "-n -- get",
    "get pods --all-n",
])
def test_kubectl_allowed(line: str) -> None:
    assert verdict(KUBECTL, line) is None


@pytest.mark.parametrize("line,expected", [
    ("-n prod delete pod x", ("restrictedCommands", "delete")),
    ("delete --forc pod x", ("forbiddenFlags", "--force")),
    ("get pods --bogus", ("allowlist", "--bogus")),
    ("delete pod x", ("restrictedCommands", "delete")),
    ("--namespace=prod delete pod", ("restrictedCommands", "delete")),
    ("-nprod delete pod", ("restrictedCommands", "delete")),
    ("-A -o yaml -n prod delete pod", ("restrictedCommands", "delete")),
    ("-n prod rollout restart deploy/x", ("restrictedCommands", "rollout restart")),
    ("rollout -n prod restart deploy/x", ("restrictedCommands", "rollout restart")),
    ("get pods --force", ("forbiddenFlags", "--force")),
    ("get pods --f", ("forbiddenFlags", "--force")),
    ("get pods --force=true", ("forbiddenFlags", "--force")),
    ("get pods --fo=false", ("forbiddenFlags", "--force")),
    ("get pods --gr=0", ("forbiddenFlags", "--grace-period")),
    ("get pods --grace-period 0", ("forbiddenFlags", "--grace-period")),
    ("get pods -force", ("forbiddenFlags", "--force")),  # Go flag / getopt_long_only spelling
    ("get pods -x", ("allowlist", "-x")),
    ("get pods -Ax", ("allowlist", "-x")),
    ("get pods --dry-run=server", ("flagValue", "--dry-run")),
    ("get pods --dry-run", ("missingValue", "--dry-run")),
    ("get pods -n", ("missingValue", "-n")),
    ("get --bogus=1 pods", ("allowlist", "--bogus")),
    ("get --watch=true pods", ("flagValue", "--watch")),  # getopt: no value on a boolean flag
])
def test_kubectl_blocked(line: str, expected: tuple[str, str]) -> None:
    assert verdict(KUBECTL, line) == expected


def test_ambiguous_prefix_blocks() -> None:
    rule = SafeBin(dialect="getopt", allowedValueFlags=["--filename", "-f"],
                   forbiddenFlags=["--force"])
    v = parse(rule, ["apply", "--f", "x"], "kubectl").violation
    assert v is not None and (v.kind, v.subject) == ("ambiguous", "--f")
    assert "--force" in v.reason and "--filename" in v.reason
    assert verdict(rule, "apply --fi x") is None  # unique prefix of an allowed flag
    assert verdict(rule, "apply --for") == ("forbiddenFlags", "--force")


def test_exact_name_wins_over_longer_option() -> None:
    rule = SafeBin(allowedFlags=["--all"], forbiddenFlags=["--all-namespaces"])
    assert verdict(rule, "get --all") is None
    assert verdict(rule, "get --all-") == ("forbiddenFlags", "--all-namespaces")


def test_reasons_are_sentences() -> None:
    v = parse(KUBECTL, ["delete", "--forc", "pod"], "kubectl").violation
    assert v is not None
    assert v.reason == "`--forc` is an abbreviation of the forbidden flag `--force`"
    v = parse(RM, ["-rf", "x"], "rm").violation
    assert v is not None and v.reason == "`-rf` contains the forbidden flag `-r`"


@pytest.mark.parametrize("line,expected", [
    ("-rf /", ("forbiddenFlags", "-r")), ("-fr /", ("forbiddenFlags", "-f")),
    ("-ivf x", ("forbiddenFlags", "-f")), ("x -R", ("forbiddenFlags", "-R")),
    ("x --rec", ("forbiddenFlags", "--recursive")), ("--verb -d x --forc", ("forbiddenFlags",
                                                                          "--force")),
    ("-q x", ("allowlist", "-q")), ("x -- -rf", None), ("-iv x", None), ("--verbose -- -", None),
])
def test_rm_bundles(line: str, expected: tuple[str, str] | None) -> None:
    assert verdict(RM, line) == expected


def test_value_flag_consumes_its_value_even_if_it_looks_like_a_flag() -> None:
    # getopt: a required argument is the next argv, whatever it looks like
    assert verdict(KUBECTL, "get pods -n --force") is None
    assert verdict(KUBECTL, "-n delete get pods") is None
    r = parse(KUBECTL, ["-n", "delete", "get", "pods"], "kubectl", trace=True)
    assert r.operands == ("get", "pods") and r.flags == ("-n=delete",)


# -- no allowlist: unknown flags may hide the subcommand -----------------------------------------
@pytest.mark.parametrize("line,expected", [
    ("delete x", ("restrictedCommands", "delete")),
    ("--foo delete x", ("restrictedCommands", "delete")),
    ("--foo x delete", ("restrictedCommands", "delete")),  # --foo might take the value x
    ("-z x delete", ("restrictedCommands", "delete")),
    ("-zy x delete", ("restrictedCommands", "delete")),
    ("-n ns --foo x delete", ("restrictedCommands", "delete")),
    ("--foo x config set k v", ("restrictedCommands", "config set")),
    ("--foo -- --force", ("forbiddenFlags", "--force")),  # --foo might swallow the `--`
    ("-x -zforce", ("forbiddenFlags", "-f")), ("-nforce", None),
    ("-zf", ("forbiddenFlags", "-f")), ("--fo", ("forbiddenFlags", "--force")),
    ("--rec", ("forbiddenFlags", "--recursive")),
])
def test_loose_rule_blocks_every_reading(line: str, expected: tuple[str, str] | None) -> None:
    assert verdict(LOOSE, line) == expected


@pytest.mark.parametrize("line", [
    "get x --foo delete",  # the subcommand `get` came before the unknown flag
    "get --foo=1 delete", "-n delete get", "--namespace=delete get", "get -- --force -rf",
    "--foo=x get", "-z get", "config view --foo set",
])
def test_loose_rule_allows_unambiguous(line: str) -> None:
    assert verdict(LOOSE, line) is None


def test_violation_explains_the_reading() -> None:
    v = parse(LOOSE, ["--foo", "x", "delete"], "kubectl").violation
    assert v is not None and "if the unknown flag `--foo` takes the value `x`" in v.reason


def test_too_many_readings_fails_closed() -> None:
    rule = SafeBin(restrictedCommands=["a b c d"], minPositional=0)
    argv = [t for i in range(200) for t in (f"--u{i}", f"v{i}")]
    v = parse(rule, argv, "prog").violation
    assert v is not None and v.kind == "tooAmbiguous"
    assert MAX_STATES < 10_000


def test_commands_lists_and_bounds() -> None:
    rule = SafeBin(allowedCommands=["get", "config view"], deniedCommands=["exec"],
                   maxPositional=3, minPositional=1)
    assert verdict(rule, "get pods") is None
    assert verdict(rule, "config view") is None
    assert verdict(rule, "config set x") == ("allowedCommands", "config")
    assert verdict(rule, "describe x") == ("allowedCommands", "describe")
    v = parse(rule, ["exec", "pod"], "kubectl").violation
    assert v is not None and v.kind == "deniedCommands" and v.verdict == "deny"
    assert verdict(rule, "get a b c") == ("maxPositional", "4")
    assert verdict(rule, "") == ("allowedCommands", "(none)")
    assert verdict(SafeBin(minPositional=1), "--x") == ("minPositional", "0")


def test_on_violation_deny() -> None:
    rule = SafeBin(forbiddenFlags=["--force"], onViolation="deny")
    v = parse(rule, ["--forc"], "prog").violation
    assert v is not None and v.verdict == "deny"


def test_single_dash_long_entries() -> None:
    rule = SafeBin(allowedFlags=["-input=false", "-no-color"], forbiddenFlags=["-auto-approve"])
    assert verdict(rule, "apply -no-color") is None
    assert verdict(rule, "apply -input=false") is None
    assert verdict(rule, "apply -input=true") == ("flagValue", "-input")
    assert verdict(rule, "apply -auto-approve") == ("forbiddenFlags", "-auto-approve")
    assert verdict(rule, "apply --auto-approve") == ("forbiddenFlags", "-auto-approve")
    assert verdict(rule, "apply -auto") == ("forbiddenFlags", "-auto-approve")


def test_compile_rule_fixed_values_and_conflicts() -> None:
    spec = compile_rule(SafeBin(allowedValueFlags=["--out=json", "--out=yaml"],
                                allowedFlags=["--x"], valueFlags=["--x"]))
    assert spec.longs["out"].values == {"json", "yaml"}
    assert spec.longs["x"].takes == "maybe"
    spec = compile_rule(SafeBin(allowedValueFlags=["--out=json", "--out"]))
    assert spec.longs["out"].values is None


# -- property tests: no spelling of a forbidden flag or restricted command is ever allowed -------
NS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-=0123456789", min_size=1, max_size=8) | \
    st.sampled_from(["delete", "--force", "-", "--", "get", "exec", "-rf"])


@st.composite
def global_unit(draw: st.DrawFn) -> list[str]:
    """One allowed global flag of KUBECTL with its value, in any getopt spelling."""
    v = draw(NS)
    # `-o{v}` is also read as the single-dash long option `--o{v}` (Go-flag style tools accept
    # `-output`), and must pass that reading too: `-ou` alone is `--ou` = `--output` without a
    # value, blocked by design (fail closed). Attached values that spell a long option's prefix
    # are therefore not "allowed spellings".
    attached = [] if any(n.startswith(c + v) for c in "on" for n in LONG_NAMES) else \
        [[f"-n{v}"], [f"-o{v}"], [f"-An{v}"]]
    return draw(st.sampled_from([
        ["-n", v], ["--namespace", v], [f"--namespace={v}"], [f"--names={v}"],
        ["--nam", v], ["-o", v], [f"--output={v}"], ["--out", v], ["-A"], ["-w"],
        ["-Aw"], ["-wA"], ["-Ao", v], ["--all-namespaces"], ["--all"], ["--wat"],
        ["--dry-run=client"], ["--dry", "client"], *attached,
    ]))


LONG_NAMES = ("namespace", "output", "all-namespaces", "watch", "dry-run", "force",
              "grace-period")


@st.composite
def forbidden_unit(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(["force", "grace-period"]))
    prefix = name[: draw(st.integers(1, len(name)))]
    dash = draw(st.sampled_from(["--", "-"])) if len(prefix) > 1 else "--"
    tail = draw(st.sampled_from(["", "=0", "=true", "=", "=--x"]))
    return [f"{dash}{prefix}{tail}"]


def flat(units: list[list[str]]) -> list[str]:
    return [t for u in units for t in u]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(global_unit(), max_size=5), st.lists(global_unit(), max_size=3),
       forbidden_unit(), st.integers(0, 20), st.sampled_from(["get", "delete", "describe"]))
def test_no_spelling_of_a_forbidden_flag_is_allowed(before: list[list[str]],
                                                    after: list[list[str]], bad: list[str],
                                                    pos: int, sub: str) -> None:
    units = [*before, [sub], ["pods"], *after]
    units.insert(min(pos, len(units)), bad)
    argv = flat(units)
    v = parse(KUBECTL, argv, "kubectl").violation
    assert v is not None, argv
    assert v.kind in ("forbiddenFlags", "restrictedCommands"), (argv, v)


@settings(max_examples=300, deadline=None)
@given(st.lists(global_unit(), max_size=6), st.sampled_from(
    ["delete", "patch", "apply", "edit", "drain", "exec", "rollout restart"]),
    st.lists(global_unit(), max_size=3), st.lists(NS.filter(lambda s: not s.startswith("-")),
                                                   max_size=3))
def test_no_restricted_subcommand_after_global_flags_is_allowed(
        before: list[list[str]], sub: str, after: list[list[str]], ops: list[str]) -> None:
    words = sub.split()
    # flags may also sit between the words of a multi-word subcommand (GNU permutation)
    units = [*before, [words[0]], *after, *([w] for w in words[1:]), *([o] for o in ops)]
    argv = flat(units)
    v = parse(KUBECTL, argv, "kubectl").violation
    assert v is not None and v.kind == "restrictedCommands" and v.subject == sub, (argv, v)


@settings(max_examples=300, deadline=None)
@given(st.lists(global_unit(), max_size=6), st.sampled_from(["get", "describe", "logs"]),
       st.lists(global_unit(), max_size=3))
def test_allowed_spellings_stay_allowed(before: list[list[str]], sub: str,
                                        after: list[list[str]]) -> None:
    """The other side: the model is not just blocking everything."""
    argv = flat([*before, [sub], ["pods"], *after])
    assert parse(KUBECTL, argv, "kubectl").violation is None, argv


UNKNOWN = st.sampled_from(["--foo", "--bar", "-z", "-zy", "--verbose", "-q"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(UNKNOWN.map(lambda f: [f]),
                          st.tuples(UNKNOWN, NS).map(list),
                          st.sampled_from([["-n", "ns"], ["--namespace=ns"]])), max_size=6),
       st.sampled_from(["delete", "config set"]))
def test_loose_rule_restricted_command_never_hidden_by_unknown_flags(
        before: list[list[str]], sub: str) -> None:
    argv = [*flat(before), *sub.split(), "x"]
    v = parse(LOOSE, argv, "kubectl").violation
    assert v is not None, argv
