"""The one way text shown to a person quotes argv (issue 12, defect 3): argument by argument,
shell-style, with control and bidi characters visible; what is shown pastes back into bash as
exactly the argv that ran."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.cli.render import argv_warnings, hidden_char, quote_arg, quote_argv, visible

CASES = [
    (["kubectl", "get", "pods"], "kubectl get pods"),
    (["kubectl", "web-1 --all"], "kubectl 'web-1 --all'"),
    (["rm", "web-4\u202e lla-- "], "rm $'web-4\\u202e lla-- '"),
    (["echo", "it's"], "echo 'it'\"'\"'s'"),
    (["printf", "a\nb"], "printf $'a\\nb'"),
    (["x", ""], "x ''"),
    (["x", "\x1b[31mred"], "x $'\\e[31mred'"),
    (["x", "a\u200bb"], "x $'a\\u200bb'"),          # zero-width space
    (["x", "a\u00a0b"], "x $'a\\u00a0b'"),          # no-break space looks like a space
    (["x", "caf\u00e9"], "x 'caf\u00e9'"),           # letters show as themselves
    (["x", "a\udcffb"], "x $'a\\xffb'"),             # a byte that is not UTF-8
]


@pytest.mark.parametrize("argv,shown", CASES)
def test_quote_argv(argv: list[str], shown: str) -> None:
    assert quote_argv(argv) == shown


def test_backtick_for_slack() -> None:
    assert quote_arg("a`b") == "'a`b'"
    assert quote_arg("a`b", also="`") == "$'a\\x60b'"


def test_visible_keeps_one_line() -> None:
    forged = "ok\n    2026-01-01 00:00:00 approved  by sre-oncall"
    assert "\n" not in visible(forged) and visible(forged).startswith("ok\\n    2026")
    assert visible("fine\u202eevil") == "fine\\u202eevil"
    assert visible("x" * 50, limit=10) == "x" * 10 + "... (+40 characters)"


def test_warnings_name_what_could_be_misread() -> None:
    w = argv_warnings(["kubectl", "delete", "web-1" + " " * 300 + "-n kube-system --all",
                       "web-4\u202e lla-- ", "web-1 --all"])
    assert any("argument 2 contains a run of 300 blank characters" in x for x in w)
    assert any("argument 3" in x and "U+202E RIGHT-TO-LEFT OVERRIDE" in x for x in w)
    assert any("argument 4 is ONE argument" in x for x in w)
    assert argv_warnings(["kubectl", "get", "pods", "-n", "prod"]) == []


def test_hidden_chars() -> None:
    for ch in "\n\t\x00\x7f\x85\u202e\u2066\u200b\ufeff\u00ad\u2028\u00a0\udcff":
        assert hidden_char(ch), repr(ch)
    for ch in "a -~é日😀":
        assert not hidden_char(ch), repr(ch)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                      blacklist_characters="\x00"), max_size=12),
                min_size=1, max_size=5))
def test_what_is_shown_runs_as_the_same_argv_in_bash(argv: list[str]) -> None:
    r = subprocess.run(["bash", "-c", "printf '%s\\0' " + quote_argv(argv)],
                       capture_output=True, env={"LC_ALL": "C.UTF-8"}, timeout=10)
    assert r.stdout.split(b"\0")[:-1] == [a.encode() for a in argv]
