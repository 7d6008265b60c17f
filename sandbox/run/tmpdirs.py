"""Each run's private temp dir ($TMPDIR): 0700, the run's user's, beneath a root-owned parent.

Directory creation and removal cost milliseconds on some filesystems (ext4 with discard: rmdir
~2-3 ms on this VM), so an empty dir goes back to a pool per user when its run ends and serves a
later run of that user; a dirty one is removed by a background thread; a process removes its
pool when it exits, and the first run of a process sweeps away what killed processes left
(untouched for a day).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import threading
from typing import Any

_tmp_root: dict[str, str] = {}
_tmp_pool: dict[tuple[int | None, int | None], list[str]] = {}
_tmp_lock = threading.Lock()
_reaper: list[Any] = []


def tmp_root() -> str:
    """The parent of every run's private temp dir: root's, not writable by anyone else."""
    base = os.environ.get("GLASSBREAK_RUN_TMP") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp",  # noqa: S108 - ours, checked below
        f"glassbreak-runs-{os.geteuid()}")
    try:
        os.mkdir(base, 0o711)
    except FileExistsError:
        pass
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        from sandbox.errors import RunnerError

        raise RunnerError(f"{base} is not a directory owned by uid {os.geteuid()} and writable "
                          "by it alone; refusing to put runs' temp dirs there",
                          hint="remove it, or set GLASSBREAK_RUN_TMP to a safe directory")
    if base not in _tmp_root:
        _tmp_root[base] = os.path.realpath(base)
        # what processes that were killed left behind (a pool is emptied at exit otherwise)
        threading.Thread(target=_sweep, args=(_tmp_root[base],), name="gb-tmp-sweep",
                         daemon=True).start()
    return _tmp_root[base]


STALE_S = 24 * 3600


def _sweep(root: str) -> None:
    """Remove the temp dirs of runs that ended a day ago or more (untouched for that long)."""
    import time

    now = time.time()
    try:
        with os.scandir(root) as it:
            old = [e.path for e in it if e.name.startswith("t-") and e.is_dir(
                follow_symlinks=False) and now - e.stat(follow_symlinks=False).st_mtime > STALE_S]
    except OSError:
        return
    for p in old:
        shutil.rmtree(p, ignore_errors=True)


def make_tmp(uid: int | None, gid: int | None) -> str:
    """A private temp dir for one run (0700, the run's user's): an empty one an earlier run of
    that user left behind, else a new one. Directory creation and removal cost milliseconds on
    some filesystems (ext4 with discard: rmdir ~2-3 ms here): reuse keeps them off the run."""
    with _tmp_lock:
        pool = _tmp_pool.get((uid, gid), [])
        while pool:
            path = pool.pop()
            try:
                st = os.lstat(path)
            except OSError:
                continue
            want_uid = os.geteuid() if uid is None else uid
            if stat.S_ISDIR(st.st_mode) and st.st_uid == want_uid and \
                    stat.S_IMODE(st.st_mode) == 0o700:
                return path
    import secrets

    path = os.path.join(tmp_root(), "t-" + secrets.token_hex(8))
    os.mkdir(path, 0o700)
    if uid is not None or gid is not None:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    return path


def release_tmp(path: str, uid: int | None, gid: int | None, keep: bool = True) -> None:
    """After the run (its cgroup empty): an empty dir goes back to the pool; anything else is
    removed by a background thread."""
    try:
        with os.scandir(path) as it:
            empty = next(it, None) is None
    except OSError:
        return
    if empty and keep:
        with _tmp_lock:
            pool = _tmp_pool.setdefault((uid, gid), [])
            if len(pool) < 16:
                pool.append(path)
                if len(_tmp_pool) == 1 and len(pool) == 1:
                    import atexit

                    atexit.register(_drain_pool)
                return
    _reap(path)


def _reap(path: str) -> None:
    import queue

    with _tmp_lock:
        if not _reaper:
            q: queue.Queue[str] = queue.Queue()

            def work() -> None:
                while True:
                    shutil.rmtree(q.get(), ignore_errors=True)
                    q.task_done()
            threading.Thread(target=work, name="gb-tmp-reaper", daemon=True).start()
            _reaper.append(q)
            import atexit

            atexit.register(q.join)  # a short-lived process removes what it made before exit
    _reaper[0].put(path)


def _drain_pool() -> None:
    with _tmp_lock:
        paths = [p for pool in _tmp_pool.values() for p in pool]
        _tmp_pool.clear()
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def home_of(uid: int | None) -> str:
    """The run user's home from the password database (never from the run's $HOME)."""
    try:
        return pwd.getpwuid(os.geteuid() if uid is None else uid).pw_dir or "/"
    except KeyError:
        return "/nonexistent"
