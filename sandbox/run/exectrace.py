"""The exec gate's trace side: what a kernel report means for the run.

- kill_decision: the in-kernel verification found an exec that differs from what the gate judged
  (another file, other argv or environment bytes, no judgement at all): the block it becomes,
  with what was judged and what the kernel saw;
- judge_after_the_fact: --degraded exec-gate (no expectations): the process is judged from
  /proc, or from the kernel's copy of its argv when it has already exited.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from sandbox.policy.decision import Decision, Verdict
from sandbox.run.execjudge import Judged, _injection

if TYPE_CHECKING:
    from sandbox.kernel.ebpf import ExecEvent
    from sandbox.policy.profile import ResolvedProfile

SHOWN_ARGS = 16  # argv shown in a kill's reason
# the kernel's verdict -> the block's rule
KILL_RULES = {"no-expectation": "exec.unexpected", "cgroup": "exec.unexpected",
              "identity": "exec.identity-mismatch", "hash": "exec.argv-changed"}


def kill_decision(ev: ExecEvent, j: Judged | None, mode: str) -> Decision:
    rule = KILL_RULES.get(ev.verdict, "exec.unverifiable")
    seen = ev.kernel_argv()
    judged = j.argv if j is not None else None
    done = "killed before its first instruction" if ev.killed else (
        "not killed (monitor mode)" if mode == "monitor" else "the kill FAILED")
    if ev.verdict == "identity":
        what = (f"the kernel ran another file than the exec gate judged: it opened "
                f"{ev.filename!r} (device {_devs(ev.seen[0])} inode {ev.seen[1]}), the gate "
                f"judged {j.binary if j else '?'!r}"
                + (f" (device {_devs(ev.expected[0])} inode {ev.expected[1]})"
                   if ev.expected else "")
                + " (a rename, chroot or race on the path)")
    elif ev.verdict == "hash":
        what = (f"the argv or environment the kernel copied differ from what the exec gate "
                f"judged (a race on the caller's memory): judged {_short(judged)}, the kernel "
                f"copied {_short(seen)}")
    elif ev.verdict in ("no-expectation", "cgroup"):
        what = f"an exec the exec gate never judged ({ev.filename!r})"
    else:
        what = f"the kernel could not verify the exec ({ev.verdict}) of {ev.filename!r}"
    binary = ev.filename if (ev.verdict == "identity" or j is None) else j.binary
    if binary and not binary.startswith("/"):
        binary = None
    return Decision(Verdict.BLOCK, rule, f"{what}; {done}", tuple(seen or judged or ()), binary)


def judge_after_the_fact(ev: ExecEvent, profile: ResolvedProfile,
                         check: Callable[..., Decision]
                         ) -> tuple[Decision, str | None, list[str], str | None]:
    """(decision, binary, argv, cwd) for an exec that already runs (--degraded exec-gate)."""
    from sandbox.kernel.procview import read_trace_view

    v = read_trace_view(ev.pid, ev.filename, ev.kernel_argv())
    if v.error:
        d = Decision(Verdict.DENY, "exec.unreadable", v.error, tuple(v.argv), v.binary)
    else:
        d = _injection(v.envp, v.argv, v.binary) or check(
            profile, v.argv, cwd=v.cwd, env_path=v.env_path, binary=v.binary)
    if v.gone and not d.allowed:
        cut = " (its first arguments only)" if ev.args_truncated else ""
        d = Decision(d.verdict, d.rule_id, f"{d.reason}; judged after the fact from the "
                     f"kernel's copy of its argv{cut}: it had already exited "
                     "(--degraded exec-gate)", d.argv, d.binary)
    return d, v.binary, v.argv, v.cwd


def _short(argv: list[str] | None) -> str:
    if argv is None:
        return "(nothing)"
    from sandbox.cli.render import quote_argv

    shown = quote_argv(argv[:SHOWN_ARGS])  # ['a b'] and ['a', 'b'] must not read the same
    return f"[{shown}{' ...' if len(argv) > SHOWN_ARGS else ''}]"


def _devs(st_dev: int) -> str:
    return f"{os.major(st_dev)}:{os.minor(st_dev)}"
