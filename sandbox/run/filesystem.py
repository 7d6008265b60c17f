"""What goes into a run's Landlock domain (sandbox.run.layers.LandlockLayer applies it).

Two layers, each a ruleset built here in the parent and applied by the child after no_new_privs:

  static  READ_FILE, READ_DIR, EXECUTE, REFER + the signal and abstract-unix-socket scopes:
          the profile's read (and execute) trees minus its hidden paths and glassbreak's secrets,
          a few devices, and EXECUTE on the exec envelope (the strict and the relaxed profile's
          programs, their interpreters and the loader). Cached: it depends on the profiles and
          the run's user, not on the run (unless a read rule names $CWD).
  run     every modifying right: the profile's write trees ($CWD, the run's private $TMPDIR)
          minus hidden paths and minus glassbreak's trust anchors, the devices.

Trust anchors (always, whatever the profile says; docs/filesystem.md): never writable: the
config dir, the profile search path, the run's profile files, the install and venv, the
daemon's socket dir; never readable either: the state dir (store, audit log) and every file the
config names as a secret (any `...File` key), the store file. Computed from the supervisor's
own environment, never the run's.
"""

from __future__ import annotations

import glob as _glob
import os
import pwd
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.kernel import landlock as L

if TYPE_CHECKING:
    from sandbox.policy.filesystem import FsRules
    from sandbox.policy.profile import ResolvedProfile

DEVICES = L.DEVICES
_GLOB = set("*?[")
# (path, why, hidden): what every run is refused besides the trust anchors
BUILT_IN = [("/dev", "devices other than " + ", ".join(DEVICES) + " are never accessible in a "
             "run (raw disks, memory, the kernel log)", True)]


# ---- trust anchors ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Anchors:
    read_only: tuple[str, ...]  # resolved paths: never writable in a run
    hidden: tuple[str, ...]  # resolved paths: never readable or writable in a run
    why: tuple[tuple[str, str, bool], ...]  # (path, what it is, hidden) for reports

    def protected(self) -> list[tuple[str, str, bool]]:
        return list(self.why)


_ENV_KEYS = ("GLASSBREAK_CONFIG", "GLASSBREAK_STATE_DIR", "GLASSBREAK_PROFILE_PATH",
             "GLASSBREAK_STORE", "GLASSBREAK_SOCKET", "XDG_CONFIG_HOME", "XDG_STATE_HOME")
_anchor_cache: dict[Hashable, Anchors] = {}
_anchor_lock = threading.Lock()


_config_path_fn: list[Callable[[], Any] | None] = []
_config_seen: list[tuple[float, Hashable, Path | None]] = []


def config_path() -> Path | None:
    """glassbreak's config file, wherever the config module looks for it (looked up again at
    most every second, or when GLASSBREAK_CONFIG changes)."""
    now, env = time.monotonic(), os.environ.get("GLASSBREAK_CONFIG")
    if _config_seen and now - _config_seen[0][0] < 1.0 and _config_seen[0][1] == env:
        return _config_seen[0][2]
    found = _config_path()
    _config_seen[:] = [(now, env, found)]
    return found


def _config_path() -> Path | None:
    if not _config_path_fn:
        for mod in ("sandbox.config", "escalation.config"):
            try:
                _config_path_fn.append(__import__(mod, fromlist=["config_path"]).config_path)
                break
            except (ImportError, AttributeError):
                continue
        else:
            _config_path_fn.append(None)
    fn = _config_path_fn[0]
    if fn is None:
        env = os.environ.get("GLASSBREAK_CONFIG")
        return Path(env) if env else None
    found = fn()
    return Path(found) if found else None


def secret_files(data: Any, base: Path) -> list[str]:
    """Every value of a key ending in `File` (secretFile, tokenFile, decisionSecretFile, a signing
    key file, ...), however deep: the secrets a glassbreak config or profile names."""
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and k.endswith("File") and isinstance(v, str) and v:
                out.append(str(base / os.path.expanduser(v)))
            else:
                out += secret_files(v, base)
    elif isinstance(data, list):
        for v in data:
            out += secret_files(v, base)
    return out


def _stamp(p: Path | None) -> Hashable:
    if p is None:
        return None
    try:
        st = p.stat()
        return (str(p), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(p), None)


def _real(p: str | Path) -> str:
    return os.path.realpath(p)


def trust_anchors(profiles: Sequence[ResolvedProfile] = ()) -> Anchors:
    """The paths no run may write (or read): cached until the environment or config changes."""
    from sandbox import paths

    cfg = config_path()
    key = (tuple(os.environ.get(k) for k in _ENV_KEYS), _stamp(cfg),
           tuple((p.content_hash, tuple(p.sources)) for p in profiles))
    with _anchor_lock:
        hit = _anchor_cache.get(key)
    if hit is not None:
        return hit
    why: list[tuple[str, str, bool]] = []

    def add(p: str | Path | None, what: str, hidden: bool) -> None:
        if p:
            why.append((_real(p), what, hidden))

    add(paths.state_dir(), "glassbreak's state (store, audit log) is never readable or "
        "writable in a run", True)
    store = os.environ.get("GLASSBREAK_STORE", "")
    if store.startswith("sqlite:///"):
        db = store.removeprefix("sqlite://")
        for suffix in ("", "-wal", "-shm", "-journal"):
            add(db + suffix, "glassbreak's store is never readable or writable in a run", True)
    config_dirs: list[str | Path] = ["/etc/glassbreak", *([cfg.parent] if cfg else [])]
    for d in config_dirs:
        add(d, "glassbreak's config is never writable in a run", False)
    if cfg is not None:
        add(cfg, "glassbreak's config is never writable in a run", False)
        for f in secret_files(_load_yaml(cfg), cfg.parent):
            add(f, "a secret named by glassbreak's config is never readable in a run", True)
    for d in paths.profile_search_path():
        add(d, "glassbreak's profiles are never writable in a run", False)
    for prof in profiles:
        for src in prof.sources:
            add(src, f"the profile {prof.name} is never writable in a run", False)
        for f in secret_files([w.model_dump() for w in prof.escalation.webhooks], Path("/")):
            add(f, "a webhook secret is never readable in a run", True)
    add(paths.PACKAGE_ROOT, "glassbreak's own install is never writable in a run", False)
    add(sys.prefix, "glassbreak's venv is never writable in a run", False)
    sock = os.environ.get("GLASSBREAK_SOCKET") or "/run/glassbreak/glassbreak.sock"
    add(os.path.dirname(sock), "glassbreak's socket directory is never writable in a run", False)
    why = list(dict.fromkeys(why))
    out = Anchors(read_only=tuple(dict.fromkeys(p for p, _, _ in why)),
                  hidden=tuple(dict.fromkeys(p for p, _, h in why if h)), why=tuple(why))
    with _anchor_lock:
        if len(_anchor_cache) > 64:
            _anchor_cache.clear()
        _anchor_cache[key] = out
    return out


def _load_yaml(p: Path) -> Any:
    try:
        import yaml

        return yaml.safe_load(p.read_text())
    except (OSError, ValueError, ImportError):
        return None
    except Exception:  # noqa: BLE001 - yaml errors: the config module reports them
        return None


_rules_cache: dict[Hashable, FsRules] = {}


def rules_for(profile: ResolvedProfile, variables: dict[str, str]) -> FsRules:
    """The profile's filesystem rules with these variables (cached: ~15 us saved a run)."""
    from sandbox.policy.filesystem import FsRules

    key = (profile.content_hash, tuple(sorted(variables.items())))
    hit = _rules_cache.get(key)
    if hit is None:
        if len(_rules_cache) > 256:
            _rules_cache.clear()
        hit = _rules_cache[key] = FsRules.of(profile.filesystem, variables)
    return hit


# ---- the exec envelope ------------------------------------------------------------------------
def run_profiles(strict: ResolvedProfile, effective: ResolvedProfile) -> list[ResolvedProfile]:
    """The profiles a run's exec envelope is built from: the strict one, the one in effect (a
    grant's), and the strict one's relaxed profile (a grant can switch the exec gate to it; the
    Landlock domain cannot change once the run started)."""
    out = [strict] + ([effective] if effective is not strict else [])
    name = strict.escalation.relaxedProfile
    if name and name not in (p.name for p in out):
        from sandbox.errors import GlassbreakError
        from sandbox.policy.loader import load_profile

        try:
            out.append(load_profile(name))
        except GlassbreakError:
            pass  # a broken relaxed profile: its programs stay outside this run's envelope
    return out


def exec_all(profiles: Iterable[ResolvedProfile]) -> bool:
    """Does one of the profiles let any program run (exec.default: allow)?"""
    return any(p.exec.default == "allow" for p in profiles)


def envelope_programs(profiles: Iterable[ResolvedProfile]) -> tuple[list[str], list[str]]:
    """The programs the profiles allow by name, path or glob (exec.allow, safeBins keys), as
    candidate files, and the directories they were looked for in (a new file there re-plans)."""
    out: list[str] = []
    dirs_seen: list[str] = []
    for p in profiles:
        dirs = list(dict.fromkeys(_real(d) for d in p.exec.trustedDirs))
        for entry in [*p.exec.allow, *p.safeBins]:
            if "/" in entry:
                out += _glob.glob(entry) if _GLOB & set(entry) else [entry]
                dirs_seen.append(os.path.dirname(entry))
            else:
                dirs_seen += dirs
                for d in dirs:
                    out += _glob.glob(os.path.join(_glob.escape(d), entry)) \
                        if _GLOB & set(entry) else [os.path.join(d, entry)]
    return out, list(dict.fromkeys(dirs_seen))


# ---- per-run private temp dir -----------------------------------------------------------------
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
        _tmp_root[base] = _real(base)
    return _tmp_root[base]


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


# ---- plans ------------------------------------------------------------------------------------
def _beneath(path: str, top: str) -> bool:
    return path != top and (top == "/" or path.startswith(top.rstrip("/") + "/"))


def _tree_grants(roots: Iterable[str], access: int, hidden: Sequence[str]) -> list[L.Grant]:
    """One grant per root; the hidden entries strictly beneath it are its exceptions (an entry
    above a root does not reach it: the deepest rule wins)."""
    return [L.Grant(r, access, tuple(h for h in hidden if _beneath(h, r)))
            for r in dict.fromkeys(roots)]


@dataclass
class LayerInputs:
    """What one ruleset is planned from (hashable: the static layer's cache key)."""

    grants: tuple[L.Grant, ...]
    hidden: tuple[str, ...]
    read_only: tuple[str, ...] = ()
    handled: int = L.STATIC_FS
    scoped: int = 0

    def key(self) -> Hashable:
        return (self.grants, self.hidden, self.read_only, self.handled, self.scoped)


def static_inputs(rules: FsRules, anchors: Anchors, *, exec_all: bool, tmp_parent: str,
                  monitor: bool, read_grants: Sequence[str] = ()) -> LayerInputs:
    """The static layer without its exec envelope (build_static adds it: it reads files)."""
    scoped = L.SCOPE_SIGNAL | L.SCOPE_ABSTRACT_UNIX_SOCKET
    hidden = [h for _, h in rules.hidden]
    readable = [r for _, r in rules.read]
    # write trees are readable too; the per-run temp dir through its (constant) parent
    for sp, w in rules.write:
        w = tmp_parent if sp == "$TMPDIR" else w
        if not any(w == r or _beneath(w, r) for r in readable):
            readable.append(w)
    read = L.FS_READ | L.FS_REFER
    if monitor:  # the profile's rules are not enforced: only glassbreak's own protections
        grants = _tree_grants(["/"], read | L.FS_EXECUTE, ["/dev"])
    else:
        grants = _tree_grants(readable, read, [*hidden, "/dev"])
        grants += _tree_grants(list(read_grants), read, [])
        if exec_all:
            grants += _tree_grants(readable, L.FS_EXEC, [*hidden, "/dev"])
        grants += _tree_grants([e for _, e in rules.execute], L.FS_EXEC, hidden)
    grants += [L.Grant(d, L.FS_READ_FILE | (L.FS_READ_DIR if d == "/dev/pts" else 0))
               for d in DEVICES]
    return LayerInputs(tuple(grants), anchors.hidden, (), L.STATIC_FS, scoped)


# the per-run layer's device rules: the same for every run, never planned
DEVICE_RULES = tuple(L.Rule(d, L.FS_DEVICE | (L.FS_READ_DIR if d == "/dev/pts" else 0),
                            d == "/dev/pts") for d in DEVICES)


def run_inputs(rules: FsRules, anchors: Anchors, *, tmp: str, monitor: bool,
               write_grants: Sequence[str] = ()) -> LayerInputs:
    """The per-run layer (the devices come as DEVICE_RULES). $CWD is already resolved."""
    hidden = [h for _, h in rules.hidden]
    rw = L.FS_READ | L.FS_WRITE
    if monitor:
        grants = _tree_grants(["/"], rw, ["/dev"])
    else:
        roots = [tmp if sp == "$TMPDIR" else w if sp == "$CWD" else _real(w)
                 for sp, w in rules.write]
        grants = _tree_grants(roots, rw, hidden)
        grants += _tree_grants([_real(p) for p in write_grants], rw, [])
    return LayerInputs(tuple(grants), anchors.hidden, anchors.read_only, L.RUN_FS, 0)


def build(inputs: LayerInputs, abi: int, resolve: bool = True, *,
          extra: Sequence[L.Grant] = (), watch: Sequence[str] = ()) -> tuple[L.Plan, L.Ruleset]:
    """Plan and build a layer (the per-run one gets the devices; resolve=False: its paths are
    resolved already)."""
    p = L.plan([*inputs.grants, *extra], hidden=inputs.hidden, read_only=inputs.read_only,
               resolve=resolve)
    p.watch = list(dict.fromkeys([*p.watch, *watch]))
    rules = p.rules if inputs.handled == L.STATIC_FS else [*p.rules, *DEVICE_RULES]
    rs = L.build(rules, handled_fs=inputs.handled, scoped=inputs.scoped, abi=abi)
    return p, rs


def build_static(inputs: LayerInputs, profiles: Sequence[ResolvedProfile], binary: str | None,
                 abi: int, envelope: bool = True) -> tuple[L.Plan, L.Ruleset]:
    """The static layer: its inputs plus EXECUTE on the exec envelope's files."""
    extra: list[L.Grant] = []
    watch: list[str] = []
    if envelope and not exec_all(profiles):
        programs, watch = envelope_programs(profiles)
        extra = [L.Grant(f, L.FS_EXEC) for f in L.exec_closure(
            [*programs, *([binary] if binary else [])])]
    return build(inputs, abi, extra=extra, watch=watch)


def denial_router(abi: int) -> tuple[Any, str]:
    """The process's Landlock audit reader, or (None, why denials go unreported)."""
    if abi < 7:
        return None, f"Landlock ABI {abi} has no audit records: denials are enforced, not reported"
    from sandbox.kernel.landlock_audit import AuditUnavailable, DenialRouter

    try:
        return DenialRouter.get(), ""
    except AuditUnavailable as e:
        return None, f"denials are enforced, not reported: {e}"


# ---- the static layer's cache -----------------------------------------------------------------
def _dir_stamp(paths: Sequence[str]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


@dataclass
class _Entry:
    ruleset: L.Ruleset
    plan: L.Plan
    stamp: tuple[tuple[int, int, int] | None, ...]
    trusted: bool  # False: a watched directory changed within the clock's granularity
    users: int = 0
    stale: bool = False


@dataclass
class LayerCache:
    """Rulesets by plan inputs, re-planned when a directory the plan read changed (a new file
    in an expanded directory, a replaced binary, a hidden path that appeared). Checked on every
    use (a few stat() calls); a ruleset in use by a run being prepared is closed only after it."""

    max_entries: int = 64
    _d: dict[Hashable, _Entry] = field(default_factory=dict)
    _mu: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, key: Hashable, make: Callable[[], tuple[L.Plan, L.Ruleset]]
                ) -> tuple[L.Ruleset, Callable[[], None]]:
        with self._mu:
            e = self._d.get(key)
        if e is not None and e.trusted and _dir_stamp(e.plan.watch) == e.stamp:
            with self._mu:
                if not e.stale:
                    e.users += 1
                    return e.ruleset, self._releaser(e)
        plan, rs = make()
        now = time.time_ns()
        stamp = _dir_stamp(plan.watch)
        trusted = all(s is None or now - s[2] > 50_000_000 for s in stamp)
        fresh = _Entry(rs, plan, stamp, trusted, users=1)
        with self._mu:
            old = self._d.pop(key, None)
            if old is not None:
                self._retire(old)
            if len(self._d) >= self.max_entries:
                for k in list(self._d)[: len(self._d) // 2]:
                    self._retire(self._d.pop(k))
            self._d[key] = fresh
        return rs, self._releaser(fresh)

    def _releaser(self, e: _Entry) -> Callable[[], None]:
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            with self._mu:
                e.users -= 1
                if e.stale and e.users == 0:
                    e.ruleset.close()
        return release

    def _retire(self, e: _Entry) -> None:
        e.stale = True
        if e.users == 0:
            e.ruleset.close()

    def close(self) -> None:
        with self._mu:
            for e in self._d.values():
                self._retire(e)
            self._d.clear()
