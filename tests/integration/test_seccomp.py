"""seccomp compile + load on the real kernel (sandbox.kernel.seccomp, loaded by
sandbox.kernel.child)."""

from __future__ import annotations

import errno
import struct

import pytest

from sandbox.errors import ProfileError
from sandbox.kernel.kmsg import KmsgWatcher, kernel_logs_kills
from sandbox.kernel.seccomp import check_syscall_names, compile_filter
from sandbox.policy.profile import SeccompPolicy
from tests._sandbox_helpers import compile_c, run_sandboxed
from tests.conftest import is_root, require

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root() -> None:
    require(is_root(), "needs root (seccomp filters are loaded in forked children)")


def policy(*rules: dict, default: str = "allow") -> SeccompPolicy:
    return SeccompPolicy(defaultAction=default, rules=list(rules))


def test_errno_rule_denies_only_that_syscall(tmp_path):
    f = compile_filter(policy({"action": "errno:EPERM", "syscalls": ["mkdir", "mkdirat"]}),
                       exec_notify=False)
    r = run_sandboxed(["/bin/sh", "-c", f"mkdir {tmp_path}/d; echo rc=$?; "
                       f"touch {tmp_path}/f && echo touched"], bpf=f.bpf)
    assert "Operation not permitted" in r.err
    assert "rc=1" in r.out and "touched" in r.out
    assert not (tmp_path / "d").exists() and (tmp_path / "f").exists()


def test_errno_by_number_and_name():
    f = compile_filter(policy({"action": "errno:13", "syscalls": ["mkdir", "mkdirat"]}),
                       exec_notify=False)
    r = run_sandboxed(["/bin/mkdir", "/tmp/gb-never"], bpf=f.bpf)
    assert r.code == 1 and "Permission denied" in r.err


def test_kill_process_reports_the_syscall():
    require(kernel_logs_kills(), "kernel does not log seccomp kills (actions_logged)")
    f = compile_filter(policy({"action": "kill", "syscalls": ["mkdir", "mkdirat"]}),
                       exec_notify=False)
    with KmsgWatcher() as km:
        r = run_sandboxed(["/bin/mkdir", "/tmp/gb-never"], bpf=f.bpf)
        assert r.signal == 31 and r.code == 159
        found = km.find_seccomp_kill(r.pid, timeout=2)
    assert found is not None
    nr, name, arch = found
    assert name in ("mkdir", "mkdirat") and arch == "x86_64" and nr in (83, 258)


def test_strictest_action_wins():
    f = compile_filter(policy({"action": "errno:EPERM", "syscalls": ["mkdir", "mkdirat"]},
                              {"action": "kill_process", "syscalls": ["mkdir", "mkdirat"]},
                              {"action": "log", "syscalls": ["mkdir"]}), exec_notify=False)
    rows = {r.syscall: r.action for r in f.syscalls}
    assert rows["mkdir"] == "kill_process"
    r = run_sandboxed(["/bin/mkdir", "/tmp/gb-never"], bpf=f.bpf)
    assert r.signal == 31


def test_unknown_syscall_is_a_profile_error_naming_it():
    with pytest.raises(ProfileError) as e:
        compile_filter(policy({"action": "errno:EPERM", "syscalls": ["mkdri", "ptrace", "fo0"]}))
    assert "'mkdri'" in e.value.message and "'fo0'" in e.value.message
    assert "ausyscall" in (e.value.hint or "")
    assert check_syscall_names(["read", "read", "socketcall"]) == ["read", "socketcall"]
    with pytest.raises(ProfileError, match="EPERMM"):
        compile_filter(policy({"action": "errno:EPERMM", "syscalls": ["mkdir"]}))


def test_conflicting_profile_rules_are_refused():
    with pytest.raises(ProfileError, match="conflict"):
        compile_filter(policy(
            {"action": "log", "syscalls": ["socket"]},
            {"action": "kill_process", "syscalls": ["socket"],
             "args": [{"arg": 0, "op": "eq", "value": 16}]}, default="errno:EPERM"))


def test_arg_condition(tmp_path):
    # socket(AF_INET6, ...) denied, AF_UNIX allowed
    f = compile_filter(policy({"action": "errno:EAFNOSUPPORT", "syscalls": ["socket"],
                               "args": [{"arg": 0, "op": "eq", "value": 10}]}),
                       exec_notify=False)
    code = ("import socket\n"
            "socket.socket(socket.AF_UNIX).close(); print('unix ok')\n"
            "try:\n socket.socket(socket.AF_INET6)\nexcept OSError as e: print('v6', e.errno)\n")
    r = run_sandboxed(["/usr/bin/python3", "-S", "-c", code], bpf=f.bpf)
    assert "unix ok" in r.out and f"v6 {errno.EAFNOSUPPORT}" in r.out


def test_exec_is_notified_and_answered():
    f = compile_filter(policy(), exec_notify=True)
    assert f.notify
    r = run_sandboxed(["/bin/sh", "-c", "/bin/true; echo done"], bpf=f.bpf, notify=True)
    assert r.code == 0 and "done" in r.out
    assert [nr for _, nr in r.seen].count(59) >= 2  # the child's own exec and /bin/true
    r = run_sandboxed(["/bin/sh", "-c", "echo hi"], bpf=f.bpf, notify=True,
                      exec_errno=errno.EPERM)
    assert r.code == 126 and r.out == ""


def test_clone3_gets_enosys_and_fork_still_works(tmp_path):
    exe = compile_c(tmp_path, "clone3", r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    char args[88]; memset(args, 0, sizeof args);
    long r = syscall(435, args, sizeof args);
    printf("clone3=%ld errno=%d\n", r, r < 0 ? errno : 0);
    pid_t p = fork();
    if (p == 0) _exit(7);
    int st; waitpid(p, &st, 0);
    printf("fork child exit=%d\n", WEXITSTATUS(st));
    return 0;
}""")
    f = compile_filter(policy({"action": "errno:EPERM", "syscalls": ["clone3"]}),
                       exec_notify=False)
    r = run_sandboxed([str(exe)], bpf=f.bpf)
    assert f"clone3=-1 errno={errno.ENOSYS}" in r.out
    assert "fork child exit=7" in r.out


def test_foreign_arches_are_not_in_the_filter():
    f = compile_filter(policy({"action": "errno:EPERM", "syscalls": ["mkdir"]}))
    assert "invalid architecture action\naction KILL_PROCESS" in f.pfc
    assert f.pfc.count("filter for arch") == 1
    insns = [struct.unpack("<HBBI", f.bpf[i:i + 8]) for i in range(0, len(f.bpf), 8)]
    # load arch, compare native, then the x32 guard: jge 0x40000000
    assert insns[1][3] == 0xC000003E
    assert any(code == 0x35 and k == 0x40000000 for code, _, _, k in insns)
    assert insns[-1][3] == 0x80000000 or any(k == 0x80000000 for *_, k in insns)


def test_root_guard_mediates_modes_owners_times_and_refuses_the_rest():
    """guard_root + mediate_root: chmod, chown, utime (explicit times) and setxattr go to the
    supervisor (sandbox.run.attrgate); the other xattr calls stay EPERM; creating a setuid or
    setgid file is refused in the filter; openat2 answers ENOSYS. Non-root runs get none of
    it (the kernel's own rules confine them: nothing notified, nothing to pay)."""
    from sandbox.kernel.seccomp import ROOT_MEDIATED, ROOT_XATTR_NOTIFY

    def rows(**kw):
        f = compile_filter(base_policy(), exec_notify=True, **kw)
        return {(r.syscall, r.action, r.condition) for r in f.syscalls
                if r.source == "root-guard"}

    assert rows(guard_root=False) == set()
    guarded = rows(guard_root=True)
    assert ("chmod", "errno:EPERM", "") in guarded and ("fsetxattr", "errno:EPERM", "") in guarded
    mediated = rows(guard_root=True, mediate_root=True)
    for name in ROOT_MEDIATED:
        assert any(n == name and a == "notify" for n, a, _ in mediated), name
    assert ("utimensat", "notify", "arg2 != NULL (explicit times)") in mediated
    for name in ROOT_XATTR_NOTIFY:
        assert (name, "notify", "") in mediated
    assert ("removexattr", "errno:EPERM", "") in mediated
    assert ("openat", "errno:EPERM", "arg3 & S_ISUID (mode)") in mediated
    assert ("open", "errno:EPERM", "arg2 & S_ISGID (mode)") in mediated
    assert ("openat2", "errno:ENOSYS", "") in mediated
    # without the listener, nothing can be mediated: the guard refuses
    f = compile_filter(base_policy(), exec_notify=False, guard_root=True, mediate_root=True)
    assert not [r for r in f.syscalls if r.action == "notify"]


def test_setid_creation_is_refused_in_the_kernel(tmp_path):
    f = compile_filter(base_policy(), exec_notify=False, guard_root=True)
    code = ("import os\n"
            f"d = {str(tmp_path)!r}\n"
            "for n, m in (('plain', 0o755), ('suid', 0o4755), ('sgid', 0o2750)):\n"
            "    try:\n"
            "        os.close(os.open(d + '/' + n, os.O_CREAT | os.O_WRONLY, m)); print(n, 0)\n"
            "    except OSError as e:\n"
            "        print(n, e.errno)\n")
    r = run_sandboxed(["/usr/bin/python3", "-S", "-c", code], bpf=f.bpf)
    assert r.out.split("\n")[:3] == ["plain 0", f"suid {errno.EPERM}", f"sgid {errno.EPERM}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def base_policy() -> SeccompPolicy:
    from sandbox.policy.loader import load_profile

    return load_profile("base").seccomp
