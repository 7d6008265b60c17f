"""Load a bcc-compiled program that calls bpf_loop() with a callback (bcc 0.26 cannot).

Used by sandbox.kernel.ebpf for the exec verification (its argv hash loops over the argv pages
with bpf_loop). A libbpf-based loader with real relocations would make this unnecessary.

bcc 0.26 compiles `bpf_loop(n, cb, ctx, 0)` but leaves the callback address as a plain
`ld_imm64 r2, 0` (its loader ignores the relocation), and the kernel then rejects the program
("R2 type=scalar expected=func"); it would also reject a callback without BTF func_info
("missing btf func_info"). So:

  1. compile with bcc as usual; the callback is a NON-static bcc function taking only the loop
     index (bcc rewrites extra parameters of non-static functions as kprobe registers), so it is
     compiled into its own section and `BPF.dump_func()` returns its bytes;
  2. append the callback after the main program (it becomes subprogram 1), and turn every
     `ld_imm64 r2, 0` that feeds `call bpf_loop` into `ld_imm64 r2, <pseudo func>` with
     src_reg = BPF_PSEUDO_FUNC (4) and imm = callback_start - (insn_index + 1);
  3. load it with BPF_PROG_LOAD and a minimal BTF blob (INT, PTR, two FUNC_PROTOs, two FUNCs)
     plus func_info for both subprograms;
  4. hand the fd to bcc (BPF.Function in bpf.funcs) so bcc's attach_* and cleanup work.

Map references need no work: bcc already wrote the map fds into the instructions.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
BPF_PROG_LOAD = 5
BPF_BTF_LOAD = 18
BPF_FUNC_loop = 181
BPF_PSEUDO_FUNC = 4
BPF_PSEUDO_CALL = 1
OP_LD_IMM64 = 0x18
OP_CALL = 0x85

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class LoadError(Exception):
    def __init__(self, msg: str, log: str = "") -> None:
        super().__init__(msg + (("\n--- verifier log (tail) ---\n" + log[-6000:]) if log else ""))
        self.log = log


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    r = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _insns(code: bytes) -> list[list[int]]:
    return [list(struct.unpack_from("<BBhi", code, i * 8)) for i in range(len(code) // 8)]


def _pack(insns: list[list[int]]) -> bytes:
    return b"".join(struct.pack("<BBhi", *x) for x in insns)


def link_callback(main: bytes, cb: bytes) -> tuple[bytes, int, int]:
    """-> (program bytes, callback start index, number of patched call sites)."""
    m, c = _insns(main), _insns(cb)
    for op, regs, _off, _imm in c:
        if op == OP_CALL and (regs >> 4) == BPF_PSEUDO_CALL:
            raise LoadError("the callback must not call other (non-inlined) functions")
    start = len(m)
    sites = 0
    ncalls = sum(1 for op, regs, _o, imm in m
                 if op == OP_CALL and regs == 0 and imm == BPF_FUNC_loop)
    i = 0
    while i < len(m):
        op, regs, _off, imm = m[i]
        if op == OP_LD_IMM64:
            if (regs & 0xF) == 2 and (regs >> 4) == 0 and imm == 0 and m[i + 1][3] == 0:
                # the relocation placeholder: confirm it reaches a `call bpf_loop` as R2
                j = i + 2
                ok = False
                while j < len(m) and j < i + 16:
                    o2, r2, _f2, imm2 = m[j]
                    if o2 == OP_CALL:
                        ok = (r2 == 0 and imm2 == BPF_FUNC_loop)
                        break
                    if (r2 & 0xF) == 2 and o2 not in (0x7B, 0x63, 0x6B, 0x73):  # r2 redefined
                        break
                    j += 1
                if ok:
                    m[i][1] = 2 | (BPF_PSEUDO_FUNC << 4)
                    m[i][3] = start - i - 1
                    sites += 1
            i += 2
            continue
        i += 1
    if sites != ncalls:
        raise LoadError(f"found {ncalls} bpf_loop calls but could patch {sites} callback sites")
    if sites == 0:  # the optimiser removed every call: no subprogram to append
        return _pack(m), -1, 0
    return _pack(m) + _pack(c), start, sites


# --- a minimal BTF blob: two functions (main: long f(void *ctx); cb: long f(long idx, void *ctx))
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO = 1, 2, 12, 13


def func_btf(main_name: str, cb_name: str) -> tuple[bytes, int, int]:
    """-> (BTF blob, type id of main FUNC, type id of callback FUNC)."""
    strs = b"\0"
    offs = {}
    for s in ("long", "ctx", "idx", main_name, cb_name):
        offs[s] = len(strs)
        strs += s.encode() + b"\0"

    def hdr(name_off, kind, vlen, size_or_type):
        return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)

    t = b""
    t += hdr(offs["long"], BTF_KIND_INT, 0, 8) + struct.pack("<I", (1 << 24) | 64)  # 1: long
    t += hdr(0, BTF_KIND_PTR, 0, 0)  # 2: void *
    t += hdr(0, BTF_KIND_FUNC_PROTO, 1, 1) + struct.pack("<II", offs["ctx"], 2)  # 3
    t += hdr(offs[main_name], BTF_KIND_FUNC, 0, 3)  # 4: static (linkage 0)
    t += hdr(0, BTF_KIND_FUNC_PROTO, 2, 1) + struct.pack("<IIII", offs["idx"], 1, offs["ctx"], 2)
    t += hdr(offs[cb_name], BTF_KIND_FUNC, 0, 5)  # 6
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(t), len(t), len(strs))
    return header + t + strs, 4, 6


def load_btf(blob: bytes) -> int:
    buf = ctypes.create_string_buffer(blob, len(blob))
    log = ctypes.create_string_buffer(65536)
    attr = (ctypes.c_uint8 * 128)()
    struct.pack_into("<QQIII", attr, 0, ctypes.addressof(buf), ctypes.addressof(log), len(blob),
                     len(log), 1)
    try:
        return _bpf(BPF_BTF_LOAD, attr)
    except OSError as e:
        raise LoadError(f"BPF_BTF_LOAD: {e}", log.value.decode(errors="replace")) from e


def prog_load(prog_type: int, code: bytes, name: str, btf_fd: int,
              func_info: list[tuple[int, int]], log_level: int = 0,
              log_size: int = 1 << 24) -> int:
    """BPF_PROG_LOAD with func_info. Offsets of union bpf_attr (PROG_LOAD) are uapi-stable:
    prog_type 0, insn_cnt 4, insns 8, license 16, log_level 24, log_size 28, log_buf 32,
    kern_version 40, prog_flags 44, prog_name 48, prog_ifindex 64, expected_attach_type 68,
    prog_btf_fd 72, func_info_rec_size 76, func_info 80, func_info_cnt 88 (tests check them
    against the running kernel's BTF)."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")
    fi = b"".join(struct.pack("<II", off, tid) for off, tid in func_info)
    fibuf = ctypes.create_string_buffer(fi, len(fi))
    log = ctypes.create_string_buffer(log_size if log_level else 1)
    attr = (ctypes.c_uint8 * 160)()
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(code) // 8, ctypes.addressof(insns),
                     ctypes.addressof(lic), log_level, len(log) if log_level else 0,
                     ctypes.addressof(log) if log_level else 0, 0, 0)
    struct.pack_into("16s", attr, 48, name.encode()[:15])
    struct.pack_into("<IIQI", attr, 72, btf_fd, 8, ctypes.addressof(fibuf), len(func_info))
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        if log_level == 0 and e.errno != errno.EPERM:
            # load again with the verifier log, to say why
            return prog_load(prog_type, code, name, btf_fd, func_info, log_level=1)
        raise LoadError(f"BPF_PROG_LOAD {name}: {e}",
                        log.value.decode(errors="replace") if log_level else "") from e


def load_with_callback(bpf, main_name: str, cb_name: str, prog_type: int,
                       log_level: int = 0):
    """Link, load and register `main_name` (with `cb_name` as its bpf_loop callback) in a bcc
    BPF object; returns (bcc Function, verifier log or '')."""
    from bcc import BPF

    main = bpf.dump_func(main_name.encode())
    cb = bpf.dump_func(cb_name.encode())
    code, start, _sites = link_callback(main, cb)
    blob, main_tid, cb_tid = func_btf(main_name, cb_name)
    btf_fd = load_btf(blob)
    finfo = [(0, main_tid)] + ([(start, cb_tid)] if start >= 0 else [])
    try:
        fd = prog_load(prog_type, code, main_name, btf_fd, finfo, log_level=log_level)
    finally:
        os.close(btf_fd)  # the program holds its own reference
    fn = BPF.Function(bpf, main_name.encode(), fd)
    bpf.funcs[main_name.encode()] = fn
    return fn, len(code) // 8
