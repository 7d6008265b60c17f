"""Who is calling and what it may run: the facts sandbox.policy.identity decides from (the
operator's config, the caller's user name, the relaxed profiles of the trusted directories),
gathered here, for the daemon (SO_PEERCRED uid) and the in-process runner (getuid) alike.

Trusted profile directories are the runner's own search path (sandbox.paths): for the daemon
that is the daemon's environment (root's), never the caller's; an in-process run is root's.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path
from typing import Any

from sandbox.errors import GlassbreakError
from sandbox.policy.identity import Caller, RunIdentity, resolve_run

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RELAXED: dict[str, Any] = {}


def username(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def is_profile_path(profile: str) -> bool:
    """A path rather than a name (as the loader would read it): only root may run one."""
    from sandbox.policy.source import EXTENSIONS

    return "/" in profile or profile.endswith(EXTENSIONS) or not _NAME.match(profile)


def relaxed_profiles() -> dict[str, set[str]]:
    """Relaxed profile name -> strict profiles naming it, over the trusted directories: files
    with `relax: true`, and every `escalation.relaxedProfile`. Cached by the files' stamps."""
    from sandbox.paths import profile_search_path
    from sandbox.policy.source import EXTENSIONS

    files: list[tuple[Path, tuple[int, int, int]]] = []
    for d in profile_search_path():
        try:
            listing = sorted(os.listdir(d))
        except OSError:
            continue
        for n in listing:
            if n.endswith(EXTENSIONS):
                try:
                    st = os.stat(d / n)
                except OSError:
                    continue
                files.append((d / n, (st.st_mtime_ns, st.st_size, st.st_ino)))
    key = tuple((str(p), s) for p, s in files)
    if _RELAXED.get("key") == key:
        return _RELAXED["value"]  # type: ignore[no-any-return]
    out: dict[str, set[str]] = {}
    for p, _ in files:
        data = _raw(p)
        if data is None:
            continue
        names = {p.stem} | ({data["name"]} if isinstance(data.get("name"), str) else set())
        if data.get("relax") is True:
            for n in names:
                out.setdefault(n, set())
        esc = data.get("escalation")
        target = esc.get("relaxedProfile") if isinstance(esc, dict) else None
        if isinstance(target, str) and target:
            out.setdefault(Path(target).stem if is_profile_path(target) else target,
                           set()).add(p.stem)
    _RELAXED.update(key=key, value=out)
    return out


def _raw(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # safe loaders only
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)  # noqa: S506
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def authorize_run(uid: int, *, agent: str | None, profile: str | None, cwd: str
                  ) -> RunIdentity:
    """The agent and profile of a run by `uid` (IdentityError / GlassbreakError: refused).
    Root's profile paths come back absolute (relative to the caller's cwd)."""
    from sandbox.config import load_config

    cfg = load_config()
    caller = Caller(uid, username(uid))
    is_path = profile is not None and is_profile_path(profile)
    ident = resolve_run(caller, cfg.agents, agent=agent or None, profile=profile or None,
                        profile_is_path=is_path,
                        relaxed=relaxed_profiles() if uid != 0 else {},
                        config=cfg.path)
    if uid == 0 and is_path and not os.path.isabs(ident.profile):
        from dataclasses import replace

        ident = replace(ident, profile=os.path.normpath(os.path.join(cwd, ident.profile)))
    return ident


def refusal_event(e: GlassbreakError, *, uid: int, agent: Any, profile: Any,
                  argv: Any, cwd: str | None, via: str) -> Any:
    from sandbox.events import RunRefused

    return RunRefused(uid=uid, user=username(uid),
                      agent=agent if isinstance(agent, str) else None,
                      profile=profile if isinstance(profile, str) else None,
                      argv=[a for a in argv if isinstance(a, str)] if isinstance(argv, list)
                      else [], cwd=cwd, via=via,  # type: ignore[arg-type]
                      why=e.message)
