"""Test helpers for the kernel runner tests (seccomp, child, cgroup): a seccomp
user-notification responder that answers CONTINUE (or an errno) to every notification,
a run-to-completion wrapper around sandbox.kernel.child.spawn, and a tiny C compiler helper."""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_ID_VALID = 0x40082102
FLAG_CONTINUE = 1
_NOTIF = struct.Struct("QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]
_RESP = struct.Struct("QqiI")


@dataclass
class Responder:
    """Answers every notification on `fd` in a thread: CONTINUE, or -errno for paths in deny."""

    fd: int
    seen: list[tuple[int, int]] = field(default_factory=list)  # (pid, nr)
    error: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Responder:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if not r:
                continue
            buf = bytearray(_NOTIF.size)  # zeroed before every receive
            try:
                fcntl.ioctl(self.fd, NOTIF_RECV, buf)
            except OSError:
                continue  # ENOENT: the target died; EBADF: closed
            nid, pid, _fl, nr, _arch, _ip, *_args = _NOTIF.unpack(buf)
            self.seen.append((pid, nr))
            if self.error:
                resp = _RESP.pack(nid, 0, -self.error, 0)
            else:
                resp = _RESP.pack(nid, 0, 0, FLAG_CONTINUE)
            try:
                fcntl.ioctl(self.fd, NOTIF_SEND, bytearray(resp))
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


@dataclass
class Ran:
    status: int
    out: str
    err: str
    pid: int
    seen: list[tuple[int, int]]

    @property
    def code(self) -> int:
        st = self.status
        return os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def run_sandboxed(argv: list[str], *, bpf: bytes | None, notify: bool = False,
                  cgroup_procs: str | None = None, timeout: float = 20,
                  env: dict[str, str] | None = None, cwd: str = "/",
                  exec_errno: int = 0, extra_bpf: tuple[bytes, ...] = ()) -> Ran:
    """spawn() + answer notifications + collect stdout/stderr + reap."""
    from sandbox.kernel.child import spawn

    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    exe = argv[0] if "/" in argv[0] else (shutil.which(argv[0]) or argv[0])
    child = spawn(argv, executable=exe, env=env or {"PATH": "/usr/bin:/bin"}, cwd=cwd,
                  cgroup_procs=cgroup_procs, bpf=bpf, notify=notify, stdin=os.open(
                      "/dev/null", os.O_RDONLY), stdout=w_out, stderr=w_err, extra_bpf=extra_bpf)
    os.close(w_out)
    os.close(w_err)
    resp = None
    if child.listener_fd is not None:
        resp = Responder(child.listener_fd, error=exec_errno).start()
    try:
        outs = {r_out: b"", r_err: b""}
        open_fds = [r_out, r_err]
        while open_fds:
            r, _, _ = select.select(open_fds, [], [], timeout)
            if not r:
                child.send_signal(9)
                raise TimeoutError(f"{argv} did not finish in {timeout} s")
            for fd in r:
                b = os.read(fd, 65536)
                if b:
                    outs[fd] += b
                else:
                    open_fds.remove(fd)
                    os.close(fd)
        status = child.wait(timeout)
        assert status is not None
        return Ran(status, outs[r_out].decode(errors="replace"),
                   outs[r_err].decode(errors="replace"), child.pid,
                   list(resp.seen) if resp else [])
    finally:
        if resp is not None:
            resp.stop()
        child.close()


def compile_c(tmp: Path, name: str, source: str, *flags: str) -> Path:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed for the foreign-ABI tests (make setup installs it)"
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run([gcc, "-O0", "-static", *flags, "-o", str(out), str(src)], check=True,
                   capture_output=True)
    return out


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a process we started may linger as one)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# A supervisor in a subprocess: spawns `sleep 60` through sandbox.kernel.child and prints its pid
# (argv[1]: the repository, for the import). Used to SIGKILL a supervisor in tests.
SPAWN_SLEEP_HELPER = r"""
import os, sys, time
sys.path[:0] = [sys.argv[1]]
from sandbox.kernel.child import spawn
c = spawn(["sleep", "60"], executable="/bin/sleep", env={}, cwd="/", cgroup_procs=None,
          bpf=None, notify=False)
print(c.pid, flush=True)
time.sleep(60)
"""
