"""Issue 10 #2: nothing a run does may let an exec proceed before its verdict. The attack, as a
non-root caller through the daemon: a thread flips argv[1] of a pending `kubectl get pod x` to
`delete` (1,000 padding arguments slow the judge), and the exec'ing process sits in a process
group that the attacker orphans (setsid / setpgid / SIGHUP ignored / parent exits), so the
kernel sends it SIGHUP + SIGCONT. With a SIGSTOP hold, that SIGCONT released the new image
before the verdict and `kubectl delete` ran 2-3 times in 10. With the in-kernel verification
there is no hold: the kernel hashes the argv it copied at sched_process_exec and kills a
mismatch before the first instruction.

Each test runs 200 execs and must see zero escapes; the allowed form (`get`) still runs, and
every kill is recorded as a block with its context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._attack import Daemon, attacker, blocks, daemon_with, result_line

pytestmark = pytest.mark.kernel

N = 200


def profile(exe: str) -> str:
    return f"""\
name: race
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: ["{exe}"]
  default: block
"""


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Daemon, Path]]:
    from tests.security._attack import world_dir

    bindir = world_dir("gb-race-bin-")
    exe = attacker("execrace", bindir, "-lpthread")
    yield from ((dm, exe) for dm in daemon_with({"race": profile(str(exe))}))


def _check(dm: Daemon, mode: str, exe: Path, stub: Path) -> None:
    before = len(dm.audit())
    r = dm.run("race", str(exe), mode, str(N), str(stub), timeout=300)
    assert "RESULT" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    res = result_line(r.stdout)
    escapes = [x for x in r.stdout.splitlines() if x.startswith("stub-kubectl delete")]
    assert not escapes, f"`kubectl delete` ran {len(escapes)} time(s) in {N}: {res}"
    # positive control: the execs whose argv the judge saw as allowed ran (often a torn but
    # harmless spelling such as `gelete`: the judge and the kernel agreed on it), one stub line
    # each; none of them held `delete`
    ran = [x for x in r.stdout.splitlines() if x.startswith("stub-kubectl ")]
    assert ran and len(ran) == res["ran"], f"allowed execs did not run: {res} {r.stdout[-3000:]}"
    assert res["other"] == 0, res
    events = dm.audit()[before:]
    gate = blocks(events, "exec-gate", "safeBins.kubectl.restrictedCommands:delete")
    assert len(gate) == res["eperm"], (len(gate), res)
    killed = blocks(events, "exec-trace")
    # every exec the kernel killed is a recorded block with its context
    assert len(killed) == res["killed"], (len(killed), res)
    for b in killed:
        assert b["rule_id"] == "exec.argv-changed", b
        assert b["verdict"] == "block" and b["enforced"], b
        assert b["pid"] and b["binary"] and b["sha256"], b
        # the argv the kernel copied (the script's, after binfmt_script): what was attempted
        argv = list(b["argv"])  # type: ignore[call-overload]
        # (a string torn mid-copy may show as two, "del" "te", or run into the next, "delepod")
        assert argv[:2] == ["/bin/sh", str(stub)] and "x" in argv[2:6], argv[:8]
        assert "argv or environment the kernel copied differ" in str(b["reason"]), b
        assert b["escalation_id"], b
    assert res["eperm"] + res["killed"] > 0, f"the race never happened: {res}"
    print(f"{mode}: {res}")


@pytest.mark.timeout(300)
def test_argv_race_never_runs_the_restricted_subcommand(setup: tuple[Daemon, Path],
                                                        stub_kubectl: Path) -> None:
    dm, exe = setup
    _check(dm, "race", exe, stub_kubectl)


@pytest.mark.timeout(300)
def test_orphaned_group_sigcont_plus_argv_race_never_escapes(setup: tuple[Daemon, Path],
                                                             stub_kubectl: Path) -> None:
    dm, exe = setup
    _check(dm, "orphan", exe, stub_kubectl)
