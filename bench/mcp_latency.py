"""`run` of /bin/true through `glassbreak mcp` (warm daemon) beside the CLI's warm run (issue 15).

One daemon (`glassbreak serve --socket`, its own state dir, a `bench` profile, a config that
binds `nobody` to agent `bench` with an agent token), then, round-robin after warm-ups:

  cli-warm        `glassbreak run -p bench -- /bin/true` (the native client; a process per run,
                  as an agent harness that shells out pays it)
  mcp-stdio       tools/call `run` {"argv": ["/bin/true"]} on ONE long-lived `glassbreak mcp`
                  stdio session (the SDK's client; the server's start-up is paid once)
  mcp-http        the same over streamable HTTP (`glassbreak mcp --http` as nobody, a bearer
                  token verified by the daemon on every HTTP request)

Times are wall-clock around the subprocess (CLI) or the awaited call_tool (MCP), medians in ms;
the daemon's own share (`duration_ms` of the run's result) is reported beside them.

    .venv/bin/python bench/mcp_latency.py [--reps 50] [--warmup 5] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import summarize  # noqa: E402
from daemons import GLASSBREAK, start_daemon  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-mcp-token"
NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
PROFILE = """\
name: bench
description: glassbreak benchmark workloads
extends: base
owners: [bench]
exec:
  allow: [sh, dash, "true"]
  default: block
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(work: Path, sock: Path, reps: int, warmup: int) -> dict[str, Any]:
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_SOCKET": str(sock),
           "HOME": "/nonexistent"}
    port = _free_port()
    http = subprocess.Popen([*NOBODY, GLASSBREAK, "mcp", "--http", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=str(work), text=True)
    times: dict[str, list[float]] = {"cli-warm": [], "mcp-stdio": [], "mcp-http": []}
    inner: dict[str, list[float]] = {"mcp-stdio": [], "mcp-http": []}
    try:
        assert http.stdout is not None
        url = json.loads(http.stdout.readline())["mcp"]
        stdio = StdioServerParameters(command=NOBODY[0], args=[*NOBODY[1:], GLASSBREAK, "mcp"],
                                      env=env, cwd=str(work))
        hc = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
        for _ in range(100):  # the HTTP server is up once it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        async with Client(stdio) as cs, Client(streamable_http_client(url, http_client=hc)) as ch:
            clients = {"mcp-stdio": cs, "mcp-http": ch}
            cli = [*NOBODY, GLASSBREAK, "run", "-p", "bench", "--", "/bin/true"]
            for i in range(warmup + reps):
                t0 = time.perf_counter()
                r = subprocess.run(cli, env=env, cwd=str(work), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                t = time.perf_counter() - t0
                if r.returncode != 0:
                    raise RuntimeError(f"the CLI's warm run failed ({r.returncode})")
                if i >= warmup:
                    times["cli-warm"].append(t)
                for name, c in clients.items():
                    t0 = time.perf_counter()
                    res = await c.call_tool("run", {"argv": ["/bin/true"]})
                    t = time.perf_counter() - t0
                    out = res.structured_content or {}
                    if res.is_error or out.get("exit_code") != 0:
                        raise RuntimeError(f"{name}: {res.content}")
                    if i >= warmup:
                        times[name].append(t)
                        inner[name].append((out.get("duration_ms") or 0) / 1000)
    finally:
        if http.poll() is None:
            http.send_signal(signal.SIGKILL)
        http.wait(timeout=10)
    out: dict[str, Any] = {}
    for name, ts in times.items():
        s = summarize(ts)
        out[name] = {"median_ms": round(s["median"] * 1000, 2),
                     "min_ms": round(s["min"] * 1000, 2), "max_ms": round(s["max"] * 1000, 2),
                     "n": s["n"]}
        if name in inner:
            out[name]["daemon_run_ms"] = round(summarize(inner[name])["median"] * 1000, 2)
    base = out["cli-warm"]["median_ms"]
    for name in ("mcp-stdio", "mcp-http"):
        out[name]["vs_cli_warm"] = round(out[name]["median_ms"] / base, 2) if base else None
    return out


def measure(reps: int = 50, warmup: int = 5) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gb-bench-mcp-"))
    os.chmod(work, 0o755)  # nobody reaches the socket and runs here
    try:
        prof = work / "profiles"
        prof.mkdir()
        (prof / "bench.yaml").write_text(PROFILE)
        cfg = work / "config.json"
        cfg.write_text(json.dumps({"agents": {"bench": {
            "users": ["nobody"], "profiles": ["bench"],
            "tokenSha256": hashlib.sha256(TOKEN.encode()).hexdigest()}}}))
        os.chmod(cfg, 0o644)
        env = dict(os.environ, GLASSBREAK_STATE_DIR=str(work / "state"),
                   GLASSBREAK_CONFIG=str(cfg), GLASSBREAK_PROFILE_PATH=str(prof))
        dp = start_daemon(work, env=env)
        try:
            results = asyncio.run(_measure(work, dp.sock, reps, warmup))
        finally:
            dp.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
                     "kernel": os.uname().release, "cpus": os.cpu_count(), "reps": reps,
                     "warmup": warmup, "workload": "/bin/true"},
            "results": results}


def render(data: dict[str, Any]) -> str:
    rows = [f"{'variant':<11} {'median':>9} {'min':>9} {'max':>9}  {'daemon':>8}  vs cli-warm"]
    for name, r in data["results"].items():
        rows.append(f"{name:<11} {r['median_ms']:>7.2f}ms {r['min_ms']:>7.2f}ms "
                    f"{r['max_ms']:>7.2f}ms  "
                    + (f"{r['daemon_run_ms']:>6.2f}ms" if "daemon_run_ms" in r else f"{'':>8}")
                    + (f"  {r['vs_cli_warm']:.2f}x" if r.get("vs_cli_warm") else ""))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/mcp_latency.py starts a daemon: run it as root", file=sys.stderr)
        return 2
    data = measure(a.reps, a.warmup)
    if a.out:
        a.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2) if a.json else render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
