"""Fast-allow: execs the native responder may continue without Python (native/gbresp.c).

An entry is a path AND the file it named when it was learned (device, inode, ctime) and the
decision the judge took for it; the responder continues an exec only when the caller's path is
the entry's path and, resolved in the caller's own root, names that same file. Learned after
the kernel verified an exec the Python judge allowed, for binaries that qualify
(fast_candidate). Sets are kept per (profile name, content hash): a daemon's later runs start
warm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.policy.decision import Decision

if TYPE_CHECKING:
    from sandbox.policy.profile import ResolvedProfile
    from sandbox.run.execjudge import Check


@dataclass
class Fast:  # a fast-allow entry: the file a path named when it was learned, and its decision
    dev: int
    ino: int
    ctime_ns: int
    decision: Decision


_FAST_PROBES = ((), ("--glassbreak-probe",), ("-Z", "glassbreak-probe", "--", "x"))
# learned fast-allow sets per (profile name, content hash): a daemon's later runs start warm
FAST: dict[tuple[str, str], dict[str, Fast]] = {}


def fast_candidate(profile: ResolvedProfile, check: Check, filename: str, exe: str) -> bool:
    """May an exec of `filename` (this file: the native responder also checks its identity)
    be continued without Python from now on? Only a plain absolute spelling in a trusted dir of
    a root-owned regular file (in a root-owned, not group/world-writable dir), that is not a
    script, not the loader, has no safeBins rule, and is allowed whatever its argv (so neither
    multi-call binaries nor ruled binaries qualify)."""
    from sandbox.policy.resolve import is_loader_name, trusted_set

    if (not filename.startswith("/") or os.path.normpath(filename) != filename
            or os.path.realpath(filename) != exe or is_loader_name(exe)):
        return False
    d, name = os.path.split(filename)
    keys = profile.safeBins
    if name in keys or filename in keys or exe in keys or os.path.basename(exe) in keys:
        return False
    if os.path.realpath(d) not in trusted_set(profile.exec.trustedDirs) or not _root_owned(exe):
        return False
    try:
        return all(check(profile, [filename, *probe], cwd="/", env_path="",
                         binary=filename).allowed for probe in _FAST_PROBES)
    except Exception:  # noqa: BLE001 - when in doubt, judge every time
        return False


def _root_owned(path: str) -> bool:
    import stat as st_mod

    try:
        st = os.stat(path)
        dst = os.stat(os.path.dirname(path))
    except OSError:
        return False
    return (st_mod.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022
            and dst.st_uid == 0 and not dst.st_mode & 0o022)


def same_file(path: str, ident: tuple[int, int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino, st.st_ctime_ns) == ident
