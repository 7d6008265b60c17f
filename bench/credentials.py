"""What credentials cost a run (issue 14; docs/credentials.md, "Costs").

    .venv/bin/python bench/credentials.py [--reps 200] [--runs 30]

1. The credentials layer alone (prepare + close, the supervisor's part), medians of --reps:
   a file credential delivered as a file; a daemon-env credential delivered in the environment;
   a minted one from the cache (hit); a minted one through a real (trivial) mint command (miss).
2. The mask on an exec event (every exec of a run that holds credentials is masked).
3. Whole warm runs of `/bin/true` through one long-lived Supervisor (as the daemon keeps it),
   without and with credentials, alternating, medians of --runs (root: the real kernel).
Everything lives in a temporary directory; nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def median_us(fn: Any, reps: int) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="gb-bench-creds-"))
    os.environ["GLASSBREAK_STATE_DIR"] = str(d / "state")
    os.environ["GLASSBREAK_PROFILE_PATH"] = str(d / "profiles")
    os.environ["GB_BENCH_TOKEN"] = "benchtok-0123456789abcdef0123456789"
    (d / "profiles").mkdir()
    src = d / "readonly.kubeconfig"
    src.write_text("apiVersion: v1\nusers:\n- name: a\n  user: {token: lowtok-0123456789abcdef}\n")
    src.chmod(0o600)
    mint = d / "mint.sh"
    mint.write_text("#!/bin/sh\necho mintedtok-0123456789abcdef0123\n")
    mint.chmod(0o755)
    base = "name: {n}\nexec: {{allow: [/usr/bin/true, /bin/true], default: block}}\n"
    (d / "profiles" / "b-none.yaml").write_text(base.format(n="b-none"))
    (d / "profiles" / "b-creds.yaml").write_text(base.format(n="b-creds") + (
        f"credentials:\n  kubeconfig: {{file: {src}, env: KUBECONFIG}}\n"
        "  api: {daemonEnv: GB_BENCH_TOKEN, env: API_TOKEN, deliver: env}\n"))
    (d / "profiles" / "b-mint.yaml").write_text(base.format(n="b-mint") + (
        f"credentials:\n  kubeconfig: {{mint: '{mint} {{ttl}}', env: KUBECONFIG}}\n"))
    try:
        layer_costs(d, args.reps)
        mask_cost(args.reps)
        if os.geteuid() == 0:
            warm_runs(args.runs)
        else:
            print("whole runs: skipped (needs root)")
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


class _Spec:
    def __init__(self) -> None:
        self.env = dict(os.environ)


def layer_costs(d: Path, reps: int) -> None:
    from sandbox.kernel.cgroup import RunCgroup  # noqa: F401 - the RunContext's type only
    from sandbox.policy.loader import load_profile
    from sandbox.run.credentials import CredentialsLayer, purge_grant
    from sandbox.run.layers import RunContext
    from sandbox.run.secretmask import SecretMask

    class Grant:
        id = "gr-bench"
        expires_at = time.time() + 3600

    def once(profile: str, grant: Any = None) -> None:
        p = load_profile(profile)
        run = RunContext(run_id="run_bench", mode="enforce", strict=p, effective=p,
                         cgroup=None,  # type: ignore[arg-type]
                         env={}, cwd="/", record=lambda *a, **k: None,
                         on_block=lambda i: None)
        layer = CredentialsLayer(grant=grant, agent="bench", uid=None, gid=None,
                                 mask=SecretMask(), tiers=[p])
        layer.prepare(run, _Spec())  # type: ignore[arg-type]
        layer.close()

    print("credentials layer, prepare + close (median):")
    print(f"  no credentials              {median_us(lambda: once('b-none'), reps):8.1f} us")
    print(f"  file (as a file) + env      {median_us(lambda: once('b-creds'), reps):8.1f} us")
    once("b-mint", Grant())  # the first mints
    hit = median_us(lambda: once("b-mint", Grant()), reps)
    print(f"  minted, cache hit           {hit:8.1f} us")

    def miss() -> None:
        purge_grant(Grant.id)
        once("b-mint", Grant())

    print(f"  minted, cache miss (sh)     {median_us(miss, max(10, reps // 10)):8.1f} us")


def mask_cost(reps: int) -> None:
    from sandbox.events import ExecObserved
    from sandbox.run.secretmask import SecretMask

    m = SecretMask()
    m.add("kubeconfig", "apiVersion: v1\nusers:\n- user: {token: mintedtok-0123456789abcdef}\n",
          env="KUBECONFIG")
    m.add("api", "benchtok-0123456789abcdef0123456789", env="API_TOKEN")
    argv = ["git", "log", "--oneline", "-n", "20", "--", "src/main.py"]

    def ev() -> None:
        m.event(ExecObserved(pid=1, binary="/usr/bin/git", argv=list(argv), decision="allow",
                             layer="exec-trace", rule_id="exec.allow:git"))

    def plain() -> None:
        ExecObserved(pid=1, binary="/usr/bin/git", argv=list(argv), decision="allow",
                     layer="exec-trace", rule_id="exec.allow:git")

    cost = median_us(ev, reps * 5) - median_us(plain, reps * 5)
    print(f"mask on an exec event:         {cost:8.1f} us (over building the event)")


def warm_runs(n: int) -> None:
    from sandbox.run.supervisor import RunRequest, Supervisor

    sup = Supervisor()
    devnull = os.open("/dev/null", os.O_RDWR)
    times: dict[str, list[float]] = {"b-none": [], "b-creds": []}
    for i in range(n + 2):
        for prof in times:
            t0 = time.perf_counter()
            res = sup.run(RunRequest(argv=["/usr/bin/true"], profile=prof, agent="bench",
                                     stdin=devnull, stdout=devnull, stderr=devnull),
                          lambda ev: None)
            dt = (time.perf_counter() - t0) * 1000
            assert res.exit_code == 0, res
            if i >= 2:  # warm-ups
                times[prof].append(dt)
    a, b = (statistics.median(times[p]) for p in ("b-none", "b-creds"))
    pairs = statistics.median(y - x for x, y in zip(times["b-none"], times["b-creds"],
                                                    strict=True))
    print(f"warm run of /bin/true (median of {n}): no credentials {a:.2f} ms, "
          f"file + env credentials {b:.2f} ms; median of the paired differences "
          f"{pairs:+.2f} ms")


if __name__ == "__main__":
    main()
