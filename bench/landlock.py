"""The Landlock layer's costs (bench/run.py's `landlock` section; `python bench/landlock.py`).

  per run, in the supervisor   LandlockLayer.prepare + started + finish + close with warm
                               caches (the static layer re-checked, the per-run layer from the
                               cache, the private TMPDIR from the pool, the audit queue checked
                               twice), and with a cold cache
  per run, in the child        the two landlock_restrict_self() calls (the launcher's), timed
                               in forked children
  per syscall                  read/write on open fds (dd bs=1, 1 M syscalls: Landlock has no
                               hook there) and open+close of a file (path walk: Landlock checks
                               every open), each inside a domain vs outside, no seccomp

Medians over `reps` rounds, round-robin. Needs root (the runner does).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _median_us(f: Callable[[], object], n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1e6, 1)


def _layer_cost(reps: int, work: str) -> dict[str, float]:
    from sandbox.kernel.child import ChildSpec
    from sandbox.policy.loader import load_profile
    from sandbox.run.layers import LandlockLayer, LayerResult, RunContext
    from sandbox.run.supervisor import landlock_abi

    abi = landlock_abi()
    prof = load_profile("readonly")
    cg = SimpleNamespace(kill=lambda: None, wait_empty=lambda timeout=0: True)
    child = SimpleNamespace(pid=1 << 30, exec_error=lambda: None)
    n = [0]

    def one() -> None:
        n[0] += 1
        run = RunContext(run_id=f"bench_{os.getpid()}_{n[0]}", mode="enforce", strict=prof,
                         effective=prof, cgroup=cg, env={}, cwd=work,
                         record=lambda *a, **k: None, on_block=lambda i: None, uid=None,
                         argv=["true"])
        spec = ChildSpec(["true"], executable="/bin/true", env={}, cwd=work)
        layer = LandlockLayer(abi)
        layer.prepare(run, spec)
        layer.started(run, child)  # type: ignore[arg-type]
        layer.finish(run, LayerResult(status=0))
        layer.close()

    LandlockLayer.cache = None
    t = time.perf_counter()
    one()
    cold = (time.perf_counter() - t) * 1e6
    one()
    return {"supervisor_warm_us": _median_us(one, reps), "supervisor_cold_us": round(cold, 1)}


def _child_cost(reps: int, work: str) -> dict[str, float]:
    """The child's landlock_restrict_self() calls, timed inside forked children (the launcher
    makes the same two syscalls in C), with the readonly profile's real layers."""
    import ctypes

    from sandbox.policy.filesystem import FsRules
    from sandbox.policy.loader import load_profile
    from sandbox.run import filesystem as F
    from sandbox.run.supervisor import landlock_abi

    abi = landlock_abi()
    prof = load_profile("readonly")
    rules = FsRules.of(prof.filesystem, {"CWD": work, "HOME": "/root", "TMPDIR": work})
    anchors = F.trust_anchors([prof])
    st = F.static_inputs(rules, anchors, exec_all=False, tmp_parent=work, monitor=False)
    p1, static = F.build_static(st, [prof], None, abi)
    p2, per_run = F.build(F.run_inputs(rules, anchors, tmp=work, monitor=False), abi)
    libc = ctypes.CDLL(None, use_errno=True)
    times = []
    for _ in range(reps * 10):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            libc.prctl(38, 1, 0, 0, 0)
            t = time.perf_counter()
            libc.syscall(446, static.fd, 2)
            libc.syscall(446, per_run.fd, 6)
            os.write(w, str(time.perf_counter() - t).encode())
            os._exit(0)
        os.close(w)
        times.append(float(os.read(r, 64)))
        os.close(r)
        os.waitpid(pid, 0)
    static.close()
    per_run.close()
    return {"child_restrict_self_us": round(statistics.median(times) * 1e6, 1),
            "static_layer_rules": len(p1.rules), "run_layer_rules": len(p2.rules) + 8}


DD = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=1000000"]
OPENS = ("import os, time\nt = time.perf_counter()\nfor _ in range(20000):\n"
         "    os.close(os.open('/usr/lib/os-release', os.O_RDONLY))\n"
         "print((time.perf_counter() - t) / 20000 * 1e9)")


def _syscall_cost(reps: int, work: str) -> dict[str, float]:
    from sandbox.kernel import landlock as L
    from sandbox.policy.filesystem import FsRules
    from sandbox.policy.loader import load_profile
    from sandbox.run import filesystem as F

    prof = load_profile("readonly")
    rules = FsRules.of(prof.filesystem, {"CWD": work, "HOME": "/root", "TMPDIR": work})
    anchors = F.trust_anchors([prof])
    abi = L.abi_version()
    st = F.static_inputs(rules, anchors, exec_all=True, tmp_parent=work, monitor=False)
    _, static = F.build(st, abi)
    _, per_run = F.build(F.run_inputs(rules, anchors, tmp=work, monitor=False), abi)

    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def confined() -> None:
        libc.prctl(38, 1, 0, 0, 0)
        L.restrict_self(static.fd, 0)
        L.restrict_self(per_run.fd, 0)

    def timed(argv: list[str], pre: Callable[[], None] | None) -> float:
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       preexec_fn=pre, pass_fds=(static.fd, per_run.fd), check=True)
        return time.perf_counter() - t

    def opens(pre: Callable[[], None] | None) -> float:
        r = subprocess.run([sys.executable, "-S", "-c", OPENS], capture_output=True, text=True,
                           preexec_fn=pre, pass_fds=(static.fd, per_run.fd), check=True)
        return float(r.stdout)

    dd_in, dd_out, op_in, op_out = [], [], [], []
    for _ in range(reps):
        dd_in.append(timed(DD, confined))
        dd_out.append(timed(DD, None))
        op_in.append(opens(confined))
        op_out.append(opens(None))
    static.close()
    per_run.close()
    m = statistics.median
    return {"dd_1M_syscalls_in_domain_ms": round(m(dd_in) * 1e3, 1),
            "dd_1M_syscalls_outside_ms": round(m(dd_out) * 1e3, 1),
            "dd_ratio": round(m(dd_in) / m(dd_out), 3),
            "open_close_in_domain_ns": round(m(op_in)), "open_close_outside_ns": round(m(op_out)),
            "open_close_extra_ns": round(m(op_in) - m(op_out))}


def measure(quick: bool = False) -> dict[str, Any]:
    reps = 5 if quick else 15
    with tempfile.TemporaryDirectory(prefix="gb-bench-ll-") as work:
        out: dict[str, Any] = {"reps": reps}
        out.update(_layer_cost(30 if quick else 200, work))
        out.update(_child_cost(reps, work))
        out.update(_syscall_cost(reps, work))
    out["per_run_us"] = round(out["supervisor_warm_us"] + max(out["child_restrict_self_us"], 0),
                              1)
    out["target"] = "PASS" if out["per_run_us"] <= 500 else "MISS"
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(measure("--quick" in sys.argv), indent=2))
