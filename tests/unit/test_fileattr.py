"""sandbox.kernel.fileattr without a kernel: decoding a root run's chmod/chown/utime
notifications, the caller's credentials, and the kernel's permission rules the supervisor
applies before it performs a call (the real thing: tests/security/test_root_attrs.py)."""

from __future__ import annotations

import errno
import os
import stat
import struct
from typing import Any

import pytest

from sandbox.kernel import fileattr as FA
from sandbox.kernel.unotify import AT_FDCWD, AUDIT_ARCH_X86_64, Notif

SPEC = {s.name: s for s in FA.CALLS}


class FakeMem:
    """The caller's memory: {address: bytes}."""

    def __init__(self, blobs: dict[int, bytes]) -> None:
        self.blobs = blobs

    def read(self, addr: int, n: int) -> bytes:
        if addr not in self.blobs:
            raise FA.KernelAnswer(errno.EFAULT)
        return self.blobs[addr][:n]

    def cstring(self, addr: int, limit: int = 4096) -> bytes:
        data = self.read(addr, 1 << 20)
        end = data.find(b"\0")
        if end < 0 or end >= limit:
            raise FA.KernelAnswer(errno.ENAMETOOLONG)
        return data[:end]


def notif(*args: int) -> Notif:
    return Notif(1, 4242, 0, AUDIT_ARCH_X86_64, tuple(args) + (0,) * (6 - len(args)))


def u64(v: int) -> int:
    return v & 0xFFFFFFFFFFFFFFFF


def decode(name: str, *args: int, mem: dict[int, bytes] | None = None) -> FA.AttrCall:
    return FA.decode(SPEC[name], notif(*args), FakeMem(mem or {}))  # type: ignore[arg-type]


def test_path_calls_follow_or_not_as_the_kernel_does() -> None:
    m = {0x1000: b"a/b\0"}
    c = decode("chmod", 0x1000, 0o4755, mem=m)
    assert (c.path, c.dirfd, c.mode, c.follow) == (b"a/b", AT_FDCWD, 0o4755, True)
    c = decode("lchown", 0x1000, 5, u64(-1), mem=m)
    assert (c.follow, c.uid, c.gid) == (False, 5, -1)
    c = decode("fchownat", 3, 0x1000, 1, 2, FA.AT_SYMLINK_NOFOLLOW, mem=m)
    assert (c.dirfd, c.follow, c.empty_path) == (3, False, False)
    c = decode("fchmodat2", u64(AT_FDCWD), 0x1000, 0o644, FA.AT_EMPTY_PATH, mem=m)
    assert (c.dirfd, c.follow, c.empty_path) == (AT_FDCWD, True, True)
    c = decode("fchmodat", 7, 0x1000, 0o1777 | 0o170000, mem=m)  # only the permission bits
    assert c.mode == 0o1777 and c.follow
    c = decode("fchmod", 9, 0o600)
    assert (c.path, c.fd) == (None, 9)


def test_bad_arguments_get_the_kernels_errno() -> None:
    with pytest.raises(FA.KernelAnswer) as e:
        decode("fchownat", 3, 0x1000, 1, 2, 0x4000, mem={0x1000: b"x\0"})
    assert e.value.errno == errno.EINVAL
    with pytest.raises(FA.KernelAnswer) as e:
        decode("chmod", 0, 0o644)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(FA.KernelAnswer) as e:
        decode("chmod", 0x2000, 0o644)  # unreadable
    assert e.value.errno == errno.EFAULT
    with pytest.raises(FA.KernelAnswer) as e:
        decode("chmod", 0x1000, 0o644, mem={0x1000: b"x" * 5000})
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FA.KernelAnswer) as e:  # utimensat(fd, NULL, times, flags)
        decode("utimensat", 4, 0, 0x3000, FA.AT_SYMLINK_NOFOLLOW,
               mem={0x3000: struct.pack("<qqqq", 1, 0, 2, 0)})
    assert e.value.errno == errno.EINVAL


def test_times_of_each_layout() -> None:
    ts = {0x3000: struct.pack("<qqqq", 10, 5, 20, FA.UTIME_OMIT)}
    c = decode("utimensat", 4, 0, 0x3000, 0, mem=ts)  # NULL path: the fd itself
    assert (c.path, c.fd, c.times) == (None, 4, ((10, 5), (20, FA.UTIME_OMIT)))
    c = decode("utimes", 0x1000, 0x3000, mem={0x1000: b"f\0",
                                              0x3000: struct.pack("<qqqq", 1, 2, 3, 999_999)})
    assert c.times == ((1, 2000), (3, 999_999_000))
    c = decode("utime", 0x1000, 0x3000, mem={0x1000: b"f\0", 0x3000: struct.pack("<qq", 7, 8)})
    assert c.times == ((7, 0), (8, 0))
    c = decode("futimesat", 5, 0, 0x3000, mem={0x3000: struct.pack("<qqqq", 1, 0, 1, 0)})
    assert c.fd == 5 and c.path is None
    for bad in (struct.pack("<qqqq", 1, 1_000_000, 1, 0), struct.pack("<qqqq", 1, -1, 1, 0)):
        with pytest.raises(FA.KernelAnswer) as e:
            decode("utimes", 0x1000, 0x3000, mem={0x1000: b"f\0", 0x3000: bad})
        assert e.value.errno == errno.EINVAL
    with pytest.raises(FA.KernelAnswer) as e:
        decode("utimensat", 4, 0, 0x3000, 0,
               mem={0x3000: struct.pack("<qqqq", 1, 1_000_000_000, 1, 0)})
    assert e.value.errno == errno.EINVAL


def test_xattrs_are_never_performed() -> None:
    mem = FakeMem({0x1000: b"system.posix_acl_access\0", 0x2000: b"security.capability\0",
                   0x3000: b"user.x\0", 0x4000: b"system.posix_acl_default\0"})
    answers = {a: FA.xattr_answer(notif(0x9000, a), mem)  # type: ignore[arg-type]
               for a in (0x1000, 0x2000, 0x3000, 0x4000)}
    assert answers == {0x1000: errno.EOPNOTSUPP, 0x2000: errno.EPERM, 0x3000: errno.EPERM,
                       0x4000: errno.EOPNOTSUPP}


STATUS = b"""Name:\tsh
Umask:\t0022
State:\tS (sleeping)
Tgid:\t12
Pid:\t12
Uid:\t1000\t1001\t1002\t1003
Gid:\t2000\t2001\t2002\t2003
FDSize:\t64
Groups:\t4 24 27\x20
NStgid:\t12
CapInh:\t0000000000000000
CapPrm:\t0000000000000009
CapEff:\t0000000000000009
CapBnd:\t000001ffffffffff
"""


def test_credentials_are_the_filesystem_ids_groups_and_effective_caps() -> None:
    cr = FA.parse_status(STATUS)
    assert (cr.fsuid, cr.fsgid, cr.groups, cr.caps) == (1003, 2003, frozenset({4, 24, 27}), 9)
    assert cr.cap(FA.CAP_CHOWN) and cr.cap(FA.CAP_FOWNER) and not cr.cap(FA.CAP_FSETID)
    assert cr.in_group(2003) and cr.in_group(27) and not cr.in_group(2000)
    empty = FA.parse_status(STATUS.replace(b"Groups:\t4 24 27\x20", b"Groups:\t"))
    assert empty.groups == frozenset()
    with pytest.raises(ValueError):
        FA.parse_status(b"Name:\tx\n")


def st(mode: int, uid: int, gid: int) -> Any:
    return os.stat_result((mode, 1, 1, 1, uid, gid, 0, 0, 0, 0))


ROOT = FA.Creds(0, 0, frozenset(), (1 << 41) - 1 & ~(1 << FA.CAP_FSETID))
USER = FA.Creds(1000, 1000, frozenset({100}), 0)


def call(name: str, **kw: Any) -> FA.AttrCall:
    return FA.AttrCall(SPEC[name], 1, **kw)


def test_the_kernels_permission_rules_for_the_caller() -> None:
    mine, roots = st(stat.S_IFREG | 0o644, 1000, 1000), st(stat.S_IFREG | 0o666, 0, 0)
    # chmod: the owner or CAP_FOWNER; setgid dropped without the group or CAP_FSETID
    assert FA.permitted(call("chmod", mode=0o600), roots, ROOT) == (0, 0o600)
    assert FA.permitted(call("chmod", mode=0o600), roots, USER) == (errno.EPERM, 0o600)
    assert FA.permitted(call("chmod", mode=0o2755), mine, USER) == (0, 0o2755)
    assert FA.permitted(call("chmod", mode=0o2755), roots, ROOT) == (0, 0o2755)  # its group
    assert FA.permitted(call("chmod", mode=0o2755), st(stat.S_IFREG, 0, 5), ROOT) == (0, 0o755)
    # chown: CAP_CHOWN for another owner; the owner may pick one of its groups
    assert FA.permitted(call("chown", uid=5, gid=5), mine, ROOT)[0] == 0
    assert FA.permitted(call("chown", uid=5, gid=-1), mine, USER)[0] == errno.EPERM
    assert FA.permitted(call("chown", uid=1000, gid=100), mine, USER)[0] == 0
    assert FA.permitted(call("chown", uid=-1, gid=7), mine, USER)[0] == errno.EPERM
    assert FA.permitted(call("chown", uid=-1, gid=100), roots, USER)[0] == errno.EPERM
    # times: explicit ones for the owner (or CAP_FOWNER); "now" for any writer
    now = ((0, FA.UTIME_NOW), (0, FA.UTIME_NOW))
    assert FA.permitted(call("utimensat", times=((1, 0), (1, 0))), roots, USER)[0] == errno.EPERM
    assert FA.permitted(call("utimensat", times=now), roots, USER)[0] == 0  # 0666
    assert FA.permitted(call("utimensat", times=now), st(stat.S_IFREG | 0o644, 0, 0),
                        USER)[0] == errno.EACCES
    assert FA.permitted(call("utimensat", times=((1, 0), (1, 0))), mine, USER)[0] == 0
    assert FA.permitted(call("utimensat", times=((1, 0), (1, 0))), roots, ROOT)[0] == 0
