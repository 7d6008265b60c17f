"""Foreign syscall ABIs never run: i386 `int 0x80` and x32 syscalls are killed (bad-arch action
KILL_PROCESS), and the kill is recorded with the arch and syscall (kernel audit record)."""

from __future__ import annotations

import errno
import platform

import pytest

from sandbox.kernel.kmsg import KmsgWatcher, kernel_logs_kills
from sandbox.kernel.seccomp import compile_filter
from sandbox.policy.profile import SeccompPolicy
from tests._sandbox_helpers import compile_c, run_sandboxed
from tests.conftest import is_root, require

pytestmark = pytest.mark.kernel

# mkdir via each ABI; a side effect proves the syscall ran when it must not have.
INT80 = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    long r;
    /* i386 mkdir = 39 */
    __asm__ volatile ("int $0x80" : "=a"(r) : "a"(39), "b"(argv[1]), "c"(0755) : "memory");
    printf("int80 returned %ld\n", r);
    return 0;
}"""

X32 = r"""
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long r = syscall(0x40000000L | 83, argv[1], 0755);  /* x32 mkdir */
    printf("x32 returned %ld errno %d\n", r, errno);
    return 0;
}"""

SIGCONT = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
static int child(void *a) { return 0; }
static char stack[65536];
int main(void) {
    pid_t me = getpid();
    printf("kill=%d\n", kill(me, SIGCONT) ? errno : 0);
    printf("kill_hi=%d\n", syscall(SYS_kill, me, 0x100000000L | SIGCONT) ? errno : 0);
    printf("tgkill=%d\n", syscall(SYS_tgkill, me, me, SIGCONT) ? errno : 0);
    printf("pidfd=%d\n", syscall(SYS_pidfd_send_signal, syscall(SYS_pidfd_open, me, 0),
                                  SIGCONT, 0, 0) ? errno : 0);
    printf("sigqueue=%d\n", sigqueue(me, SIGCONT, (union sigval){0}) ? errno : 0);
    printf("pdeathsig=%d\n", prctl(PR_SET_PDEATHSIG, SIGCONT) ? errno : 0);
    printf("f_setsig=%d\n", fcntl(0, F_SETSIG, SIGCONT) ? errno : 0);
    printf("clone=%d\n", clone(child, stack + sizeof stack, SIGCONT, 0) < 0 ? errno : 0);
    printf("kill_usr1_ignored=%d\n", (signal(SIGUSR1, SIG_IGN), kill(me, SIGUSR1)) ? errno : 0);
    printf("f_setsig_usr1=%d\n", fcntl(0, F_SETSIG, SIGUSR1) ? errno : 0);
    return 0;
}"""


@pytest.fixture(autouse=True)
def _env() -> None:
    require(is_root(), "needs root")
    require(platform.machine() == "x86_64", "foreign-ABI tests are written for x86_64")


@pytest.mark.parametrize("name,src,arch", [("int80", INT80, "i386"), ("x32", X32, "x86_64")])
def test_foreign_abi_syscall_is_killed_and_recorded(tmp_path, name, src, arch):
    require(kernel_logs_kills(), "the kernel does not log seccomp kills")
    exe = compile_c(tmp_path, name, src)
    target = tmp_path / "made-by-foreign-abi"
    # the profile allows mkdir: only the arch check stands between the program and the syscall
    f = compile_filter(SeccompPolicy(rules=[{"action": "errno:EPERM", "syscalls": ["rmdir"]}]),
                       exec_notify=False)
    with KmsgWatcher() as km:
        r = run_sandboxed([str(exe), str(target)], bpf=f.bpf)
        found = km.find_seccomp_kill(r.pid, timeout=2)
    assert r.signal == 31, (r.out, r.err)
    assert not target.exists(), "the foreign-ABI syscall ran"
    assert "returned" not in r.out
    assert found is not None, "the kill was not recorded"
    nr, _syscall, got_arch = found
    assert got_arch == arch
    if name == "int80":
        assert nr == 39
    else:
        assert nr == 0x40000000 | 83
    # control: without the filter the same program runs (so the test can fail)
    r2 = run_sandboxed([str(exe), str(target)], bpf=None)
    assert r2.signal is None and "returned" in r2.out


def test_nothing_inside_can_send_sigcont(tmp_path):
    exe = compile_c(tmp_path, "sigcont", SIGCONT)
    f = compile_filter(SeccompPolicy(), exec_notify=False, guard_sigcont=True)
    r = run_sandboxed([str(exe)], bpf=f.bpf)
    res = dict(line.split("=") for line in r.out.split())
    eperm = str(errno.EPERM)
    for k in ("kill", "kill_hi", "tgkill", "pidfd", "sigqueue", "pdeathsig", "f_setsig", "clone"):
        assert res[k] == eperm, (k, r.out)
    assert res["kill_usr1_ignored"] == "0" and res["f_setsig_usr1"] == "0"
    # the complement path: an allow-list profile that allows kill & co unconditionally
    names = ["kill", "tgkill", "pidfd_send_signal", "pidfd_open", "rt_sigqueueinfo", "prctl",
             "fcntl", "clone"]
    f2 = compile_filter(SeccompPolicy(defaultAction="log", rules=[
        {"action": "allow", "syscalls": names}]), exec_notify=False)
    assert f2.extra, "the guards must be stacked in a second filter"
    r2 = run_sandboxed([str(exe)], bpf=f2.bpf, extra_bpf=f2.extra)
    res2 = dict(line.split("=") for line in r2.out.split())
    assert res2 == res, (r2.out, r.out)
    # control: unguarded, SIGCONT goes through
    r3 = run_sandboxed([str(exe)], bpf=compile_filter(SeccompPolicy(), exec_notify=False,
                                                      guard_sigcont=False).bpf)
    assert "kill=0" in r3.out


def test_shell_kill_cont_is_refused():
    f = compile_filter(SeccompPolicy(), exec_notify=False)
    r = run_sandboxed(["/bin/sh", "-c", "sleep 5 & kill -STOP $!; kill -CONT $!; echo rc=$?;"
                       " kill -KILL $!"], bpf=f.bpf)
    assert "rc=1" in r.out and "Operation not permitted" in r.err
