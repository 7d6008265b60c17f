"""A small, stdlib-only reader of kernel BTF (/sys/kernel/btf/vmlinux).

The in-kernel exec verification (native/bpf/exectrace.c) reads kernel structs; the headers
installed on this project's machines do not match the running kernel, so the offsets come from
here and are passed to the BPF compile as -DOFF_* macros.

Purpose: byte offsets of (nested) struct members of the RUNNING kernel, so BPF C compiled with
mismatched headers can read kernel structs with bpf_probe_read_kernel at the right offsets.

    btf = Btf.load()                                   # /sys/kernel/btf/vmlinux
    btf.member("task_struct", "mm")                    # -> Member(offset=.., size=8, ...)
    btf.offset("mm_struct", "exe_file")                # byte offset (anonymous unions/structs
                                                       #  are searched through transparently)
    btf.offset("bpf_attr", "prog_btf_fd")              # works for unions too
    btf.offset("mm_struct", "arg_start")

Handles: every BTF kind up to ENUM64 (skipping their trailing records correctly), bitfields
(kind_flag: member.offset = bitfield_size << 24 | bit_offset; otherwise bit offset only),
anonymous struct/union members (name_off == 0) searched depth-first with their offsets added,
typedef / const / volatile / restrict / type_tag chains, and duplicate struct names (the
complete definition with the most members wins; ambiguity is an error unless all agree).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

BTF_MAGIC = 0xEB9F

# kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

KIND_NAMES = {
    INT: "INT", PTR: "PTR", ARRAY: "ARRAY", STRUCT: "STRUCT", UNION: "UNION", ENUM: "ENUM",
    FWD: "FWD", TYPEDEF: "TYPEDEF", VOLATILE: "VOLATILE", CONST: "CONST", RESTRICT: "RESTRICT",
    FUNC: "FUNC", FUNC_PROTO: "FUNC_PROTO", VAR: "VAR", DATASEC: "DATASEC", FLOAT: "FLOAT",
    DECL_TAG: "DECL_TAG", TYPE_TAG: "TYPE_TAG", ENUM64: "ENUM64",
}
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class BtfError(Exception):
    pass


@dataclass(frozen=True)
class BtfType:
    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT, type id otherwise
    members: tuple = ()  # STRUCT/UNION: ((name, type_id, bit_offset, bitfield_size), ...)
    array: tuple | None = None  # ARRAY: (elem_type, index_type, nelems)
    int_bits: int = 0  # INT: bit size of the value

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"KIND{self.kind}")


@dataclass(frozen=True)
class Member:
    path: str  # "mm_struct.exe_file" (anonymous hops shown as <anon>)
    bit_offset: int  # from the start of the outermost struct
    bitfield_size: int  # 0: not a bitfield
    type_id: int  # the member's declared type (unresolved)
    size: int  # byte size of the resolved member type (0 when unknown, e.g. a bitfield)

    @property
    def offset(self) -> int:
        if self.bit_offset % 8 or self.bitfield_size:
            raise BtfError(f"{self.path} is a bitfield (bit offset {self.bit_offset}, "
                           f"{self.bitfield_size} bits): no byte offset")
        return self.bit_offset // 8


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, version, flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        base = hdr_len
        self._strs = data[base + str_off: base + str_off + str_len]
        self._parse(data[base + type_off: base + type_off + type_len])

    @classmethod
    def load(cls, path: str | Path = "/sys/kernel/btf/vmlinux") -> Btf:
        return cls(Path(path).read_bytes())

    # -- parsing ------------------------------------------------------------------------------
    def _str(self, off: int) -> str:
        end = self._strs.index(b"\0", off)
        return self._strs[off:end].decode()

    def _parse(self, t: bytes) -> None:
        """One pass recording where each type record starts; records are decoded on demand
        (vmlinux has >100k types: decoding all of them eagerly costs ~0.6 s)."""
        self._tbytes = t
        self._pos: list[int] = [0]  # per type id: record offset in the type section
        self._cache: dict[int, BtfType] = {}
        unpack = struct.unpack_from
        pos, n = 0, len(t)
        index: dict[int, list[int]] = {}
        tid = 0
        while pos < n:
            name_off, info, _st = unpack("<III", t, pos)
            tid += 1
            self._pos.append(pos)
            vlen = info & 0xFFFF
            kind = (info >> 24) & 0x1F
            pos += 12
            if kind in (STRUCT, UNION):
                pos += 12 * vlen
                if name_off:
                    index.setdefault(name_off, []).append(tid)
            elif kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind in (ENUM, FUNC_PROTO):
                pos += 8 * vlen
            elif kind in (DATASEC, ENUM64):
                pos += 12 * vlen
            elif kind in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                pass
            else:
                raise BtfError(f"unknown BTF kind {kind} at type id {tid}")
        self._ntypes = tid
        self._by_name = {self._str(off): ids for off, ids in index.items()}

    def _decode(self, tid: int) -> BtfType:
        t, pos = self._tbytes, self._pos[tid]
        name_off, info, st = struct.unpack_from("<III", t, pos)
        pos += 12
        vlen = info & 0xFFFF
        kind = (info >> 24) & 0x1F
        kflag = bool(info >> 31)
        members: tuple = ()
        array = None
        int_bits = 0
        if kind == INT:
            int_bits = struct.unpack_from("<I", t, pos)[0] & 0xFF
        elif kind == ARRAY:
            array = struct.unpack_from("<III", t, pos)
        elif kind in (STRUCT, UNION):
            ms = []
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", t, pos + 12 * i)
                if kflag:  # bitfield encoding: size in the top 8 bits, bit offset below
                    bit_off, bf_size = m_off & 0xFFFFFF, m_off >> 24
                else:
                    bit_off, bf_size = m_off, 0
                ms.append((self._str(m_name) if m_name else "", m_type, bit_off, bf_size))
            members = tuple(ms)
        name = self._str(name_off) if name_off else ""
        return BtfType(tid, kind, name, vlen, kflag, st, members, array, int_bits)

    # -- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._ntypes + 1  # including void (id 0)

    def type(self, tid: int) -> BtfType:
        if tid <= 0 or tid > self._ntypes:
            raise BtfError(f"type id {tid} is void or out of range")
        t = self._cache.get(tid)
        if t is None:
            t = self._cache[tid] = self._decode(tid)
        return t

    def resolve(self, tid: int) -> int:
        """Skip typedefs and modifiers."""
        seen = 0
        while tid and self.type(tid).kind in _MODIFIERS:
            tid = self.type(tid).size_or_type
            seen += 1
            if seen > 64:
                raise BtfError("modifier loop")
        return tid

    def size_of(self, tid: int) -> int:
        tid = self.resolve(tid)
        if tid == 0:
            return 0
        t = self.type(tid)
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return t.size_or_type
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY and t.array is not None:
            elem, _idx, nelems = t.array
            return self.size_of(elem) * nelems
        return 0

    def find(self, name: str, kinds: tuple[int, ...] = (STRUCT, UNION)) -> BtfType:
        """The complete struct/union called `name` (the definition with the most members)."""
        cands = [self.type(i) for i in self._by_name.get(name, ()) if self.type(i).kind in kinds]
        cands = [c for c in cands if c.vlen or c.size_or_type]  # skip empty forward-ish defs
        if not cands:
            raise BtfError(f"no {'/'.join(KIND_NAMES[k] for k in kinds)} named {name!r}")
        return max(cands, key=lambda t: (t.vlen, t.size_or_type))

    def _search(self, tid: int, name: str, base_bits: int, path: str):
        """Depth-first through anonymous members; yields (Member) for each direct hit."""
        t = self.type(self.resolve(tid))
        for m_name, m_type, bit_off, bf_size in t.members:
            if m_name == name:
                size = 0 if bf_size else self.size_of(m_type)
                yield Member(f"{path}.{name}", base_bits + bit_off, bf_size, m_type, size)
            elif not m_name:
                inner = self.resolve(m_type)
                if inner and self.type(inner).kind in (STRUCT, UNION):
                    yield from self._search(inner, name, base_bits + bit_off, f"{path}.<anon>")

    def member(self, struct_name: str, member_path: str) -> Member:
        """`member_path` may be dotted ("a.b.c") through embedded (non-pointer) structs."""
        t = self.find(struct_name)
        tid, bits, path = t.id, 0, struct_name
        parts = member_path.split(".")
        m = None
        for i, part in enumerate(parts):
            hits = list(self._search(tid, part, bits, path))
            if not hits:
                raise BtfError(f"{path} has no member {part!r}")
            if len(hits) > 1:
                raise BtfError(f"{path}.{part} is ambiguous ({len(hits)} hits)")
            m = hits[0]
            if i < len(parts) - 1:
                tid = self.resolve(m.type_id)
                if self.type(tid).kind not in (STRUCT, UNION):
                    raise BtfError(f"{m.path} is a {self.type(tid).kind_name}, not an embedded "
                                   f"struct (follow pointers with separate reads)")
                bits, path = m.bit_offset, m.path
        assert m is not None
        return m

    def offset(self, struct_name: str, member_path: str) -> int:
        return self.member(struct_name, member_path).offset

    def struct_size(self, name: str) -> int:
        return self.find(name).size_or_type


# The members exec verification needs: (macro, struct, member, expected size in bytes)
EXEC_FIELDS = (
    ("OFF_TASK_MM", "task_struct", "mm", 8),
    ("OFF_MM_EXE_FILE", "mm_struct", "exe_file", 8),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start", 8),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end", 8),
    ("OFF_MM_ENV_START", "mm_struct", "env_start", 8),
    ("OFF_MM_ENV_END", "mm_struct", "env_end", 8),
    ("OFF_FILE_F_INODE", "file", "f_inode", 8),
    ("OFF_INODE_I_INO", "inode", "i_ino", 8),
    ("OFF_INODE_I_SB", "inode", "i_sb", 8),
    ("OFF_SB_S_DEV", "super_block", "s_dev", 4),
    ("OFF_BPRM_FILENAME", "linux_binprm", "filename", 8),
)


def exec_offsets(btf: Btf | None = None) -> dict[str, int]:
    """{macro: byte offset} for EXEC_FIELDS, with sizes checked (fail loudly, never guess)."""
    btf = btf or Btf.load()
    out = {}
    for macro, s, m, size in EXEC_FIELDS:
        mem = btf.member(s, m)
        if mem.size != size:
            raise BtfError(f"{s}.{m}: size {mem.size}, expected {size}")
        out[macro] = mem.offset
    return out
