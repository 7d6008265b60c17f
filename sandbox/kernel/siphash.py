"""SipHash-2-4 and the exec hash the in-kernel verification compares (native/bpf/exectrace.c).

    exec_hash(key, argv_region, env_region) -> int (u64)
        = SipHash-2-4(key, le64(len(argv_region)) || le64(len(env_region))
                           || argv_region || env_region)
    argv_region(argv) = b"\\0".join(argv) + b"\\0"      (what mm->arg_start..arg_end holds;
                                                        argv == [] is [b""] since Linux 5.18)
    env_region(envp)  = b"\\0".join(envp) + b"\\0", or b"" when envp is empty

One C implementation (native/siphash.c, inside libgbresp.so, which the native responder uses
too) and a pure-Python twin that gives identical results (used when the library is missing, or
with GLASSBREAK_NO_NATIVE=1). The key is 16 bytes: k0 = le64(key[:8]), k1 = le64(key[8:]).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from sandbox.kernel.nativelib import load

MASK = (1 << 64) - 1


class _PySip:
    __slots__ = ("v0", "v1", "v2", "v3", "tail", "total")

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("the SipHash key is 16 bytes")
        k0, k1 = struct.unpack("<QQ", key)
        self.v0 = 0x736F6D6570736575 ^ k0
        self.v1 = 0x646F72616E646F6D ^ k1
        self.v2 = 0x6C7967656E657261 ^ k0
        self.v3 = 0x7465646279746573 ^ k1
        self.tail = b""
        self.total = 0

    @staticmethod
    def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
        for _ in range(n):
            v0 = (v0 + v1) & MASK
            v1 = ((v1 << 13) | (v1 >> 51)) & MASK
            v1 ^= v0
            v0 = ((v0 << 32) | (v0 >> 32)) & MASK
            v2 = (v2 + v3) & MASK
            v3 = ((v3 << 16) | (v3 >> 48)) & MASK
            v3 ^= v2
            v0 = (v0 + v3) & MASK
            v3 = ((v3 << 21) | (v3 >> 43)) & MASK
            v3 ^= v0
            v2 = (v2 + v1) & MASK
            v1 = ((v1 << 17) | (v1 >> 47)) & MASK
            v1 ^= v2
            v2 = ((v2 << 32) | (v2 >> 32)) & MASK
        return v0, v1, v2, v3

    def update(self, data: bytes) -> None:
        self.total += len(data)
        data = self.tail + bytes(data)
        n = len(data) // 8 * 8
        v0, v1, v2, v3 = self.v0, self.v1, self.v2, self.v3
        rounds = self._rounds
        for (m,) in struct.iter_unpack("<Q", data[:n]):
            v3 ^= m
            v0, v1, v2, v3 = rounds(v0, v1, v2, v3, 2)
            v0 ^= m
        self.v0, self.v1, self.v2, self.v3 = v0, v1, v2, v3
        self.tail = data[n:]

    def final(self) -> int:
        b = ((self.total & 0xFF) << 56) | int.from_bytes(self.tail, "little")
        v0, v1, v2, v3 = self.v0, self.v1, self.v2, self.v3
        v3 ^= b
        v0, v1, v2, v3 = self._rounds(v0, v1, v2, v3, 2)
        v0 ^= b
        v2 ^= 0xFF
        v0, v1, v2, v3 = self._rounds(v0, v1, v2, v3, 4)
        return v0 ^ v1 ^ v2 ^ v3


def py_siphash(key: bytes, data: bytes) -> int:
    s = _PySip(key)
    s.update(data)
    return s.final()


def py_exec_hash(key: bytes, argv_region: bytes, env_region: bytes) -> int:
    s = _PySip(key)
    s.update(struct.pack("<QQ", len(argv_region), len(env_region)))
    s.update(argv_region)
    s.update(env_region)
    return s.final()


def _lib() -> Any:
    lib = load()
    if lib is None or not hasattr(lib, "gb_exec_hash"):
        return None
    return lib


def c_siphash(key: bytes, data: bytes) -> int:
    lib = _lib()
    if lib is None:
        raise OSError("libgbresp.so is not available")
    return int(lib.gb_siphash(data, len(data), key))


def c_exec_hash(key: bytes, argv_region: bytes, env_region: bytes) -> int:
    lib = _lib()
    if lib is None:
        raise OSError("libgbresp.so is not available")
    return int(lib.gb_exec_hash(key, argv_region, len(argv_region), env_region,
                                len(env_region)))


def exec_hash(key: bytes, argv_region: bytes, env_region: bytes) -> int:
    if len(key) != 16:
        raise ValueError("the SipHash key is 16 bytes")
    if _lib() is not None:
        return c_exec_hash(key, argv_region, env_region)
    return py_exec_hash(key, argv_region, env_region)


def argv_region(argv: Sequence[bytes]) -> bytes:
    """The bytes mm->arg_start..arg_end hold for this argv."""
    if not argv:
        argv = [b""]
    return b"\0".join(argv) + b"\0"


def env_region(envp: Sequence[bytes]) -> bytes:
    return b"\0".join(envp) + b"\0" if envp else b""


def hash_args(key: bytes, argv: Sequence[bytes], envp: Sequence[bytes]) -> int:
    return exec_hash(key, argv_region(argv), env_region(envp))

