"""`glassbreak doctor`: is every kernel feature the runner needs really there?
Why this module is long: a list of independent probes (one short function each, ~30), one per kernel
feature or setting the runner needs, sharing the Check type and the report: more probes make more
lines, not more coupling.

Each probe does the real thing, cheaply: a forked child loads a seccomp filter with a
user-notification listener and checks that the filter answers; bpf(2) loads a trivial program,
creates a ring buffer, loads a raw tracepoint program that calls bpf_send_signal (the verifier
refuses it when the helper is missing), attaches one to sched_process_exec, loads one that runs
a bpf_loop callback (the exec verifier hashes the argv with it), and the struct offsets the
verifier reads come out of the running kernel's BTF. One line per check:
    ok|MISSING  name  detail  (fix: ...)
Exit 1 when a required check is missing.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ARCH = platform.machine()
SYS = {"x86_64": {"bpf": 321, "seccomp": 317, "getppid": 110},
       "aarch64": {"bpf": 280, "seccomp": 277, "getppid": 173}}.get(ARCH, {})
BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SOCKET_FILTER, BPF_PROG_TYPE_RAW_TRACEPOINT = 1, 17
BPF_FUNC_send_signal = 109
BPF_FUNC_loop = 181
PROBE_ERRNO = 99


@dataclass
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""
    warn: bool = False  # a risky setting rather than a missing feature

    def line(self) -> str:
        word = "ok" if self.ok else "WARNING" if self.warn else "MISSING"
        text = f"{word:8} {self.name:22} {self.detail}"
        if not self.ok and self.fix:
            text += f"  (fix: {self.fix})"
        if not self.ok and not self.required and not self.warn:
            text += "  [optional]"
        return text


def _libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                          ctypes.c_ulong]
    return lib


def _bpf(cmd: int, attr: bytes, keep: bool = False) -> tuple[int, int]:
    lib = _libc()
    buf = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    fd = lib.syscall(SYS["bpf"], cmd, buf, 128)
    err = ctypes.get_errno()
    if fd >= 0 and not keep:
        os.close(fd)
    return fd, err


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _prog_load(prog_type: int, insns: bytes, keep: bool = False) -> tuple[int, int]:
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII", prog_type, len(insns) // 8, ctypes.addressof(code),
                       ctypes.addressof(lic), 0, 0, 0, 0, 0)
    return _bpf(BPF_PROG_LOAD, attr, keep)


MOV_R0_0 = _insn(0xB7)
EXIT = _insn(0x95)


def check_bpf() -> Check:
    fd, err = _prog_load(BPF_PROG_TYPE_SOCKET_FILTER, MOV_R0_0 + EXIT)
    if fd >= 0:
        return Check("bpf syscall", True, True, "bpf(BPF_PROG_LOAD) of a trivial program works")
    return Check("bpf syscall", False, True, f"bpf(BPF_PROG_LOAD) failed: {os.strerror(err)}",
                 "run as root on a kernel with CONFIG_BPF_SYSCALL; "
                 "check kernel.unprivileged_bpf_disabled")


def check_ringbuf() -> Check:
    attr = struct.pack("<IIIII", BPF_MAP_TYPE_RINGBUF, 0, 0, 4096 * 4, 0)
    fd, err = _bpf(BPF_MAP_CREATE, attr)
    if fd >= 0:
        return Check("ring buffer", True, True, "BPF_MAP_TYPE_RINGBUF created")
    return Check("ring buffer", False, True, f"ring buffer map refused: {os.strerror(err)}",
                 "needs Linux >= 5.8 (or the VM in vagrant/)")


def check_send_signal() -> Check:
    insns = _insn(0xB7, dst=1, imm=0) + _insn(0x85, imm=BPF_FUNC_send_signal) + MOV_R0_0 + EXIT
    fd, err = _prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, insns)
    if fd >= 0:
        return Check("bpf_send_signal", True, True,
                     "a raw tracepoint program calling bpf_send_signal() passed the verifier")
    return Check("bpf_send_signal", False, True,
                 f"the verifier refused bpf_send_signal(): {os.strerror(err)}",
                 "needs Linux >= 5.3 (or the VM in vagrant/)")


def check_raw_tracepoint() -> Check:
    """The exec verifier is a raw tracepoint on sched_process_exec (a classic one can be
    skipped under concurrent map updates)."""
    fd, err = _prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, MOV_R0_0 + EXIT, keep=True)
    if fd < 0:
        return Check("raw tracepoint", False, True,
                     f"a raw tracepoint program was refused: {os.strerror(err)}",
                     "needs Linux >= 4.17 with CONFIG_BPF_EVENTS (or the VM in vagrant/)")
    try:
        name = ctypes.create_string_buffer(b"sched_process_exec")
        lfd, err = _bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", ctypes.addressof(name), fd))
    finally:
        os.close(fd)
    if lfd < 0:
        return Check("raw tracepoint", False, True,
                     f"cannot attach to sched_process_exec: {os.strerror(err)}",
                     "needs a kernel with the sched_process_exec tracepoint (CONFIG_TRACEPOINTS)")
    return Check("raw tracepoint", True, True, "a raw tracepoint attached to sched_process_exec")


def check_bpf_loop() -> Check:
    """A program whose bpf_loop callback runs (with the BTF func_info the verifier wants)."""
    from sandbox.kernel import bpfload

    main = (_insn(0xB7, dst=1, imm=1)                       # r1 = 1 iteration
            + _insn(0x18, dst=2, src=bpfload.BPF_PSEUDO_FUNC, imm=6) + _insn(0)  # r2 = cb (+6)
            + _insn(0xB7, dst=3, imm=0) + _insn(0xB7, dst=4, imm=0)
            + _insn(0x85, imm=BPF_FUNC_loop) + MOV_R0_0 + EXIT)
    cb = MOV_R0_0 + EXIT
    try:
        blob, main_tid, cb_tid = bpfload.func_btf("gb_probe", "gb_probe_cb")
        btf_fd = bpfload.load_btf(blob)
        try:
            fd = bpfload.prog_load(BPF_PROG_TYPE_RAW_TRACEPOINT, main + cb, "gb_probe", btf_fd,
                                   [(0, main_tid), (len(main) // 8, cb_tid)])
        finally:
            os.close(btf_fd)
    except (OSError, bpfload.LoadError) as e:
        return Check("bpf_loop", False, True, f"a bpf_loop callback was refused: "
                     f"{str(e).splitlines()[0]}", "needs Linux >= 5.17 with BTF "
                     "(CONFIG_DEBUG_INFO_BTF) (or the VM in vagrant/)")
    os.close(fd)
    return Check("bpf_loop", True, True, "a raw tracepoint program with a bpf_loop callback "
                 "passed the verifier")


def check_btf() -> Check:
    from sandbox.kernel import btf

    try:
        offs = btf.exec_offsets()
    except (OSError, btf.BtfError) as e:
        return Check("kernel BTF", False, True, f"no struct offsets from "
                     f"/sys/kernel/btf/vmlinux: {e}", "needs CONFIG_DEBUG_INFO_BTF=y "
                     "(Linux >= 5.4) (or the VM in vagrant/)")
    return Check("kernel BTF", True, True, f"{len(offs)} struct offsets for the exec verifier "
                 "(task_struct.mm, mm_struct.exe_file, arg_start ...)")


def check_pid_namespace() -> Check:
    from sandbox.kernel.ebpf import in_initial_pid_namespace

    ok = in_initial_pid_namespace()
    return Check("pid namespace", ok, True, "in the initial pid namespace" if ok else
                 "not in the initial pid namespace: seccomp notifications and the exec verifier "
                 "would number threads differently",
                 "run glassbreak (the daemon) in the host's pid namespace (hostPID: true)")


def _seccomp_probe() -> int:
    """Fork a child: no_new_privs, a filter (getppid -> errno 99) with a listener. Bits:
    1 nnp, 2 filter loaded, 4 listener created, 8 filter answers."""
    if not SYS:
        return 0
    lib = _libc()
    ret_k, ld_w_abs, jeq_k = 0x06, 0x20, 0x15
    prog = struct.pack("<HBBI", ld_w_abs, 0, 0, 0) \
        + struct.pack("<HBBI", jeq_k, 0, 1, SYS["getppid"]) \
        + struct.pack("<HBBI", ret_k, 0, 0, 0x00050000 | PROBE_ERRNO) \
        + struct.pack("<HBBI", ret_k, 0, 0, 0x7FFF0000)

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = Fprog(4, ctypes.cast(buf, ctypes.c_void_p))
    pid = os.fork()
    if pid == 0:
        bits = 0
        try:
            if lib.prctl(38, 1, 0, 0, 0) == 0 and lib.prctl(39, 0, 0, 0, 0) == 1:
                bits |= 1
            fd = lib.syscall(SYS["seccomp"], 1, 1 << 3, ctypes.byref(fprog))
            if fd >= 0:
                bits |= 2 | 4
            elif lib.syscall(SYS["seccomp"], 1, 0, ctypes.byref(fprog)) == 0:
                bits |= 2
            if bits & 2 and lib.syscall(SYS["getppid"]) == -1 and \
                    ctypes.get_errno() == PROBE_ERRNO:
                bits |= 8
        finally:
            os._exit(bits)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0


def check_seccomp() -> list[Check]:
    bits = _seccomp_probe()
    fix = "needs CONFIG_SECCOMP_FILTER (Linux >= 5.0 for user notification); see vagrant/"
    return [
        Check("no_new_privs", bool(bits & 1), True,
              "PR_SET_NO_NEW_PRIVS set" if bits & 1 else "prctl(PR_SET_NO_NEW_PRIVS) failed",
              "needs Linux >= 3.5"),
        Check("seccomp filters", bool(bits & 8), True,
              "a filter loaded in a child answered errno" if bits & 8
              else "seccomp(SECCOMP_SET_MODE_FILTER) did not work", fix),
        Check("seccomp user-notify", bool(bits & 4), True,
              "SECCOMP_FILTER_FLAG_NEW_LISTENER gave a listener" if bits & 4
              else "no seccomp user-notification listener", fix),
    ]


def check_arch() -> Check:
    ok = ARCH in ("x86_64", "aarch64")
    return Check("architecture", ok, True, ARCH + (" supported" if ok else " not supported"),
                 "glassbreak supports x86_64 and aarch64; use the VM in vagrant/")


def check_libseccomp() -> Check:
    from sandbox.errors import GlassbreakError
    from sandbox.kernel.seccomp import _lib

    try:
        _lib()
    except GlassbreakError as e:
        return Check("libseccomp", False, True, e.message,
                     "apt-get install libseccomp2; pip install pyseccomp (make setup)")
    return Check("libseccomp", True, True, "pyseccomp + libseccomp loaded")


def _tracefs() -> str | None:
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(f"{d}/events/sched"):
            return d
    return None


def check_tracefs() -> Check:
    d = _tracefs()
    if d is None:
        return Check("tracefs", False, True, "tracefs is not mounted",
                     "mount -t tracefs tracefs /sys/kernel/tracing (make setup does it)")
    want = ("sched_process_exec", "sched_process_fork", "sched_process_exit")
    missing = [t for t in want if not os.path.isdir(f"{d}/events/sched/{t}")]
    if missing:
        return Check("tracefs", False, True, f"{d}: missing tracepoints {', '.join(missing)}",
                     "use a kernel with CONFIG_TRACEPOINTS (or the VM in vagrant/)")
    return Check("tracefs", True, True, f"{d} with sched_process_exec/fork/exit")


def check_headers() -> Check:
    d = f"/lib/modules/{platform.release()}/build/include"
    if os.path.isdir(d):
        return Check("kernel headers", True, True, f"{d} ({os.path.realpath(d)})")
    return Check("kernel headers", False, True, f"{d} does not exist",
                 "install linux-headers and link them there (make setup does it)")


def check_bcc() -> Check:
    t = time.perf_counter()
    try:
        import bcc  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure means bcc is unusable
        return Check("bcc", False, True, f"cannot import bcc: {type(e).__name__}: {e}",
                     "apt-get install python3-bpfcc and link it into the venv (make setup)")
    return Check("bcc", True, True, f"bcc importable ({(time.perf_counter() - t) * 1000:.0f} ms)")


def check_cgroup() -> Check:
    from sandbox.errors import GlassbreakError
    from sandbox.kernel.cgroup import PARENT, cgroup2_mount

    try:
        mount = cgroup2_mount()
    except GlassbreakError as e:
        return Check("cgroup v2", False, True, e.message, e.hint or "")
    base = mount / PARENT
    try:
        base.mkdir(exist_ok=True)
    except OSError as e:
        return Check("cgroup v2", False, True, f"cannot create {base}: {e.strerror}",
                     "run as root (or delegate a cgroup v2 subtree)")
    if not (base / "cgroup.kill").exists():
        return Check("cgroup v2", False, True, f"{mount}: no cgroup.kill",
                     "needs Linux >= 5.14 (or the VM in vagrant/)")
    return Check("cgroup v2", True, True, f"{mount} with cgroup.kill")


def check_kill_logging() -> Check:
    from sandbox.kernel.kmsg import kernel_logs_kills

    ok = kernel_logs_kills()
    return Check("seccomp kill log", ok, False,
                 "kill_process is logged (the killing syscall is reported)" if ok
                 else "the kernel does not log seccomp kills",
                 "echo kill_process >> /proc/sys/kernel/seccomp/actions_logged")


BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_PROG_ATTACH = 8
ATTACH_INET4_CONNECT, ATTACH_UNIX_CONNECT = 10, 49


def _sock_addr_prog(attach_type: int, ret: int) -> tuple[int, int]:
    """Load `return ret` as a CGROUP_SOCK_ADDR program for attach_type; (fd, errno)."""
    insns = _insn(0xB7, imm=ret) + EXIT
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, len(insns) // 8,
                       ctypes.addressof(code), ctypes.addressof(lic), 0, 0, 0, 0, 0, b"",
                       0, attach_type)
    lib = _libc()
    buf = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    fd = lib.syscall(SYS["bpf"], BPF_PROG_LOAD, buf, 128)
    return int(fd), ctypes.get_errno()


def check_socket_hooks() -> list[Check]:
    """The network layer: a cgroup/connect4 program that refuses, attached to a scratch cgroup,
    must make a connect of a process in it fail with EPERM; the unix hook type must load; the
    kernel's BTF must describe the unix address (Linux >= 6.7); SOCK_DESTROY must exist."""
    import errno
    import socket as _socket

    from sandbox.kernel.cgroup import PARENT, cgroup2_mount

    fix = "`--degraded network` (root) runs without the network layer; see vagrant/ for a VM"
    out: list[Check] = []
    fd, err = _sock_addr_prog(ATTACH_INET4_CONNECT, 0)
    if fd < 0:
        return [Check("socket hooks", False, True,
                      f"a cgroup/connect4 program did not load: {os.strerror(err)}",
                      "needs CONFIG_CGROUP_BPF (Linux >= 4.17); " + fix)]
    scratch = cgroup2_mount() / PARENT / f"doctor-{os.getpid()}"
    try:
        scratch.mkdir(exist_ok=True)
        cg = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            lib = _libc()
            attr = ctypes.create_string_buffer(
                struct.pack("<IIII", cg, fd, ATTACH_INET4_CONNECT, 0).ljust(128, b"\0"), 128)
            if lib.syscall(SYS["bpf"], BPF_PROG_ATTACH, attr, 128) != 0:
                e = ctypes.get_errno()
                return [Check("socket hooks", False, True, f"attaching cgroup/connect4 failed: "
                              f"{os.strerror(e)}", fix)]
        finally:
            os.close(cg)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                with open(scratch / "cgroup.procs", "w") as f:
                    f.write("0")
                s = _socket.socket()
                try:
                    s.connect(("127.0.0.1", 9))
                    code = 1
                except OSError as e:
                    code = 0 if e.errno == errno.EPERM else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        out.append(Check("socket hooks", ok, True,
                         "a cgroup/connect4 program attached to a cgroup refused a connect "
                         "(EPERM)" if ok else "a refusing cgroup/connect4 program did not refuse "
                         f"(child status {status})", fix))
    finally:
        os.close(fd)
        try:
            scratch.rmdir()
        except OSError:
            pass
    ufd, uerr = _sock_addr_prog(ATTACH_UNIX_CONNECT, 1)
    if ufd >= 0:
        os.close(ufd)
    from sandbox.kernel.sockhooks import btf_member_offset

    try:
        off = btf_member_offset("bpf_sock_addr_kern", "uaddrlen")
    except OSError:
        off = None
    uok = ufd >= 0 and off is not None
    out.append(Check("unix socket hooks", uok, True,
                     "cgroup/connect_unix loads; BTF has bpf_sock_addr_kern.uaddrlen" if uok else
                     ("cgroup/connect_unix did not load: " + os.strerror(uerr) if ufd < 0 else
                      "the kernel's BTF lacks bpf_sock_addr_kern.uaddrlen"),
                     "needs Linux >= 6.7 with BTF (/sys/kernel/btf/vmlinux); " + fix))
    out.append(_check_sock_destroy())
    return out


def _check_sock_destroy() -> Check:
    """SOCK_DESTROY of a socket that does not exist: ENOENT when the kernel has it
    (CONFIG_INET_DIAG_DESTROY), EOPNOTSUPP when not."""
    import socket as _socket

    try:
        with _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, 4) as s:
            req = struct.pack("=BBBBI", _socket.AF_INET, _socket.IPPROTO_TCP, 0, 0,
                              0xFFFFFFFF) + bytes(48)
            s.send(struct.pack("=IHHII", 16 + len(req), 21, 1 | 4, 1, 0) + req)
            data = s.recv(4096)
        err = -struct.unpack_from("=i", data, 16)[0]
    except OSError as e:
        err = e.errno or 0
    ok = err in (0, 2)  # ENOENT: supported, nothing to destroy
    return Check("sock_destroy", ok, True,
                 "SOCK_DESTROY is available (revocation ends open connections)" if ok else
                 f"SOCK_DESTROY failed: {os.strerror(err)}",
                 "needs CONFIG_INET_DIAG_DESTROY (and CONFIG_INET_UDP_DIAG)")


def check_landlock() -> Check:
    from sandbox.kernel.landlock import LandlockUnavailable, abi_version, errata

    fix = ("boot a kernel >= 6.12 with Landlock in its LSM list (CONFIG_SECURITY_LANDLOCK, "
           "lsm=...,landlock), or use the VM in vagrant/; `glassbreak run --degraded landlock` "
           "runs without it (root only, recorded)")
    try:
        abi = abi_version()
    except LandlockUnavailable as e:
        return Check("landlock", False, True, str(e), fix)
    ok = abi >= 6
    return Check("landlock", ok, True, f"Landlock ABI {abi} (errata {errata():#x})"
                 + ("" if ok else ": runs need 6 (signal and abstract-socket scopes)"), fix)


def check_landlock_audit() -> Check:
    """Can denials be reported? (kernel audit records over the multicast group, ABI 7)"""
    from sandbox.kernel import landlock_audit as A
    from sandbox.kernel.landlock import LandlockUnavailable, abi_version

    fix = "run glassbreak as root in the host's network namespace (docs/filesystem.md)"
    try:
        if abi_version() < 7:
            return Check("landlock denials", False, False, "Landlock ABI < 7 has no audit "
                         "records: denials are enforced, not reported", fix)
        st = A.status()
    except (LandlockUnavailable, OSError, A.AuditUnavailable) as e:
        return Check("landlock denials", False, False, f"kernel audit unreachable: {e}", fix)
    who = f"audit daemon pid {st['pid']}" if st["pid"] else "no audit daemon"
    state = {0: "off (glassbreak switches it on at the first run)", 1: "on", 2: "on, locked"}
    return Check("landlock denials", st["enabled"] != 0 or not st["pid"], False,
                 f"kernel audit {state.get(st['enabled'], '?')}, {who}, backlog limit "
                 f"{st['backlog_limit']}, lost {st['lost']}", fix)


def check_root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, True, "running as root" if ok else f"uid {os.geteuid()}",
                 "run glassbreak as root (or through the daemon, `glassbreak serve`)")


def check_redis() -> Check:
    exe = shutil.which("redis-server")
    return Check("redis-server", exe is not None, False,
                 exe or "not installed (only needed for the multi-host Redis store)",
                 "apt-get install redis-server")


def check_config() -> Check:
    from sandbox.config import load_config
    from sandbox.errors import GlassbreakError

    try:
        cfg = load_config()
    except GlassbreakError as e:
        return Check("config", False, True, e.message, e.hint or "")
    agents = "no agents: bindings (each user is its own agent)" if cfg.agents is None else \
        f"{len(cfg.agents)} agent binding(s)"
    return Check("config", True, True, f"{cfg.path}: {agents}, "
                 f"{len(cfg.all_approvers())} approver(s)")


def check_store_auth() -> Check:
    """GLASSBREAK_STORE=redis://... without a password, or in clear text to another host."""
    from urllib.parse import urlsplit

    url = os.environ.get("GLASSBREAK_STORE", "")
    if not url.startswith(("redis://", "rediss://")):
        return Check("store auth", True, False,
                     "local store (SQLite in the state dir, or a unix socket)" if not url
                     else f"{url.split(':', 1)[0]} store")
    u = urlsplit(url)
    safe = f"{u.scheme}://{u.hostname}:{u.port or 6379}"
    has_password = bool(u.password)
    if not has_password:
        try:
            from sandbox.config import load_config

            has_password = load_config().redis.has_password()
        except Exception:  # noqa: BLE001, S110 - check_config reports a broken config
            pass
    fix = ("give Redis a password or an ACL user (requirepass / ACL SETUSER) and use "
           "redis://USER:PASSWORD@host or `redis: {username, passwordFile}` in the glassbreak "
           "config; rediss:// for TLS (docs/identity.md)")
    if not has_password:
        return Check("store auth", False, False,
                     f"{safe} has no password: anyone who reaches it can delete or rewrite "
                     "escalations and grants (forged grants are ignored: they are signed)",
                     fix, warn=True)
    if u.scheme == "redis" and u.hostname not in ("127.0.0.1", "localhost", "::1"):
        return Check("store auth", False, False, f"{safe}: password sent in clear text to "
                     "another host", "use rediss:// (TLS)", warn=True)
    return Check("store auth", True, False, f"{safe} with a password"
                 + (" over TLS" if u.scheme == "rediss" else ""))


def run_checks() -> list[Check]:
    probes: list[Callable[[], Check | list[Check]]] = [
        check_arch, check_root, check_libseccomp, check_seccomp, check_bpf, check_ringbuf,
        check_send_signal, check_raw_tracepoint, check_bpf_loop, check_btf, check_pid_namespace,
        check_tracefs, check_headers, check_bcc, check_cgroup, check_landlock,
        check_landlock_audit, check_socket_hooks, check_kill_logging, check_redis, check_config,
        check_store_auth,
    ]
    out: list[Check] = []
    for probe in probes:
        try:
            res = probe()
        except Exception as e:  # noqa: BLE001 - a crashing probe is a missing feature
            name = probe.__name__.removeprefix("check_")
            res = Check(name, False, True, f"probe failed: {type(e).__name__}: {e}",
                        "report this with the output of `uname -a`")
        out.extend(res if isinstance(res, list) else [res])
    return out


def _command() -> Any:
    import click

    @click.command("doctor")
    @click.option("--output", type=click.Choice(["text", "json"]), default="text",
                  show_default=True)
    def doctor(output: str) -> None:
        """Check the kernel features glassbreak needs (exit 1 when a required one is missing)."""
        t = time.perf_counter()
        checks = run_checks()
        ms = (time.perf_counter() - t) * 1000
        bad = [c for c in checks if c.required and not c.ok]
        if output == "json":
            click.echo(json.dumps({"ok": not bad, "duration_ms": round(ms, 1),
                                   "checks": [asdict(c) for c in checks]}))
        else:
            for c in checks:
                click.echo(c.line())
            verdict = "all required features present" if not bad else \
                f"{len(bad)} required feature(s) missing: {', '.join(c.name for c in bad)}"
            click.echo(f"-- {verdict} ({ms:.0f} ms)")
        raise SystemExit(1 if bad else 0)

    return doctor


doctor_command = _command()
