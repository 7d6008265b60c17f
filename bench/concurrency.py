"""N concurrent sandboxed runs through ONE glassbreak daemon: throughput, and proof that no exec
event is lost or crossed between runs.

Each run i executes its own marker tree
    sh -c '/bin/echo gbm-T-I-a; /bin/true gbm-T-I-b; /usr/bin/env /bin/true gbm-T-I-c'
= 5 execs (sh, echo, true, env, true; echo is exec'd by path, not the shell builtin). Afterwards the
daemon's audit log, grouped by run_id, must hold for every run exactly these 5 exec events (same
argv multiset: none missing, none duplicated, none of another run), no `events_lost`, exit 0, and
the run's stdout must be its own marker (stdio not crossed either).

    .venv/bin/python bench/concurrency.py [--runs 50] [--daemon SOCKET] [--json]

Used by tests/integration/test_concurrency.py (smaller) and bench/scale.py (`concurrency` group).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemons import GLASSBREAK, DaemonProc, start_daemon  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parent.parent
EXECS_PER_RUN = 5


def marker_argv(tag: str, i: int) -> list[str]:
    m = f"gbm-{tag}-{i}"
    return ["sh", "-c", f"/bin/echo {m}-a; /bin/true {m}-b; /usr/bin/env /bin/true {m}-c"]


def expected_execs(tag: str, i: int) -> list[list[str]]:
    m = f"gbm-{tag}-{i}"
    return sorted([marker_argv(tag, i), ["/bin/echo", f"{m}-a"], ["/bin/true", f"{m}-b"],
                   ["/usr/bin/env", "/bin/true", f"{m}-c"], ["/bin/true", f"{m}-c"]])


@dataclass
class RunOutcome:
    i: int
    code: int
    stdout: str
    run_id: str | None
    seconds: float
    stderr: str


def one_run(sock: Path, tag: str, i: int, glassbreak: str = GLASSBREAK,
            profile: str = "readonly") -> RunOutcome:
    env = dict(os.environ, GLASSBREAK_SOCKET=str(sock), PATH="/usr/local/bin:/usr/bin:/bin")
    env.pop("GLASSBREAK_NO_DAEMON", None)
    t0 = time.perf_counter()
    r = subprocess.run([glassbreak, "run", "-o", "json", "-p", profile, "--",
                        *marker_argv(tag, i)], capture_output=True, text=True, env=env,
                       timeout=120)
    dt = time.perf_counter() - t0
    run_id = None
    for line in r.stderr.splitlines():
        if line.startswith("{"):
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            run_id = ev.get("run_id") or run_id
    return RunOutcome(i, r.returncode, r.stdout, run_id, dt, r.stderr)


def run_concurrent(sock: Path, n: int, *, glassbreak: str = GLASSBREAK,
                   workers: int | None = None) -> tuple[str, list[RunOutcome], float]:
    """Start n clients at once (one thread each); returns (tag, outcomes, wall seconds)."""
    tag = secrets.token_hex(3)
    barrier = threading.Barrier(min(n, workers or n))

    def go(i: int) -> RunOutcome:
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        return one_run(sock, tag, i, glassbreak)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers or n) as ex:
        outs = list(ex.map(go, range(n)))
    return tag, outs, time.perf_counter() - t0


def check_isolation(tag: str, outs: list[RunOutcome], audit: Path) -> list[str]:
    """Every problem found (empty = each run saw exactly its own execs, none lost/crossed)."""
    problems: list[str] = []
    by_run: dict[str, list[dict[str, Any]]] = {}
    with audit.open() as f:
        for raw in f:
            try:
                ev = json.loads(raw)
            except ValueError:
                problems.append(f"torn audit line: {raw[:80]!r}")
                continue
            by_run.setdefault(str(ev.get("run_id")), []).append(ev)
    ids = [o.run_id for o in outs]
    if len(set(ids)) != len(ids) or None in ids:
        problems.append(f"run ids missing or not unique: {ids}")
    for o in outs:
        if o.code != 0:
            problems.append(f"run {o.i}: exit {o.code}: {o.stderr[-300:]}")
        if o.stdout != f"gbm-{tag}-{o.i}-a\n":
            problems.append(f"run {o.i}: stdout {o.stdout!r} is not its own marker")
        evs = by_run.get(str(o.run_id), [])
        got = sorted(e["argv"] for e in evs if e.get("type") == "exec")
        want = expected_execs(tag, o.i)
        if got != want:
            problems.append(f"run {o.i} ({o.run_id}): exec events {got} != expected {want}")
        lost = [e for e in evs if e.get("type") == "events_lost"]
        if lost:
            problems.append(f"run {o.i}: events lost: {lost}")
        res = [e for e in evs if e.get("type") == "run_result"]
        if len(res) != 1 or res[0].get("execs") != EXECS_PER_RUN:
            problems.append(f"run {o.i}: run_result {res} does not count {EXECS_PER_RUN} execs")
    mine = {str(o.run_id) for o in outs}
    for rid, evs in by_run.items():  # no marker of this batch outside its own run
        for e in evs:
            if e.get("type") != "exec":
                continue
            text = " ".join(e.get("argv") or [])
            owners = {o.i for o in outs if f"gbm-{tag}-{o.i}-" in text}
            if owners and (rid not in mine or any(outs[j].run_id != rid for j in owners)):
                problems.append(f"exec {e['argv']} of run {sorted(owners)} recorded under {rid}")
    return problems


def measure(n: int = 50, *, sock: Path | None = None, state: Path | None = None,
            glassbreak: str = GLASSBREAK) -> dict[str, Any]:
    """Run the batch (starting and ending a daemon unless `sock`+`state` name one) and return
    a JSON-ready summary; `problems` lists anything lost or crossed."""
    dp: DaemonProc | None = None
    work: Path | None = None
    if sock is None or state is None:
        work = Path(tempfile.mkdtemp(prefix="gb-conc-"))
        dp = start_daemon(work, glassbreak=glassbreak)
        sock, state = dp.sock, dp.state
    try:
        one_run(sock, "warmup", 0, glassbreak)  # the daemon's first run loads the profile
        tag, outs, wall = run_concurrent(sock, n, glassbreak=glassbreak)
        time.sleep(0.2)  # the audit log is written before the reply; this is only a margin
        problems = check_isolation(tag, outs, state / "audit.jsonl")
    finally:
        if dp is not None:
            dp.stop()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    secs = sorted(o.seconds for o in outs)
    return {
        "runs": n, "execs_per_run": EXECS_PER_RUN, "wall_s": round(wall, 3),
        "throughput_runs_per_s": round(n / wall, 2),
        "exec_events_checked": n * EXECS_PER_RUN,
        "run_latency_ms": {"median": round(statistics.median(secs) * 1000, 1),
                           "p95": round(secs[int(0.95 * (len(secs) - 1))] * 1000, 1),
                           "max": round(secs[-1] * 1000, 1)},
        "problems": problems, "ok": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--daemon", metavar="SOCKET", help="use this running daemon ...")
    ap.add_argument("--state", metavar="DIR", help="... whose state dir (audit log) is here")
    ap.add_argument("--glassbreak", default=GLASSBREAK)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if bool(a.daemon) != bool(a.state):
        ap.error("--daemon and --state go together")
    res = measure(a.runs, sock=Path(a.daemon) if a.daemon else None,
                  state=Path(a.state) if a.state else None, glassbreak=a.glassbreak)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        lat = res["run_latency_ms"]
        print(f"{res['runs']} concurrent runs through one daemon: {res['wall_s']} s, "
              f"{res['throughput_runs_per_s']} runs/s; per run median {lat['median']} ms, "
              f"p95 {lat['p95']} ms; {res['exec_events_checked']} exec events checked: "
              + ("none lost or crossed" if res["ok"] else f"{len(res['problems'])} PROBLEMS"))
        for p in res["problems"][:20]:
            print("  " + p)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
