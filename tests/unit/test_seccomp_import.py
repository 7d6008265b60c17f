"""The first runs of a daemon import pyseccomp from many threads at once: each must get the whole
module (a thread that found it in sys.modules while another was importing it got it
half-initialized), and the find_library patch must be gone afterwards."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import ctypes.util, threading
slow = ctypes.util.find_library
from sandbox.kernel import seccomp as S
out, go = [], threading.Event()
def one():
    go.wait()
    try:
        out.append(hasattr(S._lib(), "SyscallFilter"))
    except Exception as e:
        out.append(repr(e))
ts = [threading.Thread(target=one) for _ in range(20)]
for t in ts:
    t.start()
go.set()
for t in ts:
    t.join()
print(out.count(True), len(out), ctypes.util.find_library is slow)
"""


def test_concurrent_first_imports_all_get_the_whole_module() -> None:
    for _ in range(3):  # a fresh interpreter each time: the race is the first import
        r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["20", "20", "True"], (r.stdout, r.stderr)
