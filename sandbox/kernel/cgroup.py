"""One cgroup v2 leaf per run: <cgroup2 mount>/glassbreak/<run_id>.

The rule (documented in README): the child enters the leaf before anything else runs; every
descendant inherits it, and setsid/double fork/daemonize do not leave a cgroup. When a run ends,
its leaf is killed (cgroup.kill) and removed, so nothing started by the run outlives it.
A stale leaf (its supervisor died without cleaning up) is killed by cleanup_stale().

The leaf's cgroup id (what bpf_get_current_cgroup_id() returns) is the inode number of its dir.
No controllers are enabled in glassbreak/, so the "no internal processes" rule never applies
(the leaf holds the processes; glassbreak/ itself never does).
"""

from __future__ import annotations

import errno
import os
import select
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import KernelFeatureMissing, RunnerError

PARENT = "glassbreak"
OWNER_XATTR = "trusted.glassbreak.owner"  # "<pid>:<starttime>" of the supervisor


def cgroup2_mount() -> Path:
    """The cgroup2 mount point (from /proc/mounts; the unified hierarchy on hybrid hosts)."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return Path(parts[1].replace("\\040", " "))
    except OSError:
        pass
    raise KernelFeatureMissing(
        "cgroup v2 is not mounted",
        hint="mount it: `mount -t cgroup2 none /sys/fs/cgroup/unified` (make setup does it)",
    )


_BASE: Path | None = None


def _base() -> Path:
    """glassbreak's parent cgroup; found once per process (one stat per run after that)."""
    global _BASE
    if _BASE is not None and _BASE.is_dir():
        return _BASE
    base = cgroup2_mount() / PARENT
    try:
        base.mkdir(exist_ok=True)
    except OSError as e:
        raise RunnerError(f"cannot create the cgroup {base}: {e.strerror}",
                          hint="glassbreak needs root (or a delegated cgroup v2 subtree)") from e
    if not (base / "cgroup.kill").exists():
        raise KernelFeatureMissing("this kernel's cgroup v2 has no cgroup.kill (Linux >= 5.14)",
                                   hint="use a newer kernel or the VM in vagrant/")
    _BASE = base
    return base


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[1].split()[19].decode()


@dataclass
class RunCgroup:
    path: Path
    id: int

    @classmethod
    def create(cls, run_id: str) -> RunCgroup:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise RunnerError(f"bad run id for a cgroup: {run_id!r}", hint="internal error")
        path = _base() / run_id
        try:
            path.mkdir()
        except FileExistsError as e:
            raise RunnerError(f"cgroup {path} already exists", hint="run ids must be unique; "
                              "`glassbreak doctor` lists stale cgroups") from e
        except OSError as e:
            raise RunnerError(f"cannot create the cgroup {path}: {e.strerror}",
                              hint="glassbreak needs root (or a delegated cgroup v2 subtree)"
                              ) from e
        me = os.getpid()
        ensure_watchdog()
        try:
            os.setxattr(path, OWNER_XATTR, f"{me}:{_starttime(me)}".encode())
        except OSError:
            pass  # not fatal: cleanup_stale falls back to "empty or not"
        return cls(path=path, id=os.stat(path).st_ino)

    @property
    def procs_path(self) -> str:
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            with open(self.path / "cgroup.procs") as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:
            with open(self.path / "cgroup.events") as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "populated":
                        return v.strip() == "1"
        except FileNotFoundError:
            return False
        return False

    def kill(self) -> None:
        """SIGKILL every process in the leaf (and any sub-cgroup), atomically w.r.t. forks."""
        try:
            with open(self.path / "cgroup.kill", "w") as f:
                f.write("1")
        except FileNotFoundError:
            pass

    def wait_empty(self, timeout: float = 2.0) -> bool:
        """Wait until cgroup.events says populated 0 (poll on the file); True when empty."""
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(self.path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            p = select.poll()
            p.register(fd, select.POLLPRI | select.POLLERR)
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                if b"populated 0" in os.read(fd, 4096):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                p.poll(min(left, 0.05) * 1000)
        finally:
            os.close(fd)

    def remove(self) -> bool:
        """rmdir the leaf (after kill/wait_empty); True when it is gone."""
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return False
                time.sleep(0.01)
        return False

    def close(self) -> None:
        """kill + wait_empty + remove: what ends every run."""
        self.kill()
        self.wait_empty(2.0)
        self.remove()


_watchdog: tuple[int, int] | None = None  # (owner pid, write end of the pipe)


def ensure_watchdog() -> None:
    """Fork (once per supervisor process) a tiny watchdog outside every run cgroup. It blocks on
    a pipe; when the supervisor dies (even by SIGKILL) the pipe closes and the watchdog kills
    every leaf this supervisor owns. So no process of a run outlives its supervisor (the direct
    child also has PDEATHSIG)."""
    global _watchdog
    me = os.getpid()
    if _watchdog is not None and _watchdog[0] == me:
        return
    base = str(cgroup2_mount() / PARENT)
    owner = f"{me}:{_starttime(me)}".encode()
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the watchdog: setsid (no terminal signals), wait for EOF, kill, exit
        try:
            os.setsid()
            import signal as _signal

            for s in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
                      _signal.SIGPIPE):
                _signal.signal(s, _signal.SIG_IGN)
            os.closerange(0, r)
            os.closerange(r + 1, 0x7FFFFFFF)
            while os.read(r, 1):
                pass
            for name in os.listdir(base):
                d = os.path.join(base, name)
                try:
                    if os.getxattr(d, OWNER_XATTR) != owner:
                        continue
                    with open(os.path.join(d, "cgroup.kill"), "w") as f:
                        f.write("1")
                    for _ in range(200):
                        try:
                            os.rmdir(d)
                            break
                        except OSError:
                            time.sleep(0.01)
                except OSError:
                    continue
        finally:
            os._exit(0)
    os.close(r)
    _watchdog = (me, w)


def _owner_alive(path: Path) -> bool | None:
    try:
        owner = os.getxattr(path, OWNER_XATTR).decode()
    except OSError:
        return None
    pid_s, _, start = owner.partition(":")
    if not pid_s.isdigit():
        return None
    return _starttime(int(pid_s)) == start


def cleanup_stale() -> list[str]:
    """Kill and remove leftover leaves of dead runs; the names removed."""
    try:
        base = cgroup2_mount() / PARENT
    except KernelFeatureMissing:
        return []
    if not base.is_dir():
        return []
    removed = []
    for d in sorted(base.iterdir()):
        if not d.is_dir():
            continue
        alive = _owner_alive(d)
        cg = RunCgroup(d, os.stat(d).st_ino)
        if alive or (alive is None and cg.populated()):
            continue
        cg.close()
        if not d.exists():
            removed.append(d.name)
    return removed
