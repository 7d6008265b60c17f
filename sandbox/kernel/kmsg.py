"""Which syscall killed a process: the kernel's seccomp audit records (type=1326) in /dev/kmsg.

When a seccomp filter kills a task, the kernel logs (if kill_process is in
/proc/sys/kernel/seccomp/actions_logged and no audit daemon takes the records over netlink):

  audit: type=1326 audit(...): ... pid=N comm="x" exe="/x" sig=31 arch=c000003e syscall=83 ...

Open a KmsgWatcher BEFORE the run starts (it seeks to the end, so only new records are read);
after a SIGSYS death call find_seccomp_kill(pid). None means the kernel did not log it (audit
daemon, rate limit, actions_logged): report "killed by seccomp (SIGSYS), syscall unknown".

The same records also go to the audit netlink multicast group, where no printk rate limit
applies (with kernel audit on and no audit daemon, every record is printk()ed and a burst of
other records can hide a kill in /dev/kmsg): the watcher reads that group too, through the
process's Landlock audit reader when one runs (sandbox.kernel.landlock_audit), else its own
socket.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import time

KMSG = "/dev/kmsg"
ACTIONS_LOGGED = "/proc/sys/kernel/seccomp/actions_logged"
_REC = re.compile(rb"type=1326 .*?\bpid=(\d+) .*?\bsig=(\d+) arch=([0-9a-f]+) syscall=(\d+)")
ARCH_NAMES = {0xC000003E: "x86_64", 0x40000003: "i386", 0xC00000B7: "aarch64",
              0x40000028: "arm"}


def kernel_logs_kills() -> bool:
    try:
        with open(ACTIONS_LOGGED) as f:
            return "kill_process" in f.read().split()
    except OSError:
        return False


class KmsgWatcher:
    """Non-blocking reader of new /dev/kmsg records; remembers seccomp kills by pid."""

    def __init__(self) -> None:
        self.kills: dict[int, tuple[int, str, str]] = {}
        self.enabled = kernel_logs_kills()
        self._fd = -1
        self._nl: socket.socket | None = None
        if not self.enabled:
            return
        from sandbox.kernel.landlock_audit import DenialRouter

        if DenialRouter.running() is None:
            try:
                self._nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                                         | socket.SOCK_NONBLOCK, 9)  # NETLINK_AUDIT
                self._nl.bind((0, 1))  # AUDIT_NLGRP_READLOG
            except OSError:
                if self._nl is not None:
                    self._nl.close()
                self._nl = None
        try:
            self._fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = -1
            self.enabled = False

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> None:
        """Read every record available now and remember the seccomp kills."""
        while self._nl is not None:
            try:
                data = self._nl.recv(1 << 16)
            except OSError:
                break
            off = 0
            while off + 16 <= len(data):
                ln, typ = int.from_bytes(data[off:off + 4], "little"), \
                    int.from_bytes(data[off + 4:off + 6], "little")
                if ln < 16:
                    break
                if typ == 1326:
                    self._parse(b"type=1326 " + data[off + 16:off + ln])
                off += (ln + 3) & ~3
        while self._fd >= 0:
            try:
                rec = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten while we were away: skip ahead
                    continue
                return
            if not rec:
                return
            self._parse(rec)

    def _parse(self, rec: bytes) -> None:
        m = _REC.search(rec)
        if not m:
            return
        pid, _sig, arch_hex, nr = int(m[1]), int(m[2]), int(m[3], 16), int(m[4])
        from sandbox.kernel.seccomp import syscall_name

        arch = ARCH_NAMES.get(arch_hex, f"{arch_hex:#x}")
        self.kills[pid] = (nr, syscall_name(nr, arch_hex), arch)

    def find_seccomp_kill(self, pid: int, timeout: float = 0.2) -> tuple[int, str, str] | None:
        """(syscall nr, name, arch) of the seccomp kill of `pid`, waiting up to `timeout`. Also
        from the process's audit reader when one runs (sandbox.kernel.landlock_audit): with
        kernel audit on, /dev/kmsg gets every record rate-limited, the multicast group not."""
        from sandbox.kernel.landlock_audit import DenialRouter

        router = DenialRouter.running()
        if self._fd < 0 and router is None and self._nl is None:
            return None
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if pid in self.kills:
                return self.kills[pid]
            if router is not None and pid in router.seccomp_kills:
                from sandbox.kernel.seccomp import syscall_name

                arch_hex, nr = router.seccomp_kills[pid]
                return nr, syscall_name(nr, arch_hex), ARCH_NAMES.get(arch_hex, f"{arch_hex:#x}")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            p = select.poll()  # not select(): a daemon's fds pass 1,024
            for fd in (self._fd, self._nl.fileno() if self._nl is not None else -1):
                if fd >= 0:
                    p.register(fd, select.POLLIN)
            p.poll(min(left, 0.01) * 1000)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def __enter__(self) -> KmsgWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
