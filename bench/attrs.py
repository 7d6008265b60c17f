"""What a root run's chmod, chown and utime cost now that the supervisor performs them
(sandbox.run.attrgate; `python bench/attrs.py [--n N] [--reps R]`, root).

Each call goes caller -> seccomp user-notification -> the native responder (forwards it: not an
exec) -> the supervisor's Python loop -> decode, resolve, decide, perform -> answer. Measured as
a loop of N calls inside one `glassbreak run` (in-process supervisor, every layer on) against
the same loop bare; the difference per call is the mediation's round trip. `stat` is the
control (not mediated: no difference expected). Also one refused call (a file outside the
writable trees: EPERM, recorded once, the rest deduplicated) and `cp -p` of 200 files.
Medians over `reps` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GLASSBREAK = str(Path(sys.executable).parent / "glassbreak")

PROFILE = """\
name: attrs-bench
extends: base
exec:
  allow: [sh, cp, "/usr/bin/python3*"]
  default: block
"""

LOOP = textwrap.dedent("""\
    import json, os, sys, time
    n, outside = int(sys.argv[1]), sys.argv[2]
    open("f", "w").close()
    fd = os.open("f", os.O_RDONLY)
    def refused(i):
        try:
            os.chmod(outside, 0o644)
        except PermissionError:
            pass
    calls = {"stat": lambda i: os.stat("f"),
             "chmod": lambda i: os.chmod("f", 0o644 if i & 1 else 0o600),
             "fchmod": lambda i: os.fchmod(fd, 0o644 if i & 1 else 0o600),
             "chown": lambda i: os.chown("f", 0, 0),
             "utime": lambda i: os.utime("f", (i, i)),
             "refused": refused}
    out = {}
    for name, fn in calls.items():
        for i in range(20):
            fn(i)
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        out[name] = (time.perf_counter() - t) / n * 1e6
    import shutil, subprocess
    cp = []
    for _ in range(3):
        shutil.rmtree("dst", ignore_errors=True)
        t = time.perf_counter()
        subprocess.run(["cp", "-rp", sys.argv[3], "dst"], check=True)
        cp.append(time.perf_counter() - t)
    out["cp -rp 200 files (ms)"] = sorted(cp)[1] * 1e3
    print(json.dumps(out))
    """)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="calls per kind and run")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/attrs.py needs root (a root run is what it measures)")
    with tempfile.TemporaryDirectory(prefix="gb-attrs-") as d:
        root = Path(d)
        work, out = root / "work", root / "out"
        work.mkdir()
        out.mkdir()
        (out / "x").write_text("x")
        (root / "attrs-bench.yaml").write_text(PROFILE)
        (root / "loop.py").write_text(LOOP)
        src = root / "src"
        src.mkdir()
        for i in range(200):
            (src / f"f{i}").write_text("x")
        env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin",
               "GLASSBREAK_STATE_DIR": str(root / "state"),
               "GLASSBREAK_SOCKET": "/nonexistent/glassbreak-bench.sock"}  # in-process
        run = [GLASSBREAK, "run", "--profile", str(root / "attrs-bench.yaml"), "--"]
        loop = ["python3", str(root / "loop.py"), str(args.n), str(out / "x"), str(src)]
        bare: dict[str, list[float]] = {}
        inrun: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for argv, into in ((loop, bare), (run + loop, inrun)):
                r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                                   timeout=600)
                if r.returncode != 0:
                    sys.exit(f"{argv} failed ({r.returncode}): {r.stderr}")
                for k, v in json.loads(r.stdout.splitlines()[-1]).items():
                    into.setdefault(k, []).append(v)
        print(f"median of {args.reps} runs x {args.n} calls, us per call (cp: ms): bare, in a "
              "root run, difference")
        for k in bare:
            b, g = statistics.median(bare[k]), statistics.median(inrun[k])
            print(f"  {k:22s} {b:8.1f} {g:8.1f} {g - b:+8.1f}")


if __name__ == "__main__":
    main()
