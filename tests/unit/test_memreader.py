"""sandbox.kernel.unotify.MemReader on this process's own memory (/proc/self/mem): argv arrays
read as one region when the strings lie back to back, one by one otherwise, and never a string
where the pointers say otherwise (overlapping, out of order, shared)."""

from __future__ import annotations

import ctypes
import os

import pytest

from sandbox.kernel.unotify import ARG_MAX_KERNEL, MemReader, TooLarge


def _array(ptrs: list[int]) -> tuple[ctypes.Array[ctypes.c_uint64], int]:
    arr = (ctypes.c_uint64 * (len(ptrs) + 1))(*ptrs, 0)
    return arr, ctypes.addressof(arr)


def _read(ptrs: list[int]) -> list[bytes]:
    arr, addr = _array(ptrs)
    mem = MemReader(os.getpid())
    try:
        return mem.string_array(addr, [ARG_MAX_KERNEL])
    finally:
        mem.close()
        del arr


def test_back_to_back_strings() -> None:
    words = [b"%d" % i for i in range(5000)]
    buf = ctypes.create_string_buffer(b"\0".join(words) + b"\0")
    base = ctypes.addressof(buf)
    ptrs, off = [], 0
    for w in words:
        ptrs.append(base + off)
        off += len(w) + 1
    assert _read(ptrs) == words


@pytest.mark.parametrize("shape", ["overlap", "shared", "reversed", "gap"])
def test_pointers_that_are_not_back_to_back_are_followed(shape: str) -> None:
    words = [b"w%03d" % i for i in range(100)]
    buf = ctypes.create_string_buffer(b"\0".join(words) + b"\0")
    base = ctypes.addressof(buf)
    ptrs = [base + 5 * i for i in range(100)]
    if shape == "overlap":  # one pointer into the middle of a string
        ptrs[10] += 2
    elif shape == "shared":  # the same string twice
        ptrs[20] = ptrs[19]
    elif shape == "reversed":
        ptrs.reverse()
    else:  # a string skipped
        del ptrs[30]
    want = [ctypes.string_at(p) for p in ptrs]
    assert _read(ptrs) == want


def test_past_the_kernels_budget_is_too_large() -> None:
    big = ctypes.create_string_buffer(b"x" * 100_000)
    ptrs = [ctypes.addressof(big)] * (ARG_MAX_KERNEL // 100_000 + 2)
    with pytest.raises(TooLarge):
        _read(ptrs)
