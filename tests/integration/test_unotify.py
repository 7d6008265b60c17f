"""sandbox.kernel.unotify against the real kernel: a child with an exec-notifying seccomp filter
(sandbox.kernel.seccomp + sandbox.kernel.child), answered by sandbox.kernel.unotify.Listener;
what it asked for planned in its own view (sandbox.kernel.execplan)."""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path

import pytest

from sandbox.kernel.execplan import AT_FDCWD, PlanError, TaskView, fd_target, plan_exec
from sandbox.kernel.unotify import ARG_MAX_KERNEL, Listener, read_exec
from sandbox.policy.profile import SeccompPolicy
from tests.conftest import is_root, require

pytestmark = pytest.mark.kernel


def _spawn(argv: list[str], cwd: str = "/", env: dict[str, str] | None = None):  # type: ignore
    require(is_root(), "seccomp user-notification tests need root")
    from sandbox.kernel.child import spawn
    from sandbox.kernel.seccomp import compile_filter

    filt = compile_filter(SeccompPolicy(), exec_notify=True)
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
    assert req.path == b"/bin/sh" and req.argv[0] == b"/bin/sh" and b"GB_T=1" in req.envp
    with TaskView(n.pid) as view:
        plan = plan_exec(view, req.dirfd, req.path, req.argv, req.envp)
        st = os.stat("/bin/sh")
        assert (plan.st_dev, plan.st_ino) == (st.st_dev, st.st_ino) and not plan.script
        assert plan.argv == req.argv and plan.envp == req.envp
        plan.close()
    assert lst.id_valid(n.id)
    t0 = time.perf_counter()
    assert lst.respond_continue(n.id)
    n = _next(lst)
    req = read_exec(lst, n)
    assert req.path == b"./nonexistent-gb" and req.cwd == "/tmp"
    assert req.argv_str == ["./nonexistent-gb", "a", "b c"]
    with TaskView(n.pid) as view, pytest.raises(PlanError) as e:
        plan_exec(view, req.dirfd, req.path, req.argv, req.envp)
    assert e.value.errno == errno.ENOENT
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


def test_large_argv_is_read_completely(tmp_path: Path) -> None:
    child = _spawn(["/bin/sh", "-c", 'exec /bin/true $(seq 1 30000)'])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    lst.respond_continue(_next(lst).id)
    lst.respond_continue(_next(lst).id)  # seq
    n = _next(lst)
    req = read_exec(lst, n)
    assert not req.error and len(req.argv) == 30001 and req.argv[-1] == b"30000"
    lst.respond_errno(n.id, errno.EPERM)
    assert _wait(child.pid) != 0
    lst.close()


def test_past_the_kernels_limit_is_too_large(tmp_path: Path) -> None:
    n_args = ARG_MAX_KERNEL // 100 + 10
    code = f"import os; os.execv('/bin/true', ['true'] + ['x' * 91] * {n_args})"
    child = _spawn(["/usr/bin/python3", "-S", "-c", code])
    lst = Listener(child.listener_fd)  # type: ignore[arg-type]
    lst.respond_continue(_next(lst).id)
    n = _next(lst)
    req = read_exec(lst, n)
    assert req.too_large and req.error and "kernel" in req.error
    lst.respond_errno(n.id, errno.E2BIG)
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
    with TaskView(n.pid) as view:
        o = view.open(AT_FDCWD, req.path)
        try:
            assert o.via_fd is not None  # through a magic fd link: fileless
            assert fd_target(o.fd) == os.path.realpath("/bin/true")  # the CHILD's fd 0, not ours
        finally:
            os.close(o.fd)
    lst.respond_errno(n.id, errno.EPERM)
    _wait(child.pid)
    lst.close()
