"""Program resolution and binary identity (read-only file-system look-ups, cached).
Why this module is long: program resolution and the identity rule are one argument (resolution,
trusted directories, multi-call binaries, the dynamic loader), each part a few short functions over
the same stat-keyed caches.

Resolution is execvp's: a name containing '/' is a path (relative to the cwd); any other name is
searched in PATH, an empty PATH entry meaning the cwd; the first regular file with an x bit wins.

How glassbreak knows which safeBins rule applies to a binary (the identity rule):

1. **Path.** A safeBins key that is an absolute path rules the file at that path, reached by any
   path or symlink (compared after realpath).
2. **Name in a trusted directory, judged by the target.** A key that is a name (`kubectl`) rules
   a binary whose REAL path (every symlink resolved) is a file named `kubectl` in one of the
   profile's `exec.trustedDirs` (directories compared after realpath, so /bin and /usr/bin are
   the same directory on merged-/usr systems). A symlink's own name counts too, but only when the
   symlink and its target both lie in trusted directories (`/usr/bin/awk ->
   /etc/alternatives/awk -> /usr/bin/mawk` is awk). A symlink in a trusted directory whose target
   lies elsewhere (`/usr/bin/kubectl -> /usr/lib/google-cloud-sdk/bin/kubectl`) is judged as that
   target: whoever can write the target's tree could swap the binary, so the rule restricts it
   but does not allow it (4.) unless the target's directory is itself trusted.
3. **Content.** The sha256 of every ruled binary whose real path lies in a trusted directory (and
   of every absolute-path key) is computed and cached by (st_dev, st_ino, st_mtime_ns, st_size).
   A binary anywhere, under any name, whose content equals one of them is that ruled binary: a
   copy, hard link, rename or symlink of kubectl is still kubectl. Only files whose size equals a
   ruled binary's are hashed, so unrelated binaries cost one stat().
4. **Name outside the trusted directories.** A file named like a ruled binary but found elsewhere
   (`/tmp/kubectl`) with different content still gets the rule's restrictions, but passing the rule
   does not allow it: it must also be allowed by `exec.allow` like any unknown program.

Every rule that applies is checked and the strictest decision wins.

Multi-call binaries (busybox, toybox; recognised by name or by content): the applet is
basename(argv[0]), or argv[1] when argv[0] names the multi-call binary itself; the applet is
judged as the program it names (`busybox rm -rf x` is judged as `rm -rf x`).

The dynamic loader run directly (`ld-linux*.so*` / `ld-*.so*` in a library directory, recognised
by realpath or by content): argv[1] is judged as the real program with its arguments, and any
loader option (`--library-path`, `--preload`, `--audit`, `--argv0`, ...) blocks.

The sets of ruled hashes, loader and multi-call binaries are re-validated at most once per
CACHE_TTL seconds (a stat per file); a file's hash is recomputed whenever its stat key changes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal, TypeVar

from sandbox.errors import CommandNotFound

CACHE_TTL = 1.0
DEFAULT_PATH = "/bin:/usr/bin"  # glibc's execvp default when PATH is unset
MULTICALL_NAMES = ("busybox", "toybox")
LOADER_GLOBS = ("ld-linux*.so*", "ld-*.so*")
LIB_DIR_GLOBS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32",
                 "/lib/*-linux-gnu*", "/usr/lib/*-linux-gnu*", "/usr/local/lib")

T = TypeVar("T")


@dataclass(frozen=True)
class ResolvedProgram:
    path_as_found: str  # absolute, as execvp would reach it (may be a symlink)
    realpath: str
    # stat of the file when it was resolved (a cache key for its hash; None: not a file)
    stat_key: tuple[int, int, int, int] | None = field(default=None, compare=False)


How = Literal["path", "name", "hash", "untrusted-name"]


@dataclass(frozen=True)
class Identity:
    key: str  # the safeBins key
    how: How
    grants_allow: bool  # passing this rule is enough to run the binary

    def describe(self) -> str:
        return {
            "path": f"is the binary named by the safeBins key {self.key}",
            "name": f"is `{self.key}` in a trusted directory",
            "hash": f"has the same content (sha256) as the ruled binary `{self.key}`",
            "untrusted-name": f"is named `{self.key}` but lies outside the trusted directories "
                              "(the rule restricts it but does not allow it)",
        }[self.how]


# -- small caches ------------------------------------------------------------------------------
_TTL: dict[object, tuple[float, object]] = {}


def ttl_cached(key: object, fn: Callable[[], T]) -> T:
    now = time.monotonic()
    hit = _TTL.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]  # type: ignore[return-value]
    value = fn()
    if len(_TTL) > 4096:
        _TTL.clear()
    _TTL[key] = (now + CACHE_TTL, value)
    return value


def clear_caches() -> None:
    """Forget every cached look-up (tests; after installing binaries)."""
    _TTL.clear()
    _HASHES.clear()


def realpath_cached(path: str) -> str:
    return ttl_cached(("realpath", path), lambda: os.path.realpath(path))


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


_HASHES: dict[tuple[int, int, int, int], str] = {}


def sha256_file(path: str) -> str:
    """sha256 hex digest of a file, cached by (st_dev, st_ino, st_mtime_ns, st_size).

    Raises OSError if the file cannot be read. A file that changes while it is read is hashed
    but not cached."""
    key = _stat_key(os.stat(path))
    hit = _HASHES.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        before = _stat_key(os.fstat(f.fileno()))
        while chunk := f.read(1 << 20):
            h.update(chunk)
        after = _stat_key(os.fstat(f.fileno()))
    digest = h.hexdigest()
    if before == after == key:
        if len(_HASHES) > 65536:
            _HASHES.clear()
        _HASHES[key] = digest
    return digest


def _regular_size(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# -- resolution --------------------------------------------------------------------------------
def _exec_file_key(path: str) -> tuple[int, int, int, int] | None:
    """The stat key of `path` if it is a regular file with an x bit, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
        return _stat_key(st)
    return None


def _file_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _stat_key(st) if stat.S_ISREG(st.st_mode) else None


def fast_realpath(path: str) -> str:
    """realpath in three syscalls: the kernel's own path of an O_PATH descriptor (falls back to
    os.path.realpath when the file is missing or /proc is not mounted)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    finally:
        os.close(fd)
    return real if real.startswith("/") and not real.endswith(" (deleted)") else \
        os.path.realpath(path)


def program_at(path: str) -> ResolvedProgram:
    """An absolute path (e.g. what the kernel is about to exec) as a ResolvedProgram."""
    return ResolvedProgram(os.path.normpath(path), fast_realpath(path), _file_key(path))


def resolve_program(name: str, env_path: str | None, cwd: str) -> ResolvedProgram:
    """Find the program execvp would run for `name`, or raise CommandNotFound."""
    if not name:
        raise CommandNotFound("empty program name", hint="give the command to run after `--`")
    if "/" in name:
        full = os.path.join(cwd, name)
        key = _exec_file_key(full)
        if key is not None:
            return ResolvedProgram(os.path.normpath(full), fast_realpath(full), key)
        why = "does not exist" if not os.path.lexists(full) else \
            "is not a regular file with an execute bit"
        raise CommandNotFound(f"{name}: {full} {why}",
                              hint="check the path (relative paths are taken from the cwd)")
    path = DEFAULT_PATH if env_path is None else env_path
    for entry in path.split(":"):
        if not entry:
            entry = cwd
        elif entry[0] != "/":
            entry = f"{cwd}/{entry}"
        full = f"{entry}/{name}" if entry[-1] != "/" else entry + name
        key = _exec_file_key(full)
        if key is not None:
            return ResolvedProgram(os.path.normpath(full), fast_realpath(full), key)
    raise CommandNotFound(
        f"{name}: command not found in PATH={path}",
        hint="check the spelling, install the program, or give its absolute path",
    )


# -- trusted directories and identity ----------------------------------------------------------
def trusted_set(dirs: Sequence[str]) -> frozenset[str]:
    """The trusted directories after realpath (plus as written)."""
    def build() -> frozenset[str]:
        out = set()
        for d in dirs:
            out.add(os.path.normpath(d))
            out.add(os.path.realpath(d))
        return frozenset(out)
    return ttl_cached(("trusted", tuple(dirs)), build)


def unique_trusted_dirs(dirs: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for d in dirs:
        r = realpath_cached(d)
        if r not in seen:
            seen.append(r)
    return seen


def in_trusted_dir(path: str, trusted: frozenset[str]) -> bool:
    return (path.rpartition("/")[0] or "/") in trusted


def _trusted_files(names: Iterable[str], dirs: Sequence[str]) -> list[tuple[str, str]]:
    """(name, path) of each file `name` in a trusted dir whose real path is in a trusted dir
    too: a symlink from a trusted dir to elsewhere is not trusted content."""
    trusted = trusted_set(dirs)
    names = tuple(names)
    out: list[tuple[str, str]] = []
    for d in unique_trusted_dirs(dirs):
        for n in names:
            path = os.path.join(d, n)
            if os.path.islink(path) and not in_trusted_dir(os.path.realpath(path), trusted):
                continue
            out.append((n, path))
    return out


def _hash_table(files: Iterable[tuple[str, str]]) -> dict[int, dict[str, list[str]]]:
    """(label, path) -> {size: {sha256: [labels]}} for the files that exist."""
    table: dict[int, dict[str, list[str]]] = {}
    for label, path in files:
        size = _regular_size(path)
        if size is None:
            continue
        try:
            digest = sha256_file(path)
        except OSError:
            continue
        labels = table.setdefault(size, {}).setdefault(digest, [])
        if label not in labels:
            labels.append(label)
    return table


def _content_labels(table: dict[int, dict[str, list[str]]], prog: ResolvedProgram) -> list[str]:
    """Labels of the files in `table` whose content `prog` has (size first, then sha256)."""
    if not table:
        return []
    key = prog.stat_key if prog.stat_key is not None else _file_key(prog.realpath)
    if key is None or key[3] not in table:
        return []
    digest = _HASHES.get(key)
    if digest is None:
        try:
            digest = sha256_file(prog.realpath)
        except OSError:
            return []
    return table[key[3]].get(digest, [])


def ruled_hashes(keys: Sequence[str], dirs: Sequence[str]) -> dict[int, dict[str, list[str]]]:
    """Content table of the ruled binaries: the key's file in each trusted dir, or the path."""
    def build() -> dict[int, dict[str, list[str]]]:
        files = [(key, key) for key in keys if key.startswith("/")]
        files += _trusted_files((k for k in keys if "/" not in k), dirs)
        return _hash_table(files)
    return ttl_cached(("ruled", tuple(keys), tuple(dirs)), build)


def identify(keys: Sequence[str], dirs: Sequence[str], prog: ResolvedProgram) -> list[Identity]:
    """Every safeBins key whose rule applies to `prog` (see the module docstring)."""
    out: list[Identity] = []
    trusted = trusted_set(dirs)
    found_dir, _, found_name = prog.path_as_found.rpartition("/")
    real_dir, _, real_name = prog.realpath.rpartition("/")
    real_trusted = (real_dir or "/") in trusted
    # a symlink's own name counts only when its target is trusted too (judged by the target)
    found_trusted = real_trusted and (found_dir or "/") in trusted
    for key in keys:
        if key[0] == "/":
            if prog.path_as_found == key or prog.realpath == realpath_cached(key):
                out.append(Identity(key, "path", True))
        elif key == found_name or key == real_name:
            by_name = (found_trusted and found_name == key) or (real_trusted and real_name == key)
            if by_name:
                out.append(Identity(key, "name", True))
            else:
                out.append(Identity(key, "untrusted-name", False))
    have = {i.key for i in out if i.grants_allow}
    for key in _content_labels(ruled_hashes(keys, dirs), prog):
        if key not in have:
            out = [i for i in out if i.key != key]
            out.append(Identity(key, "hash", True))
    return out


# -- multi-call binaries -----------------------------------------------------------------------
def _multicall_table(dirs: Sequence[str]) -> dict[int, dict[str, list[str]]]:
    def build() -> dict[int, dict[str, list[str]]]:
        return _hash_table(_trusted_files(MULTICALL_NAMES, dirs))
    return ttl_cached(("multicall", tuple(dirs)), build)


def multicall_name(prog: ResolvedProgram, dirs: Sequence[str]) -> str | None:
    """'busybox' / 'toybox' if `prog` is a multi-call binary (by name or content), else None."""
    for n in MULTICALL_NAMES:
        if os.path.basename(prog.realpath).startswith(n):
            return n
    return multicall_by_content(prog, dirs)


def multicall_by_content(prog: ResolvedProgram, dirs: Sequence[str]) -> str | None:
    """The multi-call binary (found in a trusted dir) whose content `prog` has, if any."""
    labels = _content_labels(_multicall_table(dirs), prog)
    return labels[0] if labels else None


def applet_argv(argv: Sequence[str], multicall: str) -> list[str] | None:
    """The applet's argv (argv[0] = applet name), or None when the multi-call binary itself runs
    (no applet given, or an option such as --list / --install)."""
    args = list(argv)
    for _ in range(8):
        if not args:
            return None
        name = os.path.basename(args[0])
        if not name.startswith(multicall):
            return [name, *args[1:]]
        if len(args) < 2 or args[1].startswith("-"):
            return None
        args = args[1:]
    return None


# -- the dynamic loader ------------------------------------------------------------------------
def _lib_dirs() -> frozenset[str]:
    def build() -> frozenset[str]:
        out: set[str] = set()
        for pattern in LIB_DIR_GLOBS:
            for d in glob.glob(pattern):
                if os.path.isdir(d):
                    out.add(os.path.normpath(d))
                    out.add(os.path.realpath(d))
        return frozenset(out)
    return ttl_cached("libdirs", build)


def _loader_table() -> dict[int, dict[str, list[str]]]:
    """Kept until a lib dir's entries (its mtime) or a loader file's stat change: a stat per
    lib dir and loader per call, instead of globbing every lib dir (~7 ms) once a second."""
    dirs = sorted(_lib_dirs())
    hit = _TTL.get("loaders")
    if hit is not None:
        cached: tuple[object, list[str], object, dict[int, dict[str, list[str]]]]
        cached = hit[1]  # type: ignore[assignment]
        if _stat_sig(dirs) == cached[0] and _stat_sig(cached[1]) == cached[2]:
            return cached[3]
    dsig = _stat_sig(dirs)  # before the glob: a change during it rebuilds next time
    found = [p for d in dirs for pattern in LOADER_GLOBS
             for p in glob.glob(os.path.join(d, pattern))]
    fsig = _stat_sig(found)  # before hashing, likewise
    table = _hash_table(("loader", p) for p in found)
    _TTL["loaders"] = (float("inf"), (dsig, found, fsig, table))  # clear_caches() drops it
    return table


def _stat_sig(paths: Iterable[str]) -> tuple[tuple[int, int, int, int] | None, ...]:
    out: list[tuple[int, int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def is_loader_name(path: str) -> bool:
    base = path.rpartition("/")[2]
    return base.startswith("ld") and ".so" in base and any(
        fnmatchcase(base, g) for g in LOADER_GLOBS)


def is_loader(prog: ResolvedProgram) -> bool:
    """True if `prog` is the dynamic loader (by realpath in a lib dir, or by content)."""
    for p in (prog.realpath, prog.path_as_found):
        if is_loader_name(p) and os.path.dirname(p) in _lib_dirs():
            return True
    return bool(_content_labels(_loader_table(), prog))
