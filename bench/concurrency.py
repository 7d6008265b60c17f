"""N concurrent sandboxed runs through ONE glassbreak daemon: throughput, and proof that no exec
event is lost or crossed between runs.

Each run i executes its own marker tree
    sh -c '/bin/echo gbm-T-I-a; /bin/true gbm-T-I-b; /usr/bin/env /bin/true gbm-T-I-c'
= 5 execs (sh, echo, true, env, true; echo is exec'd by path, not the shell builtin). Afterwards the
daemon's audit log, grouped by run_id, must hold for every run exactly these 5 exec events (same
argv multiset: none missing, none duplicated, none of another run), no `events_lost`, exit 0, and
the run's stdout must be its own marker (stdio not crossed either).

    .venv/bin/python bench/concurrency.py [--runs 50] [--daemon SOCKET] [--json]

Used by tests/integration/test_concurrency.py (smaller) and bench/run.py (`concurrency` group).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GLASSBREAK = str(Path(sys.executable).parent / "glassbreak")
EXECS_PER_RUN = 5


@dataclass
class DaemonProc:
    """A `glassbreak serve` process started here; ended by pid (or by its netns-exec pid)."""

    proc: subprocess.Popen[str]
    sock: Path
    state: Path
    stderr_path: Path
    announced: list[dict[str, Any]] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def start_daemon(workdir: Path, *, glassbreak: str = GLASSBREAK, prefix: Sequence[str] = (),
                 env: dict[str, str] | None = None, http: tuple[str, int] | None = None,
                 timeout: float = 30) -> DaemonProc:
    """Start `[prefix...] glassbreak serve --socket workdir/gb.sock` with its own state dir and
    wait until it announces the socket (and, with `http`, the approval API)."""
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    sock = workdir / "gb.sock"
    full_env = dict(os.environ, GLASSBREAK_STATE_DIR=str(state)) if env is None else dict(env)
    full_env.setdefault("GLASSBREAK_STATE_DIR", str(state))
    cmd = [*prefix, glassbreak, "serve", "--socket", str(sock), "-o", "json"]
    cmd += ["--host", http[0], "--port", str(http[1])] if http else ["--no-http"]
    err = workdir / "daemon.stderr"
    with err.open("w") as ef:  # a file, not a pipe: a chatty daemon never blocks on it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ef, text=True, env=full_env)
    dp = DaemonProc(proc, sock, Path(full_env["GLASSBREAK_STATE_DIR"]), err)
    want = {"socket", "listening"} if http else {"socket"}
    got: set[str] = set()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            dp.announced.append(msg)
            got.update(k for k in want if k in msg)
            if got == want:
                ready.set()  # keep draining stdout so the daemon never blocks on it
        ready.set()

    ready = threading.Event()
    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout)
    if got != want:
        dp.stop()
        raise RuntimeError(f"glassbreak serve did not start within {timeout:.0f} s "
                           f"(saw {''.join(lines)!r}); stderr: {dp.stderr_tail()}")
    if http:  # the socket thread announces first; wait until the HTTP port really answers
        _wait_http(prefix, http, timeout)
    return dp


def _wait_http(prefix: Sequence[str], http: tuple[str, int], timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    url = f"http://{http[0]}:{http[1]}/healthz"
    while time.monotonic() < deadline:
        if prefix:  # another netns: ask from inside it
            r = subprocess.run([*prefix, sys.executable, "-c",
                                f"import urllib.request as u; u.urlopen({url!r}, timeout=1)"],
                               capture_output=True)
            if r.returncode == 0:
                return
        else:
            try:
                urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 - our own 127.0.0.1
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"the approval API did not answer on {url} within {timeout:.0f} s")


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


def scale_results(groups: str, glassbreak: str = GLASSBREAK, *,
                  quick: bool = False) -> dict[str, Any]:
    """bench/run.py's hook: the issue-5 scale groups ("concurrency", "latency") as JSON, each
    `n/a` with the reason when it cannot run (never a silent gap)."""
    out: dict[str, Any] = {}
    names = [g.strip() for g in groups.split(",") if g.strip()]
    for name in names:
        try:
            if name == "concurrency":
                out[name] = measure(20 if quick else 50, glassbreak=glassbreak)
                r = out[name]
                verdict = "none lost or crossed" if r["ok"] else \
                    f"{len(r['problems'])} PROBLEMS, first: {r['problems'][0][:200]}"
                print(f"[bench] concurrency: {r['runs']} runs, {r['throughput_runs_per_s']} "
                      f"runs/s, {verdict}", file=sys.stderr, flush=True)
            elif name == "latency":
                from latency import measure as measure_latency

                out[name] = measure_latency(2 if quick else 5, glassbreak=glassbreak)
                print("[bench] escalation latency (median ms): " + ", ".join(
                    f"{k[:-3]} {v['median']}" for k, v in out[name].items()
                    if isinstance(v, dict)), file=sys.stderr, flush=True)
            else:
                out[name] = {"status": "n/a", "reason": f"unknown scale group {name!r}"}
        except Exception as e:  # noqa: BLE001 - one group failing must not lose the others
            out[name] = {"status": "n/a", "reason": f"{type(e).__name__}: {e}"}
            print(f"[bench] {name}: n/a: {e}", file=sys.stderr, flush=True)
    return out


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
