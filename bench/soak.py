"""Soak the daemon: thousands of warm runs through ONE `glassbreak serve`, interleaved with bad
input on its socket, then the same fd count, threads and (almost) the same memory as after the
warm-up. An agent makes a thousand tool calls an afternoon; a daemon that leaks one fd per run
stops serving after ~1,000 (it did: issue 8).

    .venv/bin/python bench/soak.py [--runs 10000] [--json]

Every run must exit 0 with its own output. Every 50th run is preceded by one bad connection
(garbage bytes, a truncated JSON line, a request without fds, a huge line, a connect-and-close):
each gets its own clear answer or a close, never the daemon's death. Sampled after the warm-up
(the first 2% of runs, at least 50; `warmup`), half-way and at the end: open fds, threads, RSS.

Used by tests/integration/test_soak.py (1,000 runs) and `make bench` (10,000: bench/run.py's
`soak` scale group).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemons import GLASSBREAK, start_daemon

RSS_SLACK_KB = 16 * 1024  # allocator noise and caches that settle; a per-run leak is far above


def sample(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    field = {k.strip(): v.split()[0] for k, _, v in
             (line.partition(":") for line in status.splitlines()) if v.strip()}
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(field["Threads"]),
            "rss_kb": int(field["VmRSS"])}


def settled(pid: int, wait_s: float = 3.0) -> dict[str, int]:
    """A sample once the daemon is idle: the last run's connection thread outlives the client's
    reply by a moment, and the resolver closes a finished run's sockets and refills its pool a
    little later, so wait until two samples 200 ms apart agree on fds and threads (or `wait_s`
    passed)."""
    deadline = time.monotonic() + wait_s
    prev = sample(pid)
    while True:
        time.sleep(0.2)
        s = sample(pid)
        if (s["threads"], s["fds"]) == (prev["threads"], prev["fds"]) or \
                time.monotonic() > deadline:
            return s
        prev = s


BAD_INPUTS: list[bytes | None] = [
    b"\x00\xff garbage that is not JSON\n",
    b'{"argv": ["true"], "env": {}',  # truncated, then closed
    b'{"argv": "not a list", "env": {}}\n',  # valid JSON, wrong types, no fds
    b'{"argv": [' + b'"x",' * 300_000 + b'"y"]}\n',  # ~1.2 MB line
    None,  # connect and close at once
]


def bad_connection(sock: str, payload: bytes | None) -> str:
    """Send one bad input; return what happened (the daemon must answer or close, not hang)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(sock)
        if payload is None:
            return "client closed at once"
        if payload is not None:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                return "closed while sending"
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace").strip()[:200] or "closed"
    finally:
        s.close()


def measure(runs: int = 10_000, glassbreak: str = GLASSBREAK,
            progress: bool = False, warmup: int | None = None) -> dict[str, Any]:
    """`warmup` runs (default 2%, at least 50) before the first sample; the second-half check
    compares the sample half-way through the measured runs with the last one. The daemon's
    caches and allocator arenas fill over its first ~1,000-2,000 runs here (~16 MB with every
    layer on), then stay flat (+8 kB over 5,000 runs): a short soak warms up past that."""
    work = Path(tempfile.mkdtemp(prefix="gb-soak-"))
    dp = start_daemon(work, glassbreak=glassbreak)
    env = dict(os.environ, GLASSBREAK_SOCKET=str(dp.sock), PATH="/usr/bin:/bin")
    env.pop("GLASSBREAK_NO_DAEMON", None)
    failures: list[str] = []
    bad_answers: dict[str, int] = {}
    warm = warmup if warmup is not None else max(50, runs // 50)
    before: dict[str, int] = {}
    half: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        for i in range(runs):
            if i == warm:
                before = settled(dp.proc.pid)
            if i % 50 == 25:
                ans = bad_connection(str(dp.sock), BAD_INPUTS[(i // 50) % len(BAD_INPUTS)])
                bad_answers[ans[:80]] = bad_answers.get(ans[:80], 0) + 1
            marker = f"soak-{i}"
            r = subprocess.run([glassbreak, "run", "-p", "readonly", "--", "echo", marker],
                               capture_output=True, text=True, timeout=60, env=env)
            if r.returncode != 0 or r.stdout != marker + "\n":
                failures.append(f"run {i}: exit {r.returncode}, stdout {r.stdout[:80]!r}, "
                                f"stderr {r.stderr[-300:]!r}")
                if len(failures) > 20:
                    break
            if dp.proc.poll() is not None:
                failures.append(f"the daemon died after run {i}: {dp.stderr_tail()}")
                break
            if i == (warm + runs) // 2:
                half = settled(dp.proc.pid)
            if progress and i and i % 1000 == 0:
                print(f"[soak] {i} runs, {sample(dp.proc.pid)}", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - t0
        after = settled(dp.proc.pid) if dp.proc.poll() is None else {}
    finally:
        dp.stop()
        shutil.rmtree(work, ignore_errors=True)
    problems = list(failures)
    if before and after:
        # growth is a leak; fewer (a thread of the warm-up that ended late) is not
        if after["fds"] > before["fds"]:
            problems.append(f"open fds {before['fds']} -> {after['fds']}")
        if after["threads"] > before["threads"]:
            problems.append(f"threads {before['threads']} -> {after['threads']}")
        # a leak grows with the runs; caches and allocator arenas settle in the first half
        if half and after["rss_kb"] - half["rss_kb"] > RSS_SLACK_KB // 4:
            problems.append(f"RSS still growing in the second half: {half['rss_kb']} kB -> "
                            f"{after['rss_kb']} kB")
        if after["rss_kb"] - before["rss_kb"] > RSS_SLACK_KB:
            problems.append(f"RSS {before['rss_kb']} kB -> {after['rss_kb']} kB")
    return {"runs": runs, "seconds": round(elapsed, 1),
            "runs_per_s": round(runs / elapsed, 1) if elapsed else None,
            "after_warmup": before, "half_way": half, "at_end": after,
            "bad_inputs": bad_answers,
            "problems": problems, "ok": not problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.runs, progress=not args.json)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"soak: {res['runs']} warm runs in {res['seconds']} s ({res['runs_per_s']}/s)")
        print(f"  after warm-up: {res['after_warmup']}")
        print(f"  half way:      {res['half_way']}")
        print(f"  at the end:    {res['at_end']}")
        for ans, n in res["bad_inputs"].items():
            print(f"  bad input x{n}: {ans}")
        print("  OK: fds, threads and memory flat" if res["ok"] else
              "  PROBLEMS:\n    " + "\n    ".join(res["problems"]))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
