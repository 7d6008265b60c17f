"""SipHash-2-4 and the exec hash: the C implementation (native/siphash.c in libgbresp.so, which
the native responder uses) and the pure-Python fallback agree with the reference vectors and
with each other; the byte layout is the one the kernel program hashes (native/bpf/exectrace.c;
tests/integration/test_ebpf.py proves the kernel agrees)."""

from __future__ import annotations

import os
import random
import struct

import pytest

from sandbox.kernel import siphash, unotify_native
from tests.unit.sip_vectors import VECTORS_SIP64

KEY = bytes(range(16))


def _c_available() -> bool:
    unotify_native.reset()
    return unotify_native.load() is not None


@pytest.mark.parametrize("impl", ["c", "py"])
def test_siphash24_reference_vectors(impl: str) -> None:
    if impl == "c" and not _c_available():
        pytest.skip("libgbresp.so is not built (make setup)")
    f = siphash.c_siphash if impl == "c" else siphash.py_siphash
    for i in range(64):
        assert f(KEY, bytes(range(i))) == int.from_bytes(VECTORS_SIP64[i], "little"), i


def test_c_and_python_agree_on_the_exec_hash() -> None:
    if not _c_available():
        pytest.skip("libgbresp.so is not built (make setup)")
    rnd = random.Random(7)
    key = rnd.randbytes(16)
    for alen in [*range(20), 4095, 4096, 4097, 8191, 65537]:
        for elen in (0, 1, 7, 8, 9, 2048, 2049):
            a, e = rnd.randbytes(alen), rnd.randbytes(elen)
            hc = siphash.c_exec_hash(key, a, e)
            assert hc == siphash.py_exec_hash(key, a, e)
            # the definition: SipHash-2-4 over le64(alen) || le64(elen) || a || e
            assert hc == siphash.py_siphash(key, struct.pack("<QQ", alen, elen) + a + e)


def test_the_fallback_is_used_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBREAK_NO_NATIVE", "1")
    k = os.urandom(16)
    assert siphash.hash_args(k, [b"a"], [b"B=1"]) == siphash.py_exec_hash(k, b"a\0", b"B=1\0")


def test_the_hash_separates_argv_from_env() -> None:
    k = os.urandom(16)
    a1, e1 = siphash.argv_region([b"a", b"b"]), siphash.env_region([])
    a2, e2 = siphash.argv_region([b"a"]), siphash.env_region([b"b"])
    assert a1 + e1 == a2 + e2  # same bytes...
    assert siphash.exec_hash(k, a1, e1) != siphash.exec_hash(k, a2, e2)  # ...different hash


def test_regions() -> None:
    assert siphash.argv_region([]) == b"\0"  # the kernel's argv[0] = "" for argc == 0
    assert siphash.argv_region([b"/bin/true", b"x"]) == b"/bin/true\0x\0"
    assert siphash.env_region([]) == b""
    assert siphash.env_region([b"A=1", b"B="]) == b"A=1\0B=\0"
