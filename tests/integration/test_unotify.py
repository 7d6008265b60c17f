"""sandbox.kernel.unotify against the real kernel: a child with an exec-notifying seccomp filter
(sandbox.kernel.seccomp + sandbox.kernel.child), answered by sandbox.kernel.unotify.Listener."""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path

import pytest

from sandbox.kernel.unotify import Listener, read_exec
from sandbox.policy.profile import SeccompPolicy
from tests.conftest import is_root, require

pytestmark = pytest.mark.kernel


def _spawn(argv: list[str], cwd: str = "/", env: dict[str, str] | None = None):  # type: ignore
    require(is_root(), "seccomp user-notification tests need root")
    from sandbox.kernel.child import spawn
    from sandbox.kernel.seccomp import compile_filter

    filt = compile_filter(SeccompPolicy(), exec_notify=True, guard_sigcont=False)
    child = spawn(argv, executable=argv[0], env=env or {"PATH": "/usr/bin:/bin"}, cwd=cwd,
                  cgroup_procs=None, bpf=filt.bpf, notify=True, stdout=os.open(
                      os.devnull, os.O_WRONLY), stderr=os.open(os.devnull, os.O_WRONLY))
    assert child.listener_fd is not None
    return child


def _next(lst: Listener, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    r, _, _ = select.select([lst.fd], [], [], timeout)
    assert r, "no notification arrived"
    n = lst.recv()
    assert n is not None
    return n


def _wait(pid: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError("the child hung")


def test_reads_path_argv_envp_and_answers(tmp_path: Path) -> None:
    child = _spawn(["/bin/sh", "-c", "cd /tmp && exec ./nonexistent-gb a 'b c'; "
                    "exit 7"], env={"PATH": "/usr/bin:/bin", "GB_T": "1"})
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    n = _next(lst)  # the child's own first execve
    req = read_exec(lst, n)
    assert req.path == "/bin/sh" and req.argv[0] == "/bin/sh" and "GB_T=1" in req.envp
    assert req.binary == os.path.realpath("/bin/sh") and lst.id_valid(n.id)
    t0 = time.perf_counter()
    assert lst.respond_continue(n.id)
    n = _next(lst)
    req = read_exec(lst, n)
    assert req.path == "./nonexistent-gb" and req.cwd == "/tmp"
    assert req.argv == ["./nonexistent-gb", "a", "b c"]
    assert req.abspath == "/tmp/nonexistent-gb"
    lst.respond_errno(n.id, errno.EPERM)  # a failed `exec` ends a non-interactive sh
    assert _wait(child.pid) in (126, 2)
    assert time.perf_counter() - t0 < 5
    lst.close()


def test_dead_listener_fails_pending_exec_with_enosys(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    child = _spawn(["/bin/sh", "-c", f"/usr/bin/touch {flag}; exit $?"])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    lst.respond_continue(_next(lst).id)  # sh itself
    _next(lst)  # touch: pending, never answered
    lst.close()  # the supervisor is gone
    code = _wait(child.pid, timeout=3)  # the tree fails, it does not hang
    assert code != 0 and not flag.exists()


def test_oversized_argv_is_refused_with_a_rule(tmp_path: Path) -> None:
    child = _spawn(["/bin/sh", "-c", 'exec /bin/true $(seq 1 5000)'])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    lst.respond_continue(_next(lst).id)
    lst.respond_continue(_next(lst).id)  # seq
    n = _next(lst)
    req = read_exec(lst, n)
    assert req.too_large and req.error and "4096" in req.error
    lst.respond_errno(n.id, errno.EPERM)
    assert _wait(child.pid) != 0
    lst.close()


def test_proc_self_fd_resolves_in_the_callers_view(tmp_path: Path) -> None:
    link = tmp_path / "indirect"
    link.symlink_to("/proc/self/fd/0")
    child = _spawn(["/bin/sh", "-c", f"exec {link} < /bin/true"])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    lst.respond_continue(_next(lst).id)
    n = _next(lst)
    req = read_exec(lst, n)
    assert req.fileless is not None and req.binary is None
    assert req.fd_target == os.path.realpath("/bin/true")  # the CHILD's fd 0, not ours
    lst.respond_errno(n.id, errno.EPERM)
    _wait(child.pid)
    lst.close()
