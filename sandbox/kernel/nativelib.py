"""libgbresp.so, glassbreak's native library (native/gbresp.c and native/siphash.c, built by
scripts/setup.sh into $VENV/lib/libgbresp.so; GLASSBREAK_NATIVE_LIB=PATH names another build):
found, loaded once, and every ctypes signature declared, for its two users: the exec-gate
responder (sandbox.kernel.unotify_native) and the exec hash (sandbox.kernel.siphash). Both
import `load` from here, so neither imports the other. `load()` returns None when the library
is missing or unloadable, or with GLASSBREAK_NO_NATIVE=1.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

_LIB: Any = None
_TRIED = False


def load() -> Any:
    """The loaded library, or None (missing, unloadable, or GLASSBREAK_NO_NATIVE=1)."""
    global _LIB, _TRIED
    if os.environ.get("GLASSBREAK_NO_NATIVE") == "1":
        return None
    if not _TRIED:
        _TRIED = True
        try:
            lib = ctypes.CDLL(lib_path(), use_errno=True)
        except OSError:
            return None
        lib.gb_new.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.gb_new.restype = ctypes.c_void_p
        lib.gb_set_allow.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.gb_set_allow.restype = ctypes.c_int
        lib.gb_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                      ctypes.c_uint64]
        lib.gb_set_verify.restype = ctypes.c_int
        lib.gb_serve.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.gb_serve.restype = ctypes.c_int
        lib.gb_stat.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.gb_stat.restype = ctypes.c_uint64
        lib.gb_take.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.gb_take.restype = ctypes.c_size_t
        lib.gb_queue_size.argtypes = []
        lib.gb_queue_size.restype = ctypes.c_size_t
        lib.gb_free.argtypes = [ctypes.c_void_p]
        lib.gb_free.restype = None
        declare_hash(lib)
        _LIB = lib
    return _LIB


def declare_hash(lib: Any) -> None:
    """ctypes signatures of the hash functions in libgbresp.so (sandbox.kernel.siphash)."""
    lib.gb_siphash.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    lib.gb_siphash.restype = ctypes.c_uint64
    lib.gb_exec_hash.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.c_char_p, ctypes.c_size_t]
    lib.gb_exec_hash.restype = ctypes.c_uint64


def lib_path() -> str:
    return os.environ.get("GLASSBREAK_NATIVE_LIB") or os.path.join(sys.prefix, "lib",
                                                                   "libgbresp.so")


def reset() -> None:
    """Forget the load attempt (tests switch builds with GLASSBREAK_NATIVE_LIB)."""
    global _LIB, _TRIED
    _LIB, _TRIED = None, False
