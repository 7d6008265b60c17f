"""glassbreak benchmark harness (`make bench`): start-up, exec-heavy and syscall-heavy workloads,
bare vs bwrap vs firejail vs glassbreak (cold, in-process) vs glassbreak (warm, daemon), measured
side by side in ONE run (round-robin, after warm-ups), medians and ratios, PASS/MISS per target;
then the real-workload suite (bench/workloads.py: git, make -j2, pytest, find | xargs grep,
seq | xargs under the shipped developer profiles, each against the same work bare).

Why this module is long: the `make bench` harness as one script: its workloads, the daemon and
network fixtures it starts and stops, and the chart of the results share one run's state and are
read top to bottom.

Results: bench/results/latest.json and bench/results/latest.png. See bench/README.md.

A variant is a name and an argv. One whose binary or subcommand is missing, or that fails its
probe run, is reported as n/a with the reason; the harness never crashes on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (  # noqa: E402
    TargetResult,
    Variant,
    Wrapper,
    default_targets,
    evaluate,
    make_variants,
    net_ratio,
    net_workloads,
    paired_delta,
    ratio,
    render_table,
    render_targets,
    summarize,
    workloads,
)

REPO = Path(__file__).resolve().parent.parent
# How the harness tells `glassbreak run` which daemon socket to use (the warm path) and that
# there is none (the cold path): the client uses the daemon when this socket exists.
SOCKET_ENV = "GLASSBREAK_SOCKET"
DEFAULT_SOCKET = "/run/glassbreak/glassbreak.sock"
BENCH_PROFILE = """\
# Written by bench/run.py: the benchmark workloads (a sh loop of /bin/true, dd) on the base
# syscall baseline, every layer on.
name: bench
description: glassbreak benchmark workloads
extends: base
owners: [bench]
exec:
  allow: [sh, dash, "true", dd]
  default: block
"""
NET_PROFILE = """\
# Written by bench/run.py: the network workloads (bench/netload.py) on base, every layer on.
name: benchnet
description: glassbreak network benchmark workloads
extends: base
owners: [bench]
exec:
  allow: [python3, /usr/bin/python3*]
network:
  allow: ["localhost:{port}", "www.bench.test:443", "*.bench.test:443"]
"""
BENCH_DNS = ("127.0.0.54", 53)  # the bench's DNS server (a loopback address port 53 is free on)
ONLY = {  # which wrappers run which workload (start-up: all of them)
    "exec-heavy": ["bare", "bwrap", "glassbreak-cold", "glassbreak-warm"],
    "syscall-heavy": ["bare", "bwrap", "glassbreak-cold", "glassbreak-warm",
                      "glassbreak-warm-nolandlock"],
    "connect-heavy": ["bare", "glassbreak-warm"],
    "dns-heavy": ["bare", "glassbreak-warm"],
    "dns-distinct": ["bare", "glassbreak-warm"],
}
BASELINES = {"startup": "startup/bare", "exec-heavy": "exec-heavy/bare",
             "syscall-heavy": "syscall-heavy/bare", "connect-heavy": "connect-heavy/bare",
             "dns-heavy": "dns-heavy/bare", "dns-distinct": "dns-distinct/bare"}
NET_GROUPS = ("connect-heavy", "dns-heavy", "dns-distinct")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def wrappers(nosock: str, sock: str | None) -> list[Wrapper]:
    warm_env = ((SOCKET_ENV, sock),) if sock else ()
    return [
        Wrapper("bare", ()),
        Wrapper("bwrap", ("bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                          "--unshare-pid")),
        Wrapper("firejail", ("firejail", "--quiet", "--noprofile", "--seccomp")),
        Wrapper("glassbreak-cold", ("glassbreak",), ((SOCKET_ENV, nosock),)),
        Wrapper("glassbreak-warm", ("glassbreak",), warm_env, phase="warm"),
        # the same warm run without the network layer: what the layer costs a run
        Wrapper("glassbreak-warm-nonet", ("glassbreak", "--degraded", "network"), warm_env,
                phase="warm"),
        # the same without the Landlock layer: what it costs a warm run, end to end
        Wrapper("glassbreak-warm-nolandlock", ("glassbreak", "--degraded", "landlock"),
                warm_env, phase="warm"),
    ]


def _tail(text: str | bytes | None, n: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:n] if lines else ""


def env_for(v: Variant, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(dict(v.env))
    return env


def probe(v: Variant, env: dict[str, str]) -> str | None:
    """None when the variant works, else why it is n/a."""
    exe = v.argv[0]
    if shutil.which(exe) is None and not os.access(exe, os.X_OK):
        return f"{exe} is not installed"
    try:
        res = subprocess.run(list(v.argv), env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    except subprocess.TimeoutExpired:
        return "probe run timed out after 120 s"
    except OSError as e:
        return f"cannot start {exe}: {e}"
    if res.returncode != 0:
        return f"probe exited {res.returncode}: {_tail(res.stderr) or 'no message'}"
    return None


class Daemon:
    """The warm path: an already running daemon (its socket exists), or one the harness starts
    and ends by pid. `reason` says why there is none."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket: str | None = None
        self.mode = "off"
        self.reason = ""
        self._log: Any = None

    def start(self, how: str, glassbreak: str, workdir: Path, env: dict[str, str]) -> None:
        if how == "off":
            self.reason = "daemon disabled (--daemon off)"
            return
        if how != "auto":
            if _is_socket(how):
                self.socket, self.mode = how, "external"
            else:
                self.reason = f"no daemon socket at {how}"
            return
        for cand in (os.environ.get(SOCKET_ENV), DEFAULT_SOCKET):
            if cand and _is_socket(cand):
                self.socket, self.mode = cand, "external"
                log(f"using the running daemon at {cand}")
                return
        try:
            helptext = subprocess.run([glassbreak, "serve", "--help"], capture_output=True,
                                      text=True, timeout=60, env=env).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            self.reason = f"cannot run `glassbreak serve --help`: {e}"
            return
        if "socket" not in helptext.lower():
            self.reason = ("`glassbreak serve` has no run socket in this build (approval API "
                           "only): the warm path is not there yet")
            return
        sock = str(workdir / "glassbreak.sock")
        env = dict(env, **{SOCKET_ENV: sock})
        argv = [glassbreak, "serve", "--socket", sock, "--host", "127.0.0.1",
                "--port", str(_free_port())]
        log(f"starting the daemon: {SOCKET_ENV}={sock} {' '.join(argv)}")
        self._log = open(workdir / "serve.log", "w+b")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT)
        except OSError as e:
            self.reason = f"cannot start `glassbreak serve`: {e}"
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _is_socket(sock):
                self.socket, self.mode = sock, "started"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self._log.seek(0)
        out = _tail(self._log.read())
        rc = self.proc.poll()
        self.stop()
        self.reason = (f"`glassbreak serve` exited {rc}: {out or 'no message'}" if rc is not None
                       else f"`glassbreak serve` made no socket within 20 s: {out}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(variants: list[Variant], envs: dict[str, dict[str, str]], reps: int, warmup: int,
            results: dict[str, dict[str, Any]]) -> None:
    """Round-robin over the group's working variants, so drift hits all of them alike."""
    live = [v for v in variants if results[v.name]["status"] == "ok"]
    for v in live:
        for _ in range(warmup):
            subprocess.run(list(v.argv), env=envs[v.name], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    for _ in range(reps):
        for v in live:
            r = results[v.name]
            if r["status"] != "ok":
                continue
            t0 = time.perf_counter()
            res = subprocess.run(list(v.argv), env=envs[v.name], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
            elapsed = time.perf_counter() - t0
            if res.returncode != 0:
                r["status"] = "n/a"
                r["reason"] = f"exited {res.returncode} mid-run: {_tail(res.stderr)}"
                continue
            r["times"].append(elapsed)


def chart(data: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no chart: matplotlib is missing ({e}); make setup installs it"
    groups = list(BASELINES)
    suite = (data.get("workloads") or {}).get("workloads") or {}
    panels = len(groups) + (1 if suite else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.2 + 1.1 * len(data["variants"]) / 2
                                                   + (2.2 if suite else 0)))
    if suite:
        _workload_panel(axes[-1], suite)
    for ax, g in zip(axes, groups, strict=False):
        rows = [(n.split("/", 1)[1], r) for n, r in data["variants"].items() if r["group"] == g]
        labels = [n for n, _ in rows]
        med = [r["summary"]["median"] * 1e3 if r["status"] == "ok" else 0.0 for _, r in rows]
        lo = [m - r["summary"]["min"] * 1e3 if r["status"] == "ok" else 0.0
              for m, (_, r) in zip(med, rows, strict=True)]
        hi = [r["summary"]["max"] * 1e3 - m if r["status"] == "ok" else 0.0
              for m, (_, r) in zip(med, rows, strict=True)]
        colors = ["#c0392b" if n.startswith("glassbreak") else "#7f8c8d" for n in labels]
        ax.barh(labels, med, xerr=[lo, hi], color=colors, capsize=3)
        for i, (_, r) in enumerate(rows):
            text = f" {med[i]:.1f} ms" if r["status"] == "ok" else " n/a"
            ax.text(med[i] + hi[i], i, text, va="center", fontsize=8)
        ax.set_title(f"{g} (median, whiskers min..max)", fontsize=10)
        ax.set_xlabel("ms")
        ax.invert_yaxis()
    m = data["meta"]
    fig.suptitle(f"glassbreak bench {m['timestamp']}  kernel {m['kernel']}  "
                 f"{m['cpus']} CPUs  reps={m['reps']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def landlock_results(quick: bool) -> dict[str, Any]:
    """The Landlock layer measured on its own (bench/landlock.py), n/a with the reason."""
    try:
        from landlock import measure

        log("measuring the Landlock layer (per run, per syscall)")
        return measure(quick)
    except Exception as e:  # noqa: BLE001 - reported, never a crash of the harness
        return {"status": "n/a", "reason": f"{type(e).__name__}: {e}"}


def landlock_notes(data: dict[str, Any]) -> list[str]:
    ll = data.get("landlock") or {}
    if "per_run_us" not in ll:
        return [f"landlock: n/a ({ll.get('reason', 'not measured')})"]
    out = [f"landlock layer per warm run: {ll['per_run_us']:.0f} us (supervisor "
           f"{ll['supervisor_warm_us']:.0f} us + child restrict_self "
           f"{ll['child_restrict_self_us']:.0f} us; target <= 500 us: {ll['target']}); cold "
           f"cache {ll['supervisor_cold_us'] / 1000:.1f} ms",
           f"landlock per syscall: dd bs=1 (1 M read/write) {ll['dd_ratio']:.3f}x in a domain; "
           f"open+close {ll['open_close_outside_ns'] / 1000:.1f} -> "
           f"{ll['open_close_in_domain_ns'] / 1000:.1f} us (the path walk)"]
    v = data["variants"]
    for g in ("startup", "syscall-heavy"):
        a, b = v.get(f"{g}/glassbreak-warm", {}), v.get(f"{g}/glassbreak-warm-nolandlock", {})
        if a.get("status") == "ok" and b.get("status") == "ok":
            d = (a["summary"]["median"] - b["summary"]["median"]) * 1e3
            out.append(f"{g}: warm run with Landlock {a['summary']['median'] * 1e3:.2f} ms, "
                       f"without (--degraded landlock) {b['summary']['median'] * 1e3:.2f} ms "
                       f"({d:+.2f} ms, end-to-end medians)")
    return out


def _workload_panel(ax: Any, suite: dict[str, Any]) -> None:
    """The real-workload suite: warm and cold ratio to bare per workload (bars: the median of the
    per-round paired ratios; whiskers: their min..max), the target as a tick, the verdict."""
    names = list(suite)
    ys = range(len(names))
    for off, v, color in ((-0.2, "warm", "#c0392b"), (0.2, "cold", "#e6b0aa")):
        vals, lo, hi = [], [], []
        for n in names:
            pr = suite[n].get("variants", {}).get(v, {}).get("paired_ratio")
            r = pr["median"] if pr else None
            vals.append(r or 0.0)
            lo.append(max((r or 0.0) - pr["min"], 0.0) if r and pr else 0.0)
            hi.append(max(pr["max"] - (r or 0.0), 0.0) if r and pr else 0.0)
        ax.barh([y + off for y in ys], vals, height=0.38, xerr=[lo, hi], color=color,
                capsize=2, label=f"glassbreak {v} / bare")
    for y, n in zip(ys, names, strict=True):
        t = suite[n].get("target", {})
        ax.plot([t.get("limit", 1.0)] * 2, [y - 0.45, y + 0.45], color="black", lw=1)
        r = t.get("value")
        ax.text(0.995, y - 0.2, f"{t.get('status', 'n/a')}" + (f" {r:.2f}x" if r else ""),
                va="center", ha="right", fontsize=7, transform=ax.get_yaxis_transform(),
                color="#1e8449" if t.get("status") == "PASS" else "#c0392b")
    ax.set_yticks(list(ys), [f"{n} ({suite[n].get('profile', '')})" for n in names])
    ax.axvline(1.0, color="#7f8c8d", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("time / bare (log; black tick: the target; whiskers: per-round min..max)")
    ax.set_title("real workloads (issue 13), enforce mode, developer profiles", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.invert_yaxis()


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return res.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=10, help="measured repetitions per variant")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured runs first")
    ap.add_argument("--quick", action="store_true", help="3 reps, 1 warm-up (a smoke run)")
    ap.add_argument("--execs", type=int, default=500, help="execs in the exec-heavy loop")
    ap.add_argument("--dd-count", type=int, default=500_000, help="dd bs=1 count")
    ap.add_argument("--groups", default="startup,exec-heavy,syscall-heavy,connect-heavy,"
                    "dns-heavy,dns-distinct,workloads",
                    help="'workloads' is the real-workload suite (bench/workloads.py)")
    ap.add_argument("--connects", type=int, default=10_000, help="TCP connects (connect-heavy)")
    ap.add_argument("--lookups", type=int, default=1_000, help="DNS lookups (dns-heavy)")
    ap.add_argument("--workloads", default="",
                    help="only these workloads of the suite (comma-separated; default all)")
    ap.add_argument("--workload-reps", type=int, default=10,
                    help="rounds of the real-workload suite (--quick: 3)")
    ap.add_argument("--layers", action="store_true",
                    help="workloads: also time warm runs with one layer off (--degraded)")
    ap.add_argument("--glassbreak", default=str(Path(sys.executable).parent / "glassbreak"),
                    help="the console script (not a pyenv shim: it adds ~150 ms)")
    ap.add_argument("--daemon", default="auto",
                    help="auto (use a running daemon, else start one), off, or a socket path")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is MISS")
    ap.add_argument("--landlock", action=argparse.BooleanOptionalAction, default=True,
                    help="the Landlock layer's own costs (bench/landlock.py)")
    ap.add_argument("--scale", default="concurrency,latency,soak",
                    help="scale groups (bench/concurrency.py, bench/latency.py, bench/soak.py); "
                    "'' skips")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.warmup = min(args.reps, 3), min(args.warmup, 1)
        args.workload_reps = min(args.workload_reps, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="glassbreak-bench-") as tmp:
        work = Path(tmp)
        prof = work / "bench.yaml"
        prof.write_text(BENCH_PROFILE)
        state = work / "state"
        state.mkdir()
        base_env = dict(os.environ, GLASSBREAK_STATE_DIR=str(state),
                        GLASSBREAK_DNS_UPSTREAM=f"{BENCH_DNS[0]}:{BENCH_DNS[1]}")
        servers = NetServers()
        servers.start()
        daemon = Daemon()
        daemon.start(args.daemon, args.glassbreak, work, base_env)
        try:
            data, targets = run_all(args, work, prof, base_env, daemon, servers)
        finally:
            daemon.stop()
            servers.stop()
    from scale import scale_results  # 50 concurrent runs; escalation latency

    data["scale"] = scale_results(args.scale, args.glassbreak, quick=args.quick)
    if args.landlock:
        data["landlock"] = landlock_results(args.quick)
        data["notes"] += landlock_notes(data)
    if "workloads" in [g.strip() for g in args.groups.split(",")]:
        from workloads import run_suite  # the real-workload suite (issue 13)

        only = [w.strip() for w in args.workloads.split(",") if w.strip()] or None
        data["workloads"] = run_suite(reps=args.workload_reps, warmup=1, only=only,
                                      glassbreak=args.glassbreak, layers=args.layers)
        data["targets"] += [r["target"] | {"source": "issue 13", "kind": "ratio"}
                            for r in data["workloads"]["workloads"].values()]

    (out / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    why = chart(data, out / "latest.png")
    print()
    print(render_table(data["variants"], BASELINES))
    print()
    for line in data["notes"]:
        print(line)
    print()
    print(render_targets(targets))
    if "workloads" in data:
        from workloads import render as render_workloads

        print()
        print(render_workloads(data["workloads"]))
    print(f"\nresults: {out / 'latest.json'}" + (f"\n{why}" if why else
                                                   f"  chart: {out / 'latest.png'}"))
    missed = any(t["status"] in ("MISS", "FALSE BLOCK") for t in data["targets"])
    return 1 if (args.strict and missed) else 0


class NetServers:
    """bench/netload.py serve: an accept-and-close TCP server and a DNS server on loopback,
    in their own process (ended by pid)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.reason = ""

    def start(self) -> None:
        self.port = _free_port()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", str(Path(__file__).parent / "netload.py"), "serve",
                 "--tcp-port", str(self.port), "--dns", f"{BENCH_DNS[0]}:{BENCH_DNS[1]}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except OSError as e:
            self.reason = f"cannot start the bench's servers: {e}"
            return
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.reason = f"the bench's servers did not start: {_tail(self.proc.stderr.read())}"
            self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def layer_cost(reason: str) -> dict[str, Any]:
    """The network layer's own cost per run, in process (bench/netload.py layer-cost)."""
    if reason:
        return {"status": "n/a", "reason": reason}
    try:
        r = subprocess.run([sys.executable, str(Path(__file__).parent / "netload.py"),
                            "layer-cost", "200"], capture_output=True, text=True, timeout=600)
        med, p90 = (float(x) for x in r.stdout.split()[:2])
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"status": "n/a", "reason": f"layer-cost failed: {e}"}
    return {"status": "ok", "median_us": med, "p90_us": p90}


def paired_network_delta(results: dict[str, dict[str, Any]], envs: dict[str, dict[str, str]],
                         pairs: int) -> float | None:
    """Warm /bin/true with and without the network layer, alternated `pairs` times."""
    a, b = "startup/glassbreak-warm", "startup/glassbreak-warm-nonet"
    if any(results.get(n, {}).get("status") != "ok" for n in (a, b)):
        return None
    with_, without = [], []
    for _ in range(pairs):
        for name, out in ((a, with_), (b, without)):
            t0 = time.perf_counter()
            subprocess.run(results[name]["argv"], env=envs[name], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            out.append(time.perf_counter() - t0)
    results[a].setdefault("paired", {})["times_with"] = with_
    results[b].setdefault("paired", {})["times_without"] = without
    return paired_delta(with_, without)


def run_all(args: argparse.Namespace, work: Path, prof: Path, base_env: dict[str, str],
            daemon: Daemon, servers: NetServers | None = None
            ) -> tuple[dict[str, Any], list[TargetResult]]:
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    loads = [w for w in workloads(args.execs, args.dd_count, str(prof)) if w.name in groups]
    net_reason = "" if servers is not None and servers.proc is not None else (
        servers.reason if servers is not None else "no servers")
    if servers is not None and servers.proc is not None:
        netprof = work / "benchnet.yaml"
        netprof.write_text(NET_PROFILE.format(port=servers.port))
        loads += [w for w in net_workloads(
            "/usr/bin/python3", str(Path(__file__).parent / "netload.py"), servers.port,
            BENCH_DNS, str(netprof), args.connects, args.lookups) if w.name in groups]
    variants = make_variants(wrappers(str(work / "no-daemon" / "gb.sock"), daemon.socket), loads,
                             args.glassbreak, ONLY)
    results: dict[str, dict[str, Any]] = {}
    envs: dict[str, dict[str, str]] = {}
    for v in variants:
        envs[v.name] = env_for(v, base_env)
        reason = (daemon.reason or "no daemon") if v.phase == "warm" and not daemon.socket \
            else probe(v, envs[v.name])
        if reason is None and v.group in NET_GROUPS and net_reason:
            reason = net_reason
        results[v.name] = {"group": v.group, "wrapper": v.wrapper, "phase": v.phase,
                           "argv": list(v.argv), "status": "ok" if reason is None else "n/a",
                           "reason": reason or "", "times": []}
        log(f"{v.name}: {'ok' if reason is None else 'n/a: ' + reason}")
    for g in groups:
        log(f"measuring {g}: {args.reps} reps after {args.warmup} warm-ups")
        measure([v for v in variants if v.group == g], envs, args.reps, args.warmup, results)
    delta = paired_network_delta(results, envs, max(args.reps * 4, 40))
    medians: dict[str, float | None] = {"startup/network-layer-delta": delta}
    for name, r in results.items():
        if r["status"] == "ok" and r["times"]:
            r["summary"] = summarize(r["times"])
            medians[name] = r["summary"]["median"]
        else:
            medians[name] = None
            if r["status"] == "ok":
                r["status"], r["reason"] = "n/a", "no timings"
    ratios: dict[str, float | None] = {}
    for name, r in results.items():
        ratios[name] = ratio(medians[name], medians.get(BASELINES[r["group"]]))
    notes = []
    for g in ("exec-heavy", "syscall-heavy"):
        for w in ("glassbreak-cold", "glassbreak-warm"):
            net = net_ratio(medians.get(f"{g}/{w}"), medians.get(f"{g}/bare"),
                            medians.get(f"startup/{w}"), medians.get("startup/bare"))
            ratios[f"{g}/{w} (start-up subtracted)"] = net
            if net is not None:
                notes.append(f"{g}/{w}: {net:.2f}x bare with its start-up subtracted "
                             f"(the cost of the work alone)")
    if daemon.mode == "off" or not daemon.socket:
        notes.append(f"warm path: n/a ({daemon.reason})")
    cost = layer_cost("" if os.geteuid() == 0 else "needs root")
    if cost["status"] == "ok":
        notes.append(f"network layer, in process: {cost['median_us']:.0f} us per run (median; "
                     f"p90 {cost['p90_us']:.0f} us): its own methods timed in real runs "
                     "(attach 11 programs, register, resolver socket set, entries, free)")
    reasons = {n: r["reason"] for n, r in results.items()}
    if delta is None:
        reasons["startup/network-layer-delta"] = (
            results.get("startup/glassbreak-warm-nonet", {}).get("reason") or "not measured")
    else:
        notes.append(f"the network layer adds {delta * 1e6:.0f} us to a warm run (median of "
                     f"paired differences, warm /bin/true with and without it, alternated)")
    targets = evaluate(default_targets(), medians, reasons)
    data = {
        "meta": {
            "timestamp": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "commit": git_commit(),
            "glassbreak": args.glassbreak, "reps": args.reps, "warmup": args.warmup,
            "execs": args.execs, "dd_count": args.dd_count,
            "daemon": {"mode": daemon.mode, "socket": daemon.socket, "reason": daemon.reason},
            "clock": "time.perf_counter around subprocess.run (wall time, fork+exec included)",
        },
        "variants": results,
        "ratios": ratios,
        "notes": notes,
        "targets": [t.to_dict() for t in targets],
        "network_layer_cost": cost,
    }
    return data, targets


if __name__ == "__main__":
    sys.exit(main())
