"""Foreign syscall ABIs never run: i386 `int 0x80` and x32 syscalls are killed (bad-arch action
KILL_PROCESS), and the kill is recorded with the arch and syscall (kernel audit record)."""

from __future__ import annotations

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
