"""Issue 13, the pre-check side: an argv of tens of thousands of arguments is judged, not
refused for its size (the argv parser's state budget grows with the argv), and a restricted
subcommand is still found in it."""

from __future__ import annotations

from sandbox.policy.check import check_argv
from sandbox.policy.loader import load_profile


def test_thirty_thousand_operands_are_judged() -> None:
    p = load_profile("k8s-readonly")
    argv = ["kubectl", "get", "pods", *(f"p{i}" for i in range(30000))]
    d = check_argv(p, argv, cwd="/", env_path="/usr/bin:/bin", lenient=True)
    assert d.allowed, (d.rule_id, d.reason)


def test_a_restricted_subcommand_is_found_among_them() -> None:
    p = load_profile("k8s-readonly")
    argv = ["kubectl", "delete", "pods", *(f"p{i}" for i in range(30000))]
    d = check_argv(p, argv, cwd="/", env_path="/usr/bin:/bin", lenient=True)
    assert not d.allowed and "delete" in d.rule_id
