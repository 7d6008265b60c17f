"""Issue 10 #1: a verdict binds to the file the kernel runs, not to a path string.

The attack (root, in a run): exec /usr/bin/cat twice (judged, then learned into the fast-allow
set), chroot into a directory whose usr/bin/cat is a copy of kubectl (plus /bin/sh, libc and the
loader for the stub's `#!/bin/sh`), then execv("/usr/bin/cat", ["kubectl", "delete", ...]). A
gate that judges path strings in its own root runs it, every time, and audits it as cat.

- Under the base profile `chroot` itself is refused (seccomp baseline) and recorded.
- Under a profile that allows chroot, it is refused too: no run holds CAP_SYS_CHROOT (the
  filesystem layer drops it, docs/filesystem.md "What root loses"). The gate's own answer (it
  resolves a path in the caller's root and judges the file by what it is) and the kernel's
  identity check are what a run that could chroot would meet; test_exec_race and
  test_exec_bigargs exercise them without chroot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.security._attack import audit, blocks

pytestmark = pytest.mark.kernel

RUNS = 20

ATTACK = r"""
import os, subprocess, sys
jail, verb, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(2):  # judged, then learned: the fast path knows /usr/bin/cat now
    subprocess.run(["/usr/bin/cat", "/dev/null"], check=True)
print("WARM", flush=True)
try:
    os.chroot(jail)
except OSError as e:
    print("CHROOT-REFUSED", e.errno, flush=True)
    sys.exit(0)
os.chdir("/")
codes = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/usr/bin/cat", ["kubectl", verb, "pod", "x", "--force"])
        except OSError as e:
            os._exit(100 + e.errno)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print("CODES", sorted(set(codes)), flush=True)
"""

BASE_PROFILE = """\
name: chroot-base
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: [cat, sh, "/usr/bin/python3*"]
  default: block
"""

# no `extends: base`: a profile whose seccomp allows chroot (the identity binding must hold
# on its own)
OPEN_PROFILE = BASE_PROFILE.replace("name: chroot-base\nextends: base\n", "name: chroot-open\n")


def make_jail(root: Path, stub: Path) -> None:
    """root/usr/bin/cat = the kubectl stub; root/bin/sh = dash with its libraries."""
    (root / "usr" / "bin").mkdir(parents=True)
    shutil.copy2(stub, root / "usr" / "bin" / "cat")
    sh = os.path.realpath("/bin/sh")
    (root / "bin").mkdir()
    shutil.copy2(sh, root / "bin" / "sh")
    ldd = subprocess.run(["ldd", sh], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+)", ldd):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)


def _run(tmp_path: Path, state_dir: Path, profile: str, verb: str
         ) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    prof = tmp_path / "p.yaml"
    prof.write_text(profile)
    script = tmp_path / "attack.py"
    script.write_text(ATTACK)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(state_dir)}
    r = run_cli("run", "--profile", str(prof), "--", "/usr/bin/python3", str(script),
                str(tmp_path / "root"), verb, str(RUNS), env=env, timeout=120)
    return r, audit(state_dir)


@pytest.fixture
def jail(tmp_path: Path, stub_kubectl: Path) -> Path:
    make_jail(tmp_path / "root", stub_kubectl)
    return tmp_path / "root"


def test_chroot_is_refused_and_recorded_by_the_baseline(tmp_path: Path, state_dir: Path,
                                                        jail: Path) -> None:
    r, events = _run(tmp_path, state_dir, BASE_PROFILE, "delete")
    assert "WARM" in r.stdout, r.stderr  # positive control: the real cat runs
    assert "stub-kubectl" not in r.stdout, "the copy ran as /usr/bin/cat"
    assert "CHROOT-REFUSED 1" in r.stdout, r.stdout + r.stderr
    b = blocks(events, "seccomp", "seccomp.no-chroot")
    assert b, json.dumps(blocks(events), indent=1)
    assert b[0]["verdict"] == "deny" and b[0]["pid"] and "chroot" in str(b[0]["reason"])
    assert b[0]["binary"] and "attack.py" in " ".join(b[0]["argv"])  # type: ignore[arg-type]
    assert "seccomp.no-chroot" in r.stderr  # the block is shown, like every block


def test_chroot_is_refused_even_where_seccomp_allows_it(tmp_path: Path, state_dir: Path,
                                                       jail: Path) -> None:
    """No run holds CAP_SYS_CHROOT: the path-renaming chroot cannot happen at all."""
    for verb in ("delete", "get"):
        r, _ = _run(tmp_path, state_dir, OPEN_PROFILE, verb)
        assert "WARM" in r.stdout, r.stdout + r.stderr  # positive control: the real cat runs
        assert f"CHROOT-REFUSED {1}" in r.stdout, r.stdout + r.stderr  # EPERM: no capability
        assert "stub-kubectl" not in r.stdout
