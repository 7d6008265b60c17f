"""What the kernel will run for an execve/execveat, resolved as the calling task sees it.

The exec gate judges an exec before the kernel performs it and writes, for the in-kernel
verifier, the identity (device + inode) of the image that will run and the argv the kernel will
lay out. Both must be predicted exactly, in the TASK's view: its root (chroot, mount namespace),
its cwd, its /proc/self. A path string judged in the supervisor's own view names another file
as soon as the task has chrooted (issue 10 #1). A wrong prediction is never an escape (the
kernel kills an exec that differs), only a false kill.

Resolution (TaskView.open) walks the path one component at a time from /proc/TID/root or
/proc/TID/cwd (or the execveat dirfd), with openat(O_PATH | O_NOFOLLOW): ".." stops at the
task's root; symlinks are followed by their text (absolute ones from the task's root);
`self` / `thread-self` at a procfs root mean the task, not us; procfs magic links
(/proc/PID/fd/N, exe, cwd, root) are followed by the kernel (they name the task's objects).
Nothing is ever opened for reading unless it is a regular file (no FIFO or device is touched).

The plan mirrors fs/exec.c and fs/binfmt_script.c (Linux 5.1+ shebang parsing):

  bprm->filename  = path                       if dirfd == AT_FDCWD or path starts with "/"
                  = "/dev/fd/N"                if path == "" (AT_EMPTY_PATH)
                  = "/dev/fd/N/" + path        otherwise (N = dirfd)
  argv == []      -> [""]                      (kernel >= 5.18)
  interp          = bprm->filename
  while the file starts with "#!" (at most 5 levels; the 6th is -ELOOP):
      (i_name, i_arg) = the first line's interpreter and its one optional argument
      argv = [i_name] + ([i_arg] if i_arg) + [interp] + argv[1:]     (argv[0] is DROPPED)
      interp = i_name; file = i_name resolved from the task's cwd and root
      a "/dev/fd/N..." script whose fd is close-on-exec fails with ENOENT
  identity = (st_dev, st_ino) of the final non-script file; envp is never rewritten.

binfmt_misc handlers (qemu, wine, java) are not modelled: such execs are killed on mismatch.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from collections import deque
from dataclasses import dataclass, field

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
BINPRM_BUF_SIZE = 256
MAX_SCRIPT_DEPTH = 5
MAX_SYMLINKS = 40
PROC_SUPER_MAGIC = 0x9FA0
O_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)
_FD_LINK = re.compile(rb"/(?:fd|map_files)/[^/]+$")


class PlanError(Exception):
    """The exec will fail in the kernel (no sched_process_exec follows), or cannot be planned:
    answer with this errno instead of CONTINUE."""

    def __init__(self, err: int, msg: str) -> None:
        super().__init__(f"{msg}: {os.strerror(err)}")
        self.errno = err


@dataclass
class Opened:
    fd: int  # O_PATH, owned by whoever holds this
    st: os.stat_result
    text: bytes  # the path as walked (the task's view; magic links left as named)
    via_fd: bytes | None = None  # went through a /proc/.../fd/N-style magic link (its name)


@dataclass
class ExecPlan:
    st_dev: int  # identity of the image that will run (mm->exe_file)
    st_ino: int
    argv: list[bytes]  # what mm->arg_start..arg_end will hold
    envp: list[bytes]
    filename: bytes  # bprm->filename
    file: Opened  # the file the path names (the script itself for a `#!` file)
    chain: list[tuple[bytes, int, int]] = field(default_factory=list)  # (name, dev, ino)

    @property
    def script(self) -> bool:
        return len(self.chain) > 1

    def close(self) -> None:
        if self.file.fd >= 0:
            os.close(self.file.fd)
            self.file.fd = -1


def _is_procfs(fd: int) -> bool:
    buf = ctypes.create_string_buffer(256)
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return int.from_bytes(buf.raw[:8], "little") == PROC_SUPER_MAGIC


class TaskView:
    """Open paths as thread `tid` would: its root, its cwd, its fds, its /proc/self."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.tgid = _tgid(tid)
        self.root = os.open(f"/proc/{tid}/root", O_PATH_FLAGS | os.O_DIRECTORY)
        self._root_st = os.fstat(self.root)

    def close(self) -> None:
        if self.root >= 0:
            os.close(self.root)
            self.root = -1

    def __enter__(self) -> TaskView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, dirfd: int) -> int:
        """An O_PATH fd of the walk's start for a relative path: the cwd, or the dirfd."""
        what = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
        try:
            return os.open(f"/proc/{self.tid}/{what}", O_PATH_FLAGS)
        except OSError as e:
            raise PlanError(errno.EBADF if dirfd != AT_FDCWD else e.errno or errno.ENOENT,
                            f"cannot open the task's {what}") from e

    def open(self, dirfd: int, path: bytes, *, follow: bool = True) -> Opened:
        """Resolve `path` (relative to `dirfd`, AT_FDCWD for the cwd) as the task would."""
        if not path:
            raise PlanError(errno.ENOENT, "empty path")
        absolute = path.startswith(b"/")
        cur = os.dup(self.root) if absolute else self.start(dirfd)
        text = b"" if absolute else (b"." if dirfd == AT_FDCWD else b"/dev/fd/%d" % dirfd)
        return self._walk(cur, text, path, follow)

    def _walk(self, cur: int, text: bytes, path: bytes, follow: bool) -> Opened:
        comps = deque(c for c in path.split(b"/") if c)
        links = 0
        via_fd: bytes | None = None
        try:
            if not comps:  # "/" itself
                return Opened(cur, os.fstat(cur), b"/")
            while comps:
                c = comps.popleft()
                last = not comps
                if c == b".":
                    continue
                if c == b"..":
                    st = os.fstat(cur)
                    if (st.st_dev, st.st_ino) != (self._root_st.st_dev, self._root_st.st_ino):
                        nfd = os.open(b"..", O_PATH_FLAGS | os.O_DIRECTORY, dir_fd=cur)
                        os.close(cur)
                        cur = nfd
                        text = text.rsplit(b"/", 1)[0] if b"/" in text else b"/"
                    continue
                if c in (b"self", b"thread-self") and self._proc_root(cur):
                    sub = [b"%d" % self.tgid] if c == b"self" else [
                        b"%d" % self.tgid, b"task", b"%d" % self.tid]
                    comps.extendleft(reversed(sub[1:]))
                    c = sub[0]
                    last = not comps
                try:
                    nfd = os.open(c, O_PATH_FLAGS | os.O_NOFOLLOW, dir_fd=cur)
                except OSError as e:
                    raise PlanError(e.errno or errno.ENOENT,
                                    f"cannot resolve {_show(text + b'/' + c)}") from e
                st = os.fstat(nfd)
                ctext = text.rstrip(b"/") + b"/" + c
                if stat.S_ISLNK(st.st_mode) and (follow or not last):
                    if _is_procfs(nfd) and not self._proc_root(cur):
                        os.close(nfd)  # a magic link: the kernel follows it to the object
                        try:
                            nfd = os.open(c, O_PATH_FLAGS, dir_fd=cur)
                        except OSError as e:
                            raise PlanError(e.errno or errno.ENOENT,
                                            f"cannot follow {_show(ctext)}") from e
                        if _FD_LINK.search(ctext):
                            via_fd = ctext
                        st = os.fstat(nfd)
                    else:
                        links += 1
                        if links > MAX_SYMLINKS:
                            os.close(nfd)
                            raise PlanError(errno.ELOOP, f"too many symlinks in {_show(path)}")
                        target = os.readlink(c, dir_fd=cur)
                        os.close(nfd)
                        if target.startswith(b"/"):
                            os.close(cur)
                            cur = os.dup(self.root)
                            text = b""
                        comps.extendleft(reversed([x for x in target.split(b"/") if x]))
                        continue
                elif stat.S_ISLNK(st.st_mode):  # AT_SYMLINK_NOFOLLOW on the last component
                    os.close(nfd)
                    raise PlanError(errno.ELOOP, f"{_show(ctext)} is a symlink")
                if not last and not stat.S_ISDIR(st.st_mode):
                    os.close(nfd)
                    raise PlanError(errno.ENOTDIR, f"{_show(ctext)} is not a directory")
                os.close(cur)
                cur, text = nfd, ctext
            return Opened(cur, os.fstat(cur), text or b"/", via_fd)
        except BaseException:
            os.close(cur)
            raise

    def _proc_root(self, fd: int) -> bool:
        return os.fstat(fd).st_ino == 1 and _is_procfs(fd)

    def fd_cloexec(self, fd: int) -> bool:
        try:
            with open(f"/proc/{self.tid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("flags:"):
                        return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
        except OSError:
            pass
        return True


def _tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


def _show(b: bytes) -> str:
    return repr(b.decode("utf-8", "surrogateescape"))


def read_head(o: Opened) -> bytes:
    """The first BINPRM_BUF_SIZE bytes of a regular file (never opens anything else)."""
    if not stat.S_ISREG(o.st.st_mode):
        raise PlanError(errno.EACCES, f"{_show(o.text)} is not a regular file")
    fd = os.open(f"/proc/self/fd/{o.fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
                 | os.O_NOCTTY)
    try:
        return os.pread(fd, BINPRM_BUF_SIZE, 0)
    finally:
        os.close(fd)


def bprm_filename(dirfd: int, path: bytes) -> bytes:
    if dirfd == AT_FDCWD or path.startswith(b"/"):
        return path
    if path == b"":
        return b"/dev/fd/%d" % dirfd
    return b"/dev/fd/%d/%s" % (dirfd, path)


def _spacetab(c: int) -> bool:
    return c in (0x20, 0x09)


def _next_non_spacetab(buf: bytes, first: int, last: int) -> int | None:
    for i in range(first, last + 1):  # inclusive, as in fs/binfmt_script.c
        if not _spacetab(buf[i]):
            return i
    return None


def _next_terminator(buf: bytes, first: int, last: int) -> int | None:
    for i in range(first, last + 1):
        if _spacetab(buf[i]) or buf[i] == 0:
            return i
    return None


def parse_shebang(head: bytes) -> tuple[bytes, bytes | None] | None:
    """(i_name, i_arg) for a `#!` file as fs/binfmt_script.c load_script() parses its first
    BINPRM_BUF_SIZE bytes; None when it is not a script; PlanError(ENOEXEC) when the kernel
    refuses it. A line-by-line transliteration, on purpose."""
    if not head.startswith(b"#!"):
        return None
    buf = head[:BINPRM_BUF_SIZE].ljust(BINPRM_BUF_SIZE, b"\0")  # the kernel pads short files
    buf_end = BINPRM_BUF_SIZE - 1
    z = buf.find(b"\0")  # strnchr(buf, 256, '\n') stops at the first NUL
    nl = (buf if z < 0 else buf[:z]).find(b"\n")
    if nl >= 0:
        i_end = nl
    else:
        found = _next_non_spacetab(buf, 2, buf_end)
        if found is None:
            raise PlanError(errno.ENOEXEC, "shebang line of only spaces/tabs")
        if _next_terminator(buf, found, buf_end) is None:
            raise PlanError(errno.ENOEXEC, "shebang interpreter path truncated")
        i_end = buf_end
    while _spacetab(buf[i_end - 1]):
        i_end -= 1
    i_name = _next_non_spacetab(buf, 2, i_end)
    if i_name is None or i_name == i_end:
        raise PlanError(errno.ENOEXEC, "no interpreter name in the shebang line")
    i_arg = None
    i_sep = _next_terminator(buf, i_name, i_end)
    if i_sep is not None and buf[i_sep] != 0:
        i_arg = _next_non_spacetab(buf, i_sep, i_end)
    line = bytearray(buf)
    line[i_end] = 0
    arg = None
    if i_arg is not None and i_sep is not None:
        line[i_sep] = 0
        arg = bytes(line[i_arg:]).split(b"\0", 1)[0]
    name = bytes(line[i_name:]).split(b"\0", 1)[0]
    return name, arg


def open_exec(view: TaskView, dirfd: int, path: bytes, flags: int = 0) -> Opened:
    """The file an execve/execveat names, as the kernel opens it first (before it reads argv:
    a missing path is ENOENT whatever the argv)."""
    if path == b"":
        if dirfd == AT_FDCWD or not flags & AT_EMPTY_PATH:
            raise PlanError(errno.ENOENT, "empty path without AT_EMPTY_PATH")
        fd = view.start(dirfd)
        return Opened(fd, os.fstat(fd), b"/dev/fd/%d" % dirfd, b"/dev/fd/%d" % dirfd)
    return view.open(dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW)


def plan_exec(view: TaskView, dirfd: int, path: bytes, argv: list[bytes], envp: list[bytes],
              flags: int = 0, first: Opened | None = None) -> ExecPlan:
    """Plan an execve (dirfd=AT_FDCWD) or execveat as the kernel will run it, in `view`.
    `first`: the file open_exec() opened already (the plan owns it from here on)."""
    filename = bprm_filename(dirfd, path)
    argv = list(argv) or [b""]
    if first is None:
        first = open_exec(view, dirfd, path, flags)
    cur = first
    chain: list[tuple[bytes, int, int]] = []
    interp = filename
    try:
        for depth in range(MAX_SCRIPT_DEPTH + 2):
            st = cur.st
            if not stat.S_ISREG(st.st_mode):
                raise PlanError(errno.EACCES, f"{_show(interp)} is not a regular file")
            chain.append((interp, st.st_dev, st.st_ino))
            sb = parse_shebang(read_head(cur))
            if sb is None:
                return ExecPlan(st.st_dev, st.st_ino, argv, list(envp), filename, first, chain)
            if depth >= MAX_SCRIPT_DEPTH:
                raise PlanError(errno.ELOOP, "too many levels of #! interpreters")
            if depth == 0 and dirfd != AT_FDCWD and not path.startswith(b"/") \
                    and view.fd_cloexec(dirfd):
                raise PlanError(errno.ENOENT, "a script passed by a close-on-exec fd")
            i_name, i_arg = sb
            argv = [i_name] + ([i_arg] if i_arg is not None else []) + [interp] + argv[1:]
            interp = i_name
            nxt = view.open(AT_FDCWD, i_name)
            if cur is not first:
                os.close(cur.fd)
            cur = nxt
        raise PlanError(errno.ELOOP, "too many levels of #! interpreters")
    except BaseException:
        os.close(first.fd)
        first.fd = -1
        raise
    finally:
        if cur is not first and cur.fd >= 0:
            os.close(cur.fd)
            cur.fd = -1


def name_in_our_view(view: TaskView, o: Opened, guess: str | None) -> str | None:
    """A path that names the same file (device, inode) in the supervisor's own view: `guess`
    (the exec path made absolute with the task's cwd) when it does, else the kernel's name for
    the open file (/proc/self/fd/N); None when neither does (another mount namespace...)."""
    want = (o.st.st_dev, o.st.st_ino)
    for cand in (guess, _fd_path(o.fd)):
        if not cand or not cand.startswith("/") or cand.endswith(" (deleted)"):
            continue
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == want:
            return cand
    return None


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def fd_target(fd: int) -> str:
    """What an open file is (its path, "/memfd:NAME (deleted)", ...), for messages."""
    return _fd_path(fd) or "?"
