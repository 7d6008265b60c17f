"""One daemon, many runs: 20 concurrent runs with different network policies through a real
`glassbreak serve` keep separate maps (no lookup or entry leaks between them); and the maps,
resolver sockets, queues and fds of a run are freed when it ends (no growth over 1,000 runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GLASSBREAK, load_bench
from tests.network.conftest import HOST4, N_MULTI, PY, Runner, client_code

pytestmark = pytest.mark.kernel


@pytest.fixture
def daemon(netns: None, upstream: Any, tmp_path: Path) -> Iterator[Any]:
    work = Path(tempfile.mkdtemp(prefix="gb-netd-"))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for i in range(N_MULTI):
        (profiles / f"n{i}.yaml").write_text(json.dumps({
            "name": f"n{i}", "extends": "base", "owners": ["alice"],
            "exec": {"allow": ["python3", "/usr/bin/python3*"]},
            "network": {"allow": [f"n{i}.test:8080"]}}))
    env = {**os.environ, "GLASSBREAK_DNS_UPSTREAM": f"{upstream.addr[0]}:{upstream.addr[1]}",
           "GLASSBREAK_PROFILE_PATH": str(profiles), "GLASSBREAK_STATE_DIR": str(work / "state")}
    dp = load_bench("daemons").start_daemon(work, env=env, timeout=60)
    try:
        yield dp
    finally:
        dp.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_twenty_concurrent_daemon_runs_keep_separate_maps(daemon: Any) -> None:
    env0 = {**os.environ, "GLASSBREAK_SOCKET": str(daemon.sock)}
    env0.pop("GLASSBREAK_NO_DAEMON", None)
    subprocess.run([GLASSBREAK, "run", "-p", "n0", "--", PY, "-S", "-c", "pass"], env=env0,
                   capture_output=True, timeout=120)  # a warm-up run, as the daemon's others
    outs: dict[int, Any] = {}
    barrier = threading.Barrier(N_MULTI)

    def one(i: int) -> None:
        other = (i + 1) % N_MULTI
        code = client_code("many", [["dns", HOST4, f"n{i}.test"], ["sleep", 0.5],
                                    ["tcp", f"10.99.0.{10 + i}", 8080],
                                    ["tcp", f"10.99.0.{10 + other}", 8080],
                                    ["dns", HOST4, f"n{other}.test"]])
        env = {**os.environ, "GLASSBREAK_SOCKET": str(daemon.sock),
               "PATH": "/usr/local/bin:/usr/bin:/bin"}
        env.pop("GLASSBREAK_NO_DAEMON", None)
        barrier.wait(30)
        r = subprocess.run([GLASSBREAK, "run", "-o", "json", "-p", f"n{i}", "--", PY, "-S",
                            "-c", code], capture_output=True, text=True, env=env, timeout=120)
        outs[i] = r

    ts = [threading.Thread(target=one, args=(i,)) for i in range(N_MULTI)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    audit = [json.loads(x) for x in (daemon.state / "audit.jsonl").read_text().splitlines()]
    for i, r in outs.items():
        other = (i + 1) % N_MULTI
        lines = [x for x in r.stdout.splitlines() if x.strip()]
        assert r.returncode == 0 and lines, (i, r.stderr)
        got = json.loads(lines[-1])
        assert got[0]["addrs"] == [f"10.99.0.{10 + i}"], (i, got)
        assert got[2:4] == ["ok", "EPERM"], (i, got)  # its own host only
        assert got[4]["rcode"] == 5, (i, got)          # not the other run's name
        run_id = next(json.loads(x)["run_id"] for x in r.stderr.splitlines()
                      if x.startswith("{") and "run_id" in x)
        blocks = {e["destination"] for e in audit if e.get("run_id") == run_id
                  and e["type"] == "blocked"}
        assert blocks == {f"10.99.0.{10 + other}:8080", f"n{other}.test:*"}, (i, blocks)
    assert len(outs) == N_MULTI
    assert daemon.proc.poll() is None


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_maps_are_freed_when_runs_end_no_growth_over_1000_runs(netns: None,
                                                              runner: Runner) -> None:
    net = runner.kernel.net
    hooks = net.hooks
    p = runner.profile("cycle", {"allow": ["web.test:8080", "10.99.0.0/24:5432",
                                           "10.98.0.0/16:443", "localhost:8000-8010",
                                           "[fd99:99::/64]:9000"],
                                 "unix": ["/run/glassbreak-test-none.sock"]})
    quick = ["true"]
    busy = [PY, "-S", "-c", client_code("many", [["dns", HOST4, "web.test"],
                                                 ["tcp", HOST4, 8080], ["tcp", HOST4, 9000]])]
    runner.run(p, busy)  # warm: what lives as long as the process (the escalation service's
    runner.run(p, quick)  # audit log, opened at the first escalation) exists from here on
    time.sleep(0.5)  # the resolver's pool refilled
    res = net.resolver

    def now() -> tuple[Any, ...]:
        """Every map and table of the hooks and the service; the resolver's socket sets are
        a pool (recycled between runs, bounded by POOL_MAX), so its ports and fds are
        counted apart: what is left over besides the pool must not grow."""
        counts = dict(hooks.map_counts())
        pooled = len(res._pool)
        counts["resolver_ports"] -= pooled  # a pooled set's port is reserved
        return (counts, res.run_count, len(hooks._queues), len(hooks._leaves),
                len(hooks._efds), len(net._dns), _fds() - 4 * pooled, len(res._all) - pooled)

    before = now()
    for i in range(1000):
        r = runner.run(p, busy if i % 100 == 0 else quick)
        assert r.code == 0, (i, r.lines)
        if i % 100 == 0:
            assert r.value == [r.value[0], "ok", "EPERM"] and r.value[0]["rcode"] == 0

    # the resolver takes a finished run's socket set back in its own thread
    from tests.network.conftest import wait_for

    def same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:  # fds: none left behind (an
        return a[:6] == b[:6] and a[7] == b[7] and a[6] <= b[6]  # earlier test's may go)

    wait_for(lambda: same(now(), before), 10)
    after = now()
    assert same(after, before), (before, after)
    assert len(res._pool) <= res.POOL_MAX
