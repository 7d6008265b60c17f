"""What the kernel wrote for a process that has just exec'd: /proc/PID/exe, cmdline, environ,
cwd. Used only when the exec gate is switched off (--degraded exec-gate): the in-kernel
verification then has no expectations to compare with, reports every exec with its identity,
and the supervisor judges the running process AFTER THE FACT (and kills it on a block). That is
weaker than the gate: the process has already started, and it may have rewritten its own argv
before /proc is read. Documented as such in the README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class TraceView:
    """A process as the kernel wrote it at exec: the image that runs and its argv."""

    pid: int
    filename: str  # the exec'd name (kernel copy)
    binary: str | None = None  # what to judge: /proc/PID/exe, or the script for `#!` files
    argv: list[str] = field(default_factory=list)
    envp: list[str] = field(default_factory=list)
    cwd: str | None = None
    env_path: str | None = None
    exe: str | None = None
    script: bool = False
    fileless: str | None = None
    error: str | None = None
    gone: bool = False  # the process had exited: judged from the kernel's copy of its argv


def _read(path: str, limit: int = 1 << 20) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = b""
        while len(out) < limit:
            chunk = os.read(fd, min(65536, limit - len(out)))
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(fd)


def _split0(data: bytes) -> list[str]:
    if data.endswith(b"\0"):
        data = data[:-1]
    return [_dec(x) for x in data.split(b"\0")] if data else []


def read_trace_view(pid: int, filename: str, kernel_argv: list[str] | None = None) -> TraceView:
    """Read /proc/PID/exe, cmdline, environ, cwd of a process that has just exec'd. For a script
    (`#!` file whose interpreter is the running image) the script path and its argv are judged:
    the interpreter's cmdline is [interp, (arg), script, args...]. When the process is already
    gone, `kernel_argv` (the first bytes of the argv the kernel copied, from the exec's report)
    and the exec'd name stand in (v.gone)."""
    v = TraceView(pid=pid, filename=filename)
    try:
        v.exe = os.readlink(f"/proc/{pid}/exe")
        v.cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = _split0(_read(f"/proc/{pid}/cmdline"))
        v.envp = _split0(_read(f"/proc/{pid}/environ"))
        if not cmdline and kernel_argv:
            raise OSError(3, "the process has exited")
    except OSError as e:
        if not kernel_argv or not filename.startswith("/"):
            v.error = f"cannot read /proc/{pid} of the exec: {e.strerror}"
            return v
        v.gone, v.cwd, v.envp, cmdline = True, None, [], list(kernel_argv)
        real = os.path.realpath(filename)
        v.exe = _interpreter_of(real) or real
    v.env_path = next((e[5:] for e in v.envp if e.startswith("PATH=")), None)
    v.binary, v.argv = v.exe, cmdline
    if v.exe.startswith("/memfd:") or v.exe.endswith(" (deleted)"):
        v.fileless = f"the running image is an anonymous or unlinked file ({v.exe})"
        return v
    if filename.startswith(("/dev/fd/", "/proc/")):
        v.fileless = f"exec through a file descriptor ({filename})"
        return v
    path = filename if filename.startswith("/") else os.path.join(v.cwd or "/", filename)
    real = os.path.realpath(path)
    if real == v.exe:
        v.binary = os.path.normpath(path)  # the same image, under the name it was run by
    elif _interpreter_of(real) == v.exe:
        v.script = True
        v.binary = os.path.normpath(path)
        idx = next((i for i in range(1, min(len(cmdline), 4)) if cmdline[i] == filename), None)
        v.argv = [filename] + (cmdline[idx + 1:] if idx is not None else [])
    return v


def _interpreter_of(path: str) -> str | None:
    """The realpath of a `#!` file's interpreter, or None when `path` is not a script."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    parts = head[2:].split(b"\n", 1)[0].strip().split(None, 1)
    return os.path.realpath(_dec(parts[0])) if parts else None




def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")
