"""bench/run.py's scale groups: 50 concurrent runs through one daemon (bench/concurrency.py),
escalation latency across two hosts (bench/latency.py), and the daemon soak (bench/soak.py:
10,000 warm runs, fds/threads/memory flat)."""

from __future__ import annotations

import sys
from typing import Any

from daemons import GLASSBREAK


def scale_results(groups: str, glassbreak: str = GLASSBREAK, *,
                  quick: bool = False) -> dict[str, Any]:
    """bench/run.py's hook: the issue-5 scale groups ("concurrency", "latency") as JSON, each
    `n/a` with the reason when it cannot run (never a silent gap)."""
    out: dict[str, Any] = {}
    names = [g.strip() for g in groups.split(",") if g.strip()]
    for name in names:
        try:
            if name == "concurrency":
                from concurrency import measure

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
            elif name == "soak":
                from soak import measure as measure_soak

                out[name] = r = measure_soak(1000 if quick else 10_000, glassbreak=glassbreak)
                verdict = "fds, threads and memory flat" if r["ok"] else \
                    f"PROBLEMS: {'; '.join(r['problems'])[:300]}"
                print(f"[bench] soak: {r['runs']} warm runs, {r['runs_per_s']} runs/s, "
                      f"fds {r['after_warmup'].get('fds')} -> {r['at_end'].get('fds')}, "
                      f"RSS {r['after_warmup'].get('rss_kb')} -> {r['at_end'].get('rss_kb')} "
                      f"kB: {verdict}", file=sys.stderr, flush=True)
            else:
                out[name] = {"status": "n/a", "reason": f"unknown scale group {name!r}"}
        except Exception as e:  # noqa: BLE001 - one group failing must not lose the others
            out[name] = {"status": "n/a", "reason": f"{type(e).__name__}: {e}"}
            print(f"[bench] {name}: n/a: {e}", file=sys.stderr, flush=True)
    return out
