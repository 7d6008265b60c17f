"""What goes into a run's Landlock domain (sandbox.run.layers.LandlockLayer applies it).

Two layers, each a ruleset built here in the parent and applied by the child after no_new_privs:

  static  READ_FILE, READ_DIR, EXECUTE, REFER + the signal and abstract-unix-socket scopes:
          the profile's read (and execute) trees minus its hidden paths and glassbreak's secrets,
          a few devices, and EXECUTE on the exec envelope (the strict and the relaxed profile's
          programs, their interpreters and the loader). Cached: it depends on the profiles and
          the run's user, not on the run (unless a read rule names $CWD).
  run     every modifying right: the profile's write trees ($CWD, the run's private $TMPDIR)
          minus hidden paths and minus glassbreak's trust anchors, the devices.

glassbreak's trust anchors come out of both, always (sandbox.run.anchors); the run's private
temp dir comes from sandbox.run.tmpdirs. docs/filesystem.md has the whole picture.
"""

from __future__ import annotations

import glob as _glob
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.kernel import landlock as L
from sandbox.run.anchors import Anchors, _real, trust_anchors  # noqa: F401 - re-exported
from sandbox.run.tmpdirs import home_of, make_tmp, release_tmp  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from sandbox.policy.filesystem import FsRules
    from sandbox.policy.profile import ResolvedProfile

DEVICES = L.DEVICES
_GLOB = set("*?[")
# (path, why, hidden): what every run is refused besides the trust anchors
BUILT_IN = [("/dev", "devices other than " + ", ".join(DEVICES) + " are never accessible in a "
             "run (raw disks, memory, the kernel log)", True)]


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
                  monitor: bool, read_grants: Sequence[str] = (),
                  scope_abstract: bool = True) -> LayerInputs:
    """The static layer without its exec envelope (build_static adds it: it reads files).
    scope_abstract=False: abstract unix sockets outside the run are not scoped (a run that may
    reach a listed one: the network layer's hooks refuse every other name)."""
    scoped = L.SCOPE_SIGNAL | (L.SCOPE_ABSTRACT_UNIX_SOCKET if scope_abstract else 0)
    hidden = [h for _, h in rules.hidden]
    readable = [r for _, r in rules.read]
    # write trees are readable too; the per-run temp dir through its (constant) parent
    for sp, w in rules.write:
        w = tmp_parent if sp == "$TMPDIR" else w
        # (a write tree under /dev, i.e. /dev/shm, is listed on its own: "/" excludes /dev)
        if not any(w == r or _beneath(w, r) for r in readable) or _beneath(w, "/dev"):
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


def credentials_inputs(own: str, anchors: Anchors) -> LayerInputs:
    """A read layer for a run that holds credentials: everything readable (the static layer
    restricts the rest) except the runs' credential root, of which only the run's own
    directory. Built per run (its directory is its own), only for runs with credentials."""
    root = os.path.dirname(own)
    read = L.FS_READ_FILE | L.FS_READ_DIR | L.FS_REFER
    return LayerInputs((L.Grant("/", read, (root,)), L.Grant(own, L.FS_READ)), (), (),
                       L.FS_READ_FILE | L.FS_READ_DIR | L.FS_REFER, 0)


def without(anchors: Anchors, path: str) -> Anchors:
    """The anchors minus one hidden path (a run's credential root, handled by its own layer)."""
    real = _real(path)
    return Anchors(read_only=tuple(p for p in anchors.read_only if p != real),
                   hidden=tuple(p for p in anchors.hidden if p != real),
                   why=tuple(w for w in anchors.why if w[0] != real))


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
        # a run started in / (or a user whose home is /) does not get the whole system
        # writable through $CWD or $HOME: only a profile that says "/" gets that
        roots = [r for (sp, _), r in zip(rules.write, roots, strict=True)
                 if r != "/" or not sp.startswith("$")]
        # devices stay out of every write tree (a profile's "/" included): only the device
        # rules and a listed /dev/shm reach below /dev
        grants = _tree_grants(roots, rw, [*hidden, "/dev"])
        grants += _tree_grants([_real(p) for p in write_grants], rw, ["/dev"])
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
