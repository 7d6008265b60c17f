"""glassbreak's trust anchors: the paths no run may write (or read), whatever its profile or mode.

Never writable in a run: the config dir (/etc/glassbreak, $GLASSBREAK_CONFIG's directory), the
profile search path and the run's profile files, the install and venv, the daemon's socket
directory. Never readable either: the state dir (store, audit log), a sqlite store named by
GLASSBREAK_STORE, and every file the config (or the run's profiles' webhooks) names as a secret:
the value of any key ending in `File`, read generically from the YAML, so a key the config model
gains later (a grant signing key file) is covered without a change here. Computed from the
supervisor's own environment, never the run's. See docs/filesystem.md, "Trust anchors".
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.policy.profile import ResolvedProfile


def _real(p: str | Path) -> str:
    return os.path.realpath(p)


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
    from sandbox.run.credentials import credential_paths

    for p, what in credential_paths(profiles):  # credential sources, other runs' credentials
        add(p, what, True)
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
