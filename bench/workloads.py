"""The real-workload suite (issue 13): everyday agent work run through glassbreak in ENFORCE mode
under the shipped developer profiles (python-dev, git-readonly), each compared with the same work
bare, in ONE run: exit code and output compared, every block collected, wall time measured in
round-robin rounds (bare, warm through a daemon this suite starts, cold in-process).

Why this module is long: one benchmark suite run as one script: the workloads (a short function
each), their set-up, the round-robin timing and the report share the fixture paths and the suite's
state, and a bench script is read top to bottom.

    .venv/bin/python bench/workloads.py            # the full suite (also: make bench)
    .venv/bin/python bench/workloads.py --short    # the reduced form the tests run
    .venv/bin/python bench/workloads.py --only make,seq-xargs --reps 5 --layers

A glassbreak run whose exit code or output differs from bare, or that records any `blocked`
event, is a FALSE BLOCK (every workload here is meant to be allowed): the suite reports the block
lines (layer, rule, argv) and never counts such a run as a PASS, whatever its time.

Where the time goes: the supervisor's audit log has one `exec` event per exec with the layer that
decided it; the suite sorts them into "fast" (continued without Python: the native responder or
the in-kernel allow set) and "held" (judged in Python: the notification and the eBPF hold), and
with --layers also times the warm run with one layer off (`--degraded ebpf`, `--degraded
exec-gate`) to split the overhead between them. See bench/README.md.

The data is generated (deterministic) in a temporary directory at every run; the one thing that
comes from outside, the sdist of a small pure-Python package whose test suite pytest runs, is
downloaded and sha256-checked by scripts/setup.sh into .cache/workloads/, never here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GLASSBREAK = str(Path(sys.executable).parent / "glassbreak")
CACHE = REPO / ".cache" / "workloads"
# The package whose own test suite the `pytest` workload runs: pure Python, its tests in the
# sdist, no test dependencies beyond pytest. scripts/setup.sh downloads exactly this file.
SDIST_NAME, SDIST_VERSION = "toolz", "1.2.0"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490"

# A fixed environment for both sides: an activated virtualenv's PATH, git without the machine's
# configuration and with fixed identities and dates (so commit ids are the same bare and
# sandboxed), the C locale.
GIT_DATE = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class Sizes:
    git_files: int = 2000
    c_files: int = 200
    tree_files: int = 8000  # ~20-byte relative paths: xargs packs ~6,000 into one grep exec
    seq_args: int = 30000
    pytest_target: str = "toolz"  # the whole test suite (192 tests)


FULL = Sizes()
# The reduced form (tests/integration/test_workloads.py): small where size only adds time, full
# where size is the point (more than 4096 arguments in one exec).
SHORT = Sizes(git_files=200, c_files=20, tree_files=6000, seq_args=30000,
              pytest_target="toolz/tests/test_itertoolz.py")


@dataclass(frozen=True)
class Workload:
    """One piece of everyday agent work: a /bin/sh -c script run in `cwd` (under the data root),
    under the shipped `profile`. `reset` (untimed, before every run, bare or not) puts the
    directory back as it was; `normalize` strips what legitimately differs between two runs
    (pytest's duration)."""

    name: str
    profile: str
    cwd: str
    script: str
    limit: float  # the warm ratio target (sandboxed median / bare median)
    what: str
    reset: Callable[[Path, Sizes], None] | None = None
    normalize: Callable[[str], str] | None = None


# -- the data -----------------------------------------------------------------------------------
def gen_tree(root: Path, n: int, per_dir: int = 100) -> None:
    """n small Python modules in pkgNNN/modNNNN.py; some lines say TODO and needle."""
    for i in range(n):
        d = root / f"pkg{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:04d}.py").write_text(_module(i))


def _module(i: int) -> str:
    lines = [f'"""module {i}"""', "", f"VALUE = {i * 7919 % 10007}", ""]
    for j in range(12):
        lines.append(f"def f{j}(x):")
        if (i + j) % 17 == 0:
            lines.append("    # TODO: needle in the haystack")
        lines.append(f"    return x * {j + 1} + VALUE")
        lines.append("")
    return "\n".join(lines)


def gen_c_project(root: Path, n: int) -> None:
    """n C files, a header, main.c and a Makefile: `make -j2` runs cc (cc1, as) per file and
    links one program."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "include").mkdir(exist_ok=True)
    hdr = ["#ifndef LIB_H", "#define LIB_H", *(f"int unit{i}(int x);" for i in range(n)),
           "#endif", ""]
    (root / "include" / "lib.h").write_text("\n".join(hdr))
    for i in range(n):
        (root / "src" / f"unit{i:03d}.c").write_text("\n".join([
            '#include "lib.h"', "",
            f"static int helper{i}(int x) {{ return x * {i % 13 + 1} + {i}; }}", "",
            f"int unit{i}(int x) {{", "    int acc = 0;",
            f"    for (int k = 0; k < {i % 7 + 3}; k++)",
            f"        acc += helper{i}(x + k) ^ {i * 31 % 97};", "    return acc;", "}", ""]))
    calls = "\n".join(f"    total += unit{i}({i});" for i in range(n))
    (root / "main.c").write_text(
        '#include <stdio.h>\n#include "lib.h"\n\nint main(void) {\n    long total = 0;\n'
        f'{calls}\n    printf("%ld\\n", total);\n    return 0;\n}}\n')
    (root / "Makefile").write_text(
        "CC = cc\nCFLAGS = -O1 -Wall -Iinclude\nSRCS = $(sort $(wildcard src/*.c)) main.c\n"
        "OBJS = $(SRCS:.c=.o)\n\napp: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\n"
        "%.o: %.c include/lib.h\n\t$(CC) $(CFLAGS) -c -o $@ $<\n\n"
        "clean:\n\trm -f app $(OBJS)\n\n.PHONY: clean\n")


GIT_EDITED = ("pkg000/mod0000.py", "pkg001/mod0117.py")


def reset_git_work(root: Path, sizes: Sizes) -> None:
    """The `git` workload's tree as generated: no .git, the files it edits restored."""
    work = root / "git-work"
    shutil.rmtree(work / ".git", ignore_errors=True)
    for rel in GIT_EDITED:
        i = int(rel.split("mod")[1][:4])
        if i < sizes.git_files:
            (work / rel).write_text(_module(i))


def reset_c_project(root: Path, sizes: Sizes) -> None:
    proj = root / "cproj"
    for p in [proj / "app", proj / "main.o", *(proj / "src").glob("*.o")]:
        p.unlink(missing_ok=True)


def strip_durations(out: str) -> str:
    """pytest's summary line ends with the time it took: "... passed in 1.49s"."""
    return re.sub(r" in [0-9.]+s( \([0-9:]+\))?", " in <t>", out)


def sdist_path(cache: Path = CACHE) -> Path:
    return cache / SDIST_FILE


def prepare(root: Path, sizes: Sizes, env: Mapping[str, str], cache: Path = CACHE) -> list[str]:
    """Generate every workload's data under `root`; returns the notes (e.g. the sdist missing)."""
    notes: list[str] = []
    (root / "home").mkdir(parents=True, exist_ok=True)
    gen_tree(root / "git-work", sizes.git_files)
    # git-inspect reads a repository with history and a dirty work tree, made bare, once
    repo = root / "git-repo"
    gen_tree(repo, sizes.git_files)
    edited = [rel for rel in GIT_EDITED if (repo / rel).exists()]
    setup_script = (
        "set -e; git init -q -b main .; git add .; git commit -q -m 'generated tree'; "
        f"sed -i s/needle/thread/ {' '.join(edited)}; git commit -q -a -m 'rename'; "
        "echo '# local change' >> pkg000/mod0001.py")
    subprocess.run(["/bin/sh", "-c", setup_script], cwd=repo, env=dict(env), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    gen_c_project(root / "cproj", sizes.c_files)
    gen_tree(root / "src-tree", sizes.tree_files)
    sd = sdist_path(cache)
    if not sd.is_file():
        notes.append(f"{sd} is missing: run `make setup` (scripts/setup.sh downloads it)")
    elif sha256_of(sd) != SDIST_SHA256:
        notes.append(f"{sd} does not have the pinned sha256 {SDIST_SHA256}: delete it and run "
                     "`make setup`")
    else:
        unpack(sd, root)
    return notes


def unpack(sdist: Path, dest: Path) -> None:
    """Extract an sdist's regular files and directories (no links, devices, absolute paths or
    `..`: what tarfile's "data" filter does on Pythons that have it)."""
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                continue
            target = dest.joinpath(*parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            target.write_bytes(src.read())
            target.chmod(0o644 | (0o111 if m.mode & 0o100 else 0))


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def workloads(sizes: Sizes = FULL) -> list[Workload]:
    edited = " ".join(GIT_EDITED)
    return [
        Workload(
            "git", "python-dev", "git-work",
            "set -e\n"
            "git init -q -b main .\n"
            "git add .\n"
            "git commit -q -m 'generated tree'\n"
            f"sed -i s/needle/thread/ {edited}\n"
            "git commit -q -a -m 'needle -> thread'\n"
            "git log --oneline\n"
            "git log --stat -n 1 | tail -n 4\n"
            "git diff --stat HEAD~1\n"
            "git diff HEAD~1 | wc -l\n"
            "git grep -n needle | wc -l\n"
            "git grep -l TODO -- 'pkg00*' | head -n 3\n"
            "git rev-parse HEAD\n",
            1.05, f"git init, add {sizes.git_files} files, commit, edit, commit, log, diff, grep",
            reset=reset_git_work),
        Workload(
            "git-inspect", "git-readonly", "git-repo",
            "set -e\n"
            "git status --porcelain\n"
            "git log --oneline | wc -l\n"
            "git log --stat -n 2 | tail -n 6\n"
            "git diff --stat HEAD~1\n"
            "git diff | wc -l\n"
            "git grep -n needle | wc -l\n"
            "git grep --count TODO -- 'pkg00*' | tail -n 3\n"
            "git ls-files | wc -l\n"
            "git blame -s pkg000/mod0000.py | tail -n 2\n"
            "git show --stat HEAD | tail -n 2\n",
            1.05, f"read-only git on a {sizes.git_files}-file repository with history"),
        Workload(
            "make", "python-dev", "cproj",
            "set -e\nmake -j2 -s\nsha256sum app\n",
            1.10, f"make -j2 of {sizes.c_files} C files (cc, cc1, as per file; collect2, ld)",
            reset=reset_c_project),
        Workload(
            "pytest", "python-dev", f"{SDIST_NAME}-{SDIST_VERSION}",
            f"python -m pytest -q -p no:cacheprovider {sizes.pytest_target}\n",
            1.05, f"python -m pytest on {SDIST_NAME} {SDIST_VERSION}'s own test suite (PyPI sdist)",
            normalize=strip_durations),
        Workload(
            "find-xargs", "git-readonly", "src-tree",
            "find . -type f -name '*.py' | xargs grep -n needle | sort | sha256sum\n"
            "find . -type f | xargs grep -l TODO | wc -l\n",
            1.05, f"find | xargs grep over {sizes.tree_files} files"),
        Workload(
            "seq-xargs", "git-readonly", ".",
            f"seq 1 {sizes.seq_args} | xargs echo | wc -l\n"
            f"seq 1 {sizes.seq_args} | xargs -n 100 echo | wc -l\n",
            1.05, f"seq 1 {sizes.seq_args} | xargs echo (one exec, {sizes.seq_args} args), and "
            "xargs -n 100"),
    ]


def workload_env(root: Path, venv_bin: str) -> dict[str, str]:
    """The same environment for bare and sandboxed runs (nothing of the caller's leaks in)."""
    return {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(root / "home"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC",
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid", "GIT_AUTHOR_DATE": GIT_DATE,
        "GIT_COMMITTER_DATE": GIT_DATE, "PYTHONDONTWRITEBYTECODE": "1",
        "VIRTUAL_ENV": str(Path(venv_bin).parent),
    }


# -- one run ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One timed run: its exit code, stdout, the child's own stderr, and (sandboxed) glassbreak's
    JSON events from stderr."""

    elapsed: float
    rc: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def blocked(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "blocked"]

    @property
    def result(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("type") == "run_result"), None)


def split_stderr(text: str) -> tuple[str, list[dict[str, Any]]]:
    """glassbreak's `-o json` events (one JSON object a line, with a "type") apart from the
    command's own stderr. Both write to the same pipe, so an event can land in the middle of a
    line the command was writing (`xargs: {"ts": ...}` then `echo: Operation not permitted`):
    an event is taken from wherever `{"ts":` starts, the text before it stays the command's."""
    own: list[str] = []
    events: list[dict[str, Any]] = []
    for line in text.splitlines(keepends=True):
        at = line.find('{"ts":')
        if at < 0:
            own.append(line)
            continue
        try:
            ev = json.loads(line[at:])
        except ValueError:
            ev = None
        if not isinstance(ev, dict) or "type" not in ev:
            own.append(line)
            continue
        events.append(ev)
        if at:
            own.append(line[:at])
    return "".join(own), events


def run_once(argv: Sequence[str], cwd: Path, env: Mapping[str, str],
             timeout: float = 600) -> Outcome:
    t0 = time.perf_counter()
    res = subprocess.run(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    err = res.stderr.decode(errors="replace")
    own, events = split_stderr(err)
    return Outcome(elapsed, res.returncode, res.stdout.decode(errors="replace"), own, events)


def block_line(ev: Mapping[str, Any], limit: int = 6) -> str:
    """A blocked event as one line: layer, verdict, rule, reason, the first arguments."""
    argv = list(ev.get("argv") or [])
    shown = " ".join(argv[:limit]) + (f" ... ({len(argv)} args)" if len(argv) > limit else "")
    return (f"[{ev.get('layer')}] {ev.get('verdict')} rule={ev.get('rule_id')}: "
            f"{ev.get('reason')} | argv: {shown or '(empty)'}")


def judge(ref: Outcome, got: Outcome, normalize: Callable[[str], str] | None = None) -> list[str]:
    """Why `got` (sandboxed) is not the same work as `ref` (bare): [] when it is. Any blocked
    event is a false block here (the workloads are meant to be allowed)."""
    norm = normalize or (lambda s: s)
    problems = [f"FALSE BLOCK {block_line(b)}" for b in got.blocked]
    if got.rc != ref.rc:
        problems.append(f"exit code {got.rc}, bare {ref.rc}")
    if norm(got.stdout) != norm(ref.stdout):
        problems.append(f"output differs: {_first_diff(norm(ref.stdout), norm(got.stdout))}")
    if problems and not got.blocked:
        tail = [ln for ln in got.stderr.splitlines() if ln.strip()][-2:]
        if tail:
            problems.append("stderr: " + " / ".join(tail)[:300])
    return problems


def _first_diff(a: str, b: str) -> str:
    al, bl = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(al, bl, strict=False)):
        if x != y:
            return f"line {i + 1}: bare {x[:80]!r}, sandboxed {y[:80]!r}"
    return f"bare {len(al)} lines, sandboxed {len(bl)} lines"


# -- where the time goes ------------------------------------------------------------------------
def exec_profile(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A run's `exec` audit events sorted by how they were decided:
    fast: continued without Python on the exec's path (the native responder's allow set,
    layer exec-gate, or the in-kernel fast-allow set, rule exec.fast-allow);
    held: judged in Python (layer exec-trace: the notification was forwarded and the new image
    held by the eBPF hold until Python's SIGCONT);
    refused: anything not allowed. Per class, the binaries that fell in it (most frequent first)."""
    classes: dict[str, Counter[str]] = {"fast": Counter(), "held": Counter(),
                                        "refused": Counter()}
    rules: Counter[str] = Counter()
    for e in events:
        if e.get("type") != "exec":
            continue
        binary = str(e.get("binary") or "?")
        rule = str(e.get("rule_id") or "?")
        if e.get("decision") != "allow":
            cls = "refused"
        elif e.get("layer") == "exec-gate" or rule == "exec.fast-allow":
            cls = "fast"
        else:
            cls = "held"
        classes[cls][binary] += 1
        rules[f"{cls}: {rule}"] += 1
    return {
        "execs": sum(sum(c.values()) for c in classes.values()),
        **{k: sum(c.values()) for k, c in classes.items()},
        "by_binary": {k: dict(c.most_common(8)) for k, c in classes.items() if c},
        "by_rule": dict(rules.most_common(12)),
    }


def read_audit(state: Path, run_id: str) -> list[dict[str, Any]]:
    path = state / "audit.jsonl"
    out: list[dict[str, Any]] = []
    try:
        with path.open("rb") as f:
            for raw in f:
                if run_id.encode() not in raw:
                    continue
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if ev.get("run_id") == run_id:
                    out.append(ev)
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of process `pid` (all its threads; not its children), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def exec_attempts(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> dict[str, int] | None:
    """execve attempts of one bare run, by strace (each is a seccomp notification under
    glassbreak, a PATH miss too): {"execve": N, "ENOENT": M}. None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile(prefix="gb-wl-strace-") as out:
        subprocess.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", out.name, *argv],
                       cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        text = Path(out.name).read_text(errors="replace")
    calls = [ln for ln in text.splitlines() if "execve(" in ln]
    return {"execve": len(calls), "ENOENT": sum("ENOENT" in ln for ln in calls)}


# -- statistics and verdicts (pure) -------------------------------------------------------------
def summarize(times: Sequence[float]) -> dict[str, float | int] | None:
    if not times:
        return None
    return {"n": len(times), "median": statistics.median(times), "min": min(times),
            "max": max(times), "stdev": statistics.stdev(times) if len(times) > 1 else 0.0}


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Round by round a[i]/b[i]: the runs of one round are neighbours in time, so their ratio
    sees the same noise (the spread of these is the honest spread of the ratio)."""
    return [x / y for x, y in zip(a, b, strict=False) if y > 0]


def verdict(name: str, ratio: float | None, limit: float, problems: Sequence[str],
            why_na: str = "") -> dict[str, Any]:
    """PASS / MISS by the ratio, but FALSE BLOCK whenever a sandboxed run was not the same work
    (never a PASS then: a blocked run can be fast), n/a without a ratio."""
    if problems:
        status = "FALSE BLOCK"
    elif ratio is None:
        status = "n/a"
    else:
        status = "PASS" if ratio <= limit else "MISS"
    return {"name": f"{name} (warm) <= {limit:.2f}x bare", "value": ratio, "limit": limit,
            "status": status, "why": (problems[0] if problems else why_na)[:400]}


# -- the suite ----------------------------------------------------------------------------------
VARIANTS = ("bare", "warm", "cold")
LAYER_VARIANTS = ("warm-no-ebpf", "warm-no-gate")


def log(msg: str) -> None:
    print(f"[workloads] {msg}", file=sys.stderr, flush=True)


def _argv(variant: str, w: Workload, glassbreak: str) -> list[str]:
    cmd = ["/bin/sh", "-c", w.script]
    if variant == "bare":
        return cmd
    extra = {"warm-no-ebpf": ["--degraded", "ebpf"],
             "warm-no-gate": ["--degraded", "exec-gate"]}.get(variant, [])
    return [glassbreak, "run", "-p", w.profile, "-o", "json", *extra, "--", *cmd]


def run_suite(*, reps: int = 10, warmup: int = 1, sizes: Sizes = FULL,
              only: Sequence[str] | None = None, glassbreak: str = GLASSBREAK,
              cold: bool = True, warm: bool = True, layers: bool = False,
              attempts: bool = True, cache: Path = CACHE) -> dict[str, Any]:
    """Run the suite; returns the JSON-able results (bench/run.py merges them into latest.json).
    Never raises for a workload's own trouble: that workload is n/a with the reason."""
    from daemons import start_daemon

    chosen = [w for w in workloads(sizes) if only is None or w.name in only]
    variants = [v for v in VARIANTS if (v != "cold" or cold) and (v != "warm" or warm)]
    if layers and warm:
        variants += list(LAYER_VARIANTS)
    out: dict[str, Any] = {"meta": {
        "reps": reps, "warmup": warmup, "sizes": sizes.__dict__, "variants": variants,
        "clock": "time.perf_counter around subprocess.run (wall time, fork+exec included); "
                 "reset untimed before every run; round-robin, the order rotating per round",
        "sdist": {"file": SDIST_FILE, "sha256": SDIST_SHA256}}, "workloads": {}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="glassbreak-workloads-") as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        venv_bin = str(Path(sys.executable).parent)
        env = workload_env(root, venv_bin)
        log(f"generating the data in {root}")
        out["notes"] += prepare(root, sizes, env, cache)
        cold_state = Path(tmp) / "cold-state"
        cold_state.mkdir()
        envs = {"bare": env,
                # a socket path of its own directory: the socket's directory is one of
                # glassbreak's trust anchors (never writable in a run), so not the data's parent
                "cold": dict(env, GLASSBREAK_SOCKET=str(Path(tmp) / "no-daemon" / "gb.sock"),
                             GLASSBREAK_STATE_DIR=str(cold_state))}
        daemon = None
        if warm:
            try:
                daemon = start_daemon(Path(tmp) / "daemon", glassbreak=glassbreak,
                                      env=dict(os.environ, GLASSBREAK_STATE_DIR=str(
                                          Path(tmp) / "daemon-state")))
            except (RuntimeError, OSError) as e:
                out["notes"].append(f"warm path n/a: {e}")
                variants = [v for v in variants if not v.startswith("warm")]
        if daemon is not None:
            for v in ("warm", *LAYER_VARIANTS):
                envs[v] = dict(env, GLASSBREAK_SOCKET=str(daemon.sock))
        states = {"cold": cold_state, **({v: daemon.state for v in ("warm", *LAYER_VARIANTS)}
                                         if daemon else {})}
        try:
            for w in chosen:
                log(f"{w.name}: {w.what} (profile {w.profile})")
                out["workloads"][w.name] = _one(w, root, sizes, variants, envs, states,
                                                reps, warmup, glassbreak, attempts,
                                                daemon.proc.pid if daemon else None)
        finally:
            if daemon is not None:
                daemon.stop()
    return out


def _one(w: Workload, root: Path, sizes: Sizes, variants: list[str],
         envs: Mapping[str, Mapping[str, str]], states: Mapping[str, Path], reps: int,
         warmup: int, glassbreak: str, attempts: bool,
         daemon_pid: int | None = None) -> dict[str, Any]:
    cwd = root / w.cwd
    res: dict[str, Any] = {"profile": w.profile, "what": w.what, "script": w.script,
                           "limit": w.limit, "variants": {}, "problems": [], "status": "ok"}
    if not cwd.is_dir():
        res["status"], res["reason"] = "n/a", f"no data for it ({cwd} missing)"
        res["target"] = verdict(w.name, None, w.limit, [], res["reason"])
        return res

    cpu: dict[str, list[float]] = {v: [] for v in variants}  # the daemon's CPU per warm run

    def go(v: str) -> Outcome:
        if w.reset is not None:
            w.reset(root, sizes)
        c0 = cpu_seconds(daemon_pid) if daemon_pid and v.startswith("warm") else None
        o = run_once(_argv(v, w, glassbreak), cwd, envs[v])
        c1 = cpu_seconds(daemon_pid) if c0 is not None and daemon_pid else None
        if c0 is not None and c1 is not None:
            cpu[v].append(c1 - c0)
        return o

    ref = go("bare")
    res["bare_output"] = ref.stdout[-2000:]
    if ref.rc != 0:
        res["status"] = "n/a"
        res["reason"] = f"bare run exited {ref.rc}: {ref.stderr.strip()[-300:]}"
        res["target"] = verdict(w.name, None, w.limit, [], res["reason"])
        return res
    times: dict[str, list[float]] = {v: [] for v in variants}
    problems: dict[str, list[str]] = {v: [] for v in variants}
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    blocks: dict[str, dict[str, Any]] = {}  # distinct blocks over all sandboxed runs

    def record(v: str, o: Outcome, timed: bool) -> None:
        if timed:
            times[v].append(o.elapsed)
        if v == "bare":
            if o.rc != ref.rc or _norm(w, o.stdout) != _norm(w, ref.stdout):
                problems[v].append("bare runs differ from each other: the workload is not "
                                   "deterministic")
            return
        for p in judge(ref, o, w.normalize):
            if p not in problems[v]:
                problems[v].append(p)
        for b in o.blocked:
            key = f"{b.get('layer')} {b.get('rule_id')} {' '.join((b.get('argv') or [])[:3])}"
            entry = blocks.setdefault(key, {"variants": [], "line": block_line(b), "count": 0,
                                            "rule_id": b.get("rule_id")})
            entry["count"] += 1
            if v not in entry["variants"]:
                entry["variants"].append(v)
        if o.result is not None:
            results[v].append({k: o.result.get(k) for k in ("run_id", "execs", "blocked",
                                                            "duration_ms", "exit_code")})

    for v in variants:
        for _ in range(warmup):
            record(v, go(v), timed=False)
    for i in range(reps):
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        for v in order:
            record(v, go(v), timed=True)
    bare = times["bare"]
    for v in variants:
        s = summarize(times[v])
        entry: dict[str, Any] = {"times": times[v], "summary": s, "problems": problems[v]}
        if v != "bare" and s is not None and bare:
            pr = paired_ratios(times[v], bare)
            entry["ratio"] = s["median"] / statistics.median(bare)
            entry["paired_ratio"] = summarize(pr)
            if cpu[v]:
                entry["daemon_cpu_s"] = statistics.median(cpu[v])
            if results[v]:
                entry["execs"] = statistics.median(r["execs"] or 0 for r in results[v])
                entry["supervisor_ms"] = statistics.median(
                    r["duration_ms"] or 0.0 for r in results[v])
        if results[v]:
            entry["last_run"] = results[v][-1]
        res["variants"][v] = entry
    res["false_blocks"] = list(blocks.values())
    warm_problems = problems.get("warm", []) or problems.get("cold", [])
    res["problems"] = sorted({p for v in variants for p in problems[v]})
    # the target's figure: the median of the per-round paired ratios (robust to the machine's
    # speed drifting during the run); the ratio of the medians is kept beside it
    ratio = (res["variants"].get("warm", {}).get("paired_ratio") or {}).get("median")
    res["target"] = verdict(w.name, ratio, w.limit, warm_problems + problems["bare"],
                            "" if "warm" in variants else "warm path not measured")
    res["cold_ratio"] = (res["variants"].get("cold", {}).get("paired_ratio") or {}).get("median")
    # where the time goes: the last warm (else cold) run's execs, as the audit log saw them
    for v in ("warm", "cold"):
        last = res["variants"].get(v, {}).get("last_run")
        if last and last.get("run_id") and v in states:
            res["exec_profile"] = {"variant": v, "run_id": last["run_id"],
                                   **exec_profile(read_audit(states[v], last["run_id"]))}
            break
    if attempts:
        if w.reset is not None:
            w.reset(root, sizes)
        res["exec_attempts"] = exec_attempts(_argv("bare", w, glassbreak), cwd, envs["bare"])
    dcpu = res["variants"].get("warm", {}).get("daemon_cpu_s")
    n = (res.get("exec_profile") or {}).get("execs")
    tries = (res.get("exec_attempts") or {}).get("execve")
    if dcpu is not None and n:
        res["daemon_cpu_ms_per_exec"] = dcpu * 1e3 / n
    if dcpu is not None and tries:
        res["daemon_cpu_ms_per_attempt"] = dcpu * 1e3 / tries
    _log_result(w, res)
    return res


def _norm(w: Workload, s: str) -> str:
    return w.normalize(s) if w.normalize else s


def _log_result(w: Workload, res: dict[str, Any]) -> None:
    parts = []
    for v, e in res["variants"].items():
        s = e.get("summary")
        if s:
            pr = e.get("paired_ratio")
            parts.append(f"{v} {s['median'] * 1e3:.0f} ms" + (
                f" ({pr['median']:.2f}x)" if pr else ""))
    log(f"{w.name}: {', '.join(parts)} -> {res['target']['status']}")
    for b in res.get("false_blocks", []):
        log(f"  FALSE BLOCK x{b['count']} ({_variants(b)}): {b['line']}")
    for p in res["problems"]:
        if not p.startswith("FALSE BLOCK"):
            log(f"  {p}")


# -- rendering ----------------------------------------------------------------------------------
def _variants(block: Mapping[str, Any]) -> str:
    return ", ".join(block.get("variants") or [block.get("variant", "?")])


def _ms(s: float | None) -> str:
    return "n/a" if s is None else (f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.1f} s")


def render(data: Mapping[str, Any]) -> str:
    """The suite as a table: per workload bare/warm/cold medians with min..max, the warm and
    cold ratios (the median of the per-round paired ratios, and their min..max), the verdict,
    then every false block and where the time went."""
    lines = [f"{'workload':<12} {'profile':<13} {'bare':>15} {'warm':>15} {'cold':>15} "
             f"{'warm x':>16} {'cold x':>7}  verdict"]
    for name, r in data.get("workloads", {}).items():
        if r.get("status") != "ok":
            lines.append(f"{name:<12} {r.get('profile', ''):<13} n/a: {r.get('reason')}")
            continue
        cells = []
        for v in VARIANTS:
            s = r["variants"].get(v, {}).get("summary")
            cells.append("n/a" if not s else
                         f"{_ms(s['median'])} ({_ms(s['min'])}..{_ms(s['max'])})"
                         if s["median"] < 10 else _ms(s["median"]))
        pr = r["variants"].get("warm", {}).get("paired_ratio")
        wx = "n/a" if not pr else f"{pr['median']:.2f}x ({pr['min']:.2f}-{pr['max']:.2f})"
        cx = "n/a" if r.get("cold_ratio") is None else f"{r['cold_ratio']:.2f}x"
        t = r["target"]
        lines.append(f"{name:<12} {r['profile']:<13} {cells[0]:>15} {cells[1]:>15} "
                     f"{cells[2]:>15} {wx:>16} {cx:>7}  {t['status']} (<= {t['limit']:.2f}x)")
    for name, r in data.get("workloads", {}).items():
        for b in r.get("false_blocks", []):
            lines.append(f"FALSE BLOCK {name} x{b['count']} ({_variants(b)}): {b['line']}")
        for p in r.get("problems", []):
            if not p.startswith("FALSE BLOCK"):
                lines.append(f"MISMATCH {name}: {p}")
    for name, r in data.get("workloads", {}).items():
        ep = r.get("exec_profile")
        if not ep:
            continue
        att = r.get("exec_attempts") or {}
        held = ", ".join(f"{b} x{n}" for b, n in ep["by_binary"].get("held", {}).items())
        line = (f"execs {name}: {ep['execs']} ({ep['fast']} fast, {ep['held']} held in Python, "
                f"{ep['refused']} refused)")
        if att:
            line += f"; {att['execve']} execve attempts bare, {att['ENOENT']} of them PATH misses"
        dcpu = r["variants"].get("warm", {}).get("daemon_cpu_s")
        if dcpu is not None:
            line += f"; daemon CPU {dcpu * 1e3:.0f} ms per run"
            if r.get("daemon_cpu_ms_per_attempt") is not None:
                line += f" ({r['daemon_cpu_ms_per_attempt']:.2f} ms per exec attempt)"
        if held:
            line += f"; held: {held}"
        lines.append(line)
    for n in data.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--short", action="store_true", help="the reduced sizes the tests use")
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (in-process) runs")
    ap.add_argument("--layers", action="store_true",
                    help="also time warm runs with --degraded ebpf / exec-gate")
    ap.add_argument("--glassbreak", default=GLASSBREAK)
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    data = run_suite(reps=args.reps, warmup=args.warmup, sizes=SHORT if args.short else FULL,
                     only=only, glassbreak=args.glassbreak, cold=not args.no_cold,
                     layers=args.layers)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    print(render(data))
    bad = [n for n, r in data["workloads"].items() if r["target"]["status"] == "FALSE BLOCK"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
