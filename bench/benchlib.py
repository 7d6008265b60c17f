"""The pure parts of the glassbreak benchmark: variants, statistics, ratios, targets, the table.

No I/O here (bench/run.py does the processes, files and the chart), so it is unit-tested with
fake timings (tests/unit/test_bench.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EXEC_LOOP = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"


@dataclass(frozen=True)
class Wrapper:
    """How a command is started: bare, under bwrap, firejail, glassbreak... `phase` "warm"
    means it needs the glassbreak daemon running (started by the harness for that phase)."""

    name: str
    prefix: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    phase: str = "cold"


@dataclass(frozen=True)
class Workload:
    name: str       # group: startup | exec-heavy | syscall-heavy | connect-heavy | dns-...
    argv: tuple[str, ...]
    profile: str = "readonly"  # the glassbreak profile this workload runs under


@dataclass(frozen=True)
class Variant:
    """A name and an argv: the unit the harness measures."""

    name: str
    group: str
    wrapper: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    phase: str = "cold"


def workloads(execs: int = 500, dd_count: int = 500_000,
              bench_profile: str = "readonly") -> list[Workload]:
    return [
        Workload("startup", ("/bin/true",)),
        Workload("exec-heavy", ("/bin/sh", "-c", EXEC_LOOP.format(n=execs)), bench_profile),
        Workload("syscall-heavy", ("/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1",
                                   f"count={dd_count}"), bench_profile),
    ]


def net_workloads(python: str, netload: str, tcp_port: int, dns: tuple[str, int],
                  net_profile: str, connects: int = 10_000, lookups: int = 1_000,
                  distinct: int = 300) -> list[Workload]:
    """The network layer's workloads (bench/netload.py, loopback only): TCP connects to a local
    accept-and-close server, DNS lookups of one name (what a client does: the resolver's cache
    answers) and of distinct names (each forwarded upstream and inserted in the run's map).
    Bare asks the local DNS server itself; under glassbreak the same port-53 query is steered
    to glassbreak's resolver, which forwards to that server."""
    host, port = dns
    return [
        Workload("connect-heavy", (python, "-S", netload, "connect", "127.0.0.1",
                                   str(tcp_port), str(connects)), net_profile),
        Workload("dns-heavy", (python, "-S", netload, "dns", host, str(port), "www.bench.test",
                               str(lookups)), net_profile),
        Workload("dns-distinct", (python, "-S", netload, "dns-distinct", host, str(port),
                                  "bench.test", str(distinct)), net_profile),
    ]


def glassbreak_prefix(glassbreak: str, profile: str, extra: tuple[str, ...] = ()
                      ) -> tuple[str, ...]:
    return (glassbreak, "run", "--profile", profile, *extra, "--")


def make_variants(wrappers: Sequence[Wrapper], loads: Sequence[Workload],
                  glassbreak: str, only: Mapping[str, Sequence[str]] | None = None
                  ) -> list[Variant]:
    """Every wrapper x workload, except where `only[group]` lists the wrappers of a group.
    A wrapper whose prefix starts with the marker "glassbreak" gets the workload's profile (the
    rest of its prefix are `run` options, e.g. ("glassbreak", "--degraded", "landlock"))."""
    out: list[Variant] = []
    for load in loads:
        allowed = None if only is None else only.get(load.name)
        for w in wrappers:
            if allowed is not None and w.name not in allowed:
                continue
            prefix = (glassbreak_prefix(glassbreak, load.profile, w.prefix[1:])
                      if w.prefix[:1] == ("glassbreak",) else w.prefix)
            out.append(Variant(name=f"{load.name}/{w.name}", group=load.name, wrapper=w.name,
                               argv=(*prefix, *load.argv), env=w.env, phase=w.phase))
    return out


def summarize(times: Sequence[float]) -> dict[str, float | int]:
    """median (the figure every ratio uses), mean, min, max, stdev, n. Seconds."""
    if not times:
        raise ValueError("no timings")
    return {
        "n": len(times),
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "min": min(times),
        "max": max(times),
        "stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
    }


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or math.isnan(num) or math.isnan(den):
        return None
    return num / den


def net_ratio(num: float | None, den: float | None, num_base: float | None,
              den_base: float | None) -> float | None:
    """Ratio of the work alone, start-up subtracted: (num - num_base) / (den - den_base).
    Shows what a warm daemon would give when only a cold run could be measured."""
    if None in (num, den, num_base, den_base):
        return None
    assert num is not None and den is not None and num_base is not None and den_base is not None
    if num - num_base <= 0 or den - den_base <= 0:
        return None  # noise larger than the work: no meaningful figure
    return ratio(num - num_base, den - den_base)


@dataclass(frozen=True)
class Target:
    """PASS when value <= limit. kind "ratio": num/den medians; "seconds": num's median."""

    name: str
    source: str  # issue that set it
    kind: str
    num: str
    limit: float
    den: str | None = None


@dataclass
class TargetResult:
    target: Target
    value: float | None
    status: str  # PASS | MISS | n/a
    why: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        t = self.target
        return {"name": t.name, "source": t.source, "kind": t.kind, "num": t.num, "den": t.den,
                "limit": t.limit, "value": self.value, "status": self.status, "why": self.why}


def default_targets() -> list[Target]:
    return [
        Target("warm run /bin/true <= 2.5x bwrap", "issue 5", "ratio",
               "startup/glassbreak-warm", 2.5, "startup/bwrap"),
        Target("warm run /bin/true <= firejail", "issue 5", "ratio",
               "startup/glassbreak-warm", 1.0, "startup/firejail"),
        Target("cold run /bin/true < 1.5 s", "issue 5", "seconds",
               "startup/glassbreak-cold", 1.5),
        Target("exec-heavy (warm) <= 1.5x bare", "issue 3", "ratio",
               "exec-heavy/glassbreak-warm", 1.5, "exec-heavy/bare"),
        Target("syscall-heavy (warm) <= 1.10x bare", "issue 3", "ratio",
               "syscall-heavy/glassbreak-warm", 1.10, "syscall-heavy/bare"),
        Target("exec-heavy (cold) <= 1.5x bare", "issue 3", "ratio",
               "exec-heavy/glassbreak-cold", 1.5, "exec-heavy/bare"),
        Target("syscall-heavy (cold) <= 1.10x bare", "issue 3", "ratio",
               "syscall-heavy/glassbreak-cold", 1.10, "syscall-heavy/bare"),
        Target("connect-heavy (warm) <= 1.10x bare", "issue 11", "ratio",
               "connect-heavy/glassbreak-warm", 1.10, "connect-heavy/bare"),
        Target("dns-heavy (warm) <= 1.10x bare", "issue 11", "ratio",
               "dns-heavy/glassbreak-warm", 1.10, "dns-heavy/bare"),
        Target("dns-distinct (warm) <= 1.10x bare", "issue 11", "ratio",
               "dns-distinct/glassbreak-warm", 1.10, "dns-distinct/bare"),
        Target("warm run: network layer adds <= 0.5 ms", "issue 11", "seconds",
               "startup/network-layer-delta", 0.0005),
    ]


def evaluate(targets: Sequence[Target], medians: Mapping[str, float | None],
             reasons: Mapping[str, str] | None = None) -> list[TargetResult]:
    """medians: variant name -> median seconds, or None when the variant was n/a (its reason in
    `reasons`). A target whose inputs are n/a is n/a itself, with the reason; never a PASS."""
    reasons = reasons or {}
    out: list[TargetResult] = []
    for t in targets:
        names = [t.num] + ([t.den] if t.den else [])
        missing = [n for n in names if medians.get(n) is None]
        if missing:
            why = "; ".join(f"{n}: {reasons.get(n, 'not measured')}" for n in missing)
            out.append(TargetResult(t, None, "n/a", why))
            continue
        if t.kind == "ratio":
            value = ratio(medians[t.num], medians[t.den or ""])
        elif t.kind == "seconds":
            value = medians[t.num]
        else:
            raise ValueError(f"unknown target kind {t.kind!r}")
        if value is None:
            out.append(TargetResult(t, None, "n/a", "ratio undefined (zero baseline)"))
            continue
        out.append(TargetResult(t, value, "PASS" if value <= t.limit else "MISS"))
    return out


def paired_delta(with_layer: Sequence[float], without: Sequence[float]) -> float | None:
    """The median of the differences of runs measured in alternation (a, b, a, b, ...): what
    one layer adds, robust to the drift of a shared machine that medians of whole sets are not."""
    diffs = [a - b for a, b in zip(with_layer, without, strict=False)]
    return statistics.median(diffs) if diffs else None


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 0:
        return "-" + fmt_seconds(-s)
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def render_table(results: Mapping[str, Mapping[str, Any]], baselines: Mapping[str, str]) -> str:
    """One line per variant: median, spread, ratio to the group's baseline (or the n/a reason).
    results: variant -> {"group", "status", "summary"?, "reason"?}; baselines: group -> variant."""
    lines = [f"{'variant':<34} {'median':>10} {'min':>10} {'max':>10} {'x base':>8}"]
    for name, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"{name:<34} {'n/a':>10}  {r.get('reason', '')}")
            continue
        s = r["summary"]
        base = results.get(baselines.get(r["group"], ""), {})
        b = base.get("summary", {}).get("median") if base.get("status") == "ok" else None
        x = ratio(s["median"], b)
        xs = f"{x:.2f}x" if x is not None else "-"
        lines.append(f"{name:<34} {fmt_seconds(s['median']):>10} {fmt_seconds(s['min']):>10} "
                     f"{fmt_seconds(s['max']):>10} {xs:>8}")
    return "\n".join(lines)


def render_targets(results: Sequence[TargetResult]) -> str:
    lines = []
    for r in results:
        t = r.target
        if r.value is None:
            val = "n/a"
        elif t.kind == "ratio":
            val = f"{r.value:.2f}x"
        else:
            val = fmt_seconds(r.value)
        limit = f"{t.limit:g}x" if t.kind == "ratio" else fmt_seconds(t.limit)
        tail = f"  ({r.why})" if r.why else ""
        lines.append(f"{r.status:<4} {t.name:<40} {val:>9} (limit {limit}, {t.source}){tail}")
    return "\n".join(lines)
