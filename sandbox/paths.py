"""Where glassbreak keeps its state: /var/lib/glassbreak for root, the XDG state dir otherwise.

GLASSBREAK_STATE_DIR overrides (tests use it). Profiles are searched in, first match wins:
an explicit path; $GLASSBREAK_PROFILE_PATH (colon-separated); the user's config dir
($XDG_CONFIG_HOME/glassbreak/profiles); /etc/glassbreak/profiles; the profiles shipped with
the package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    env = os.environ.get("GLASSBREAK_STATE_DIR")
    if env:
        p = Path(env)
    elif os.geteuid() == 0:
        p = Path("/var/lib/glassbreak")
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        p = Path(base) / "glassbreak"
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


def audit_log_path() -> Path:
    return state_dir() / "audit.jsonl"


def db_path() -> Path:
    return state_dir() / "state.db"


def shipped_profiles_dir() -> Path:
    """The profiles/ folder of a checkout, or share/glassbreak/profiles of an installed wheel."""
    here = PACKAGE_ROOT / "profiles"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "glassbreak" / "profiles"


def profile_search_path() -> list[Path]:
    paths: list[Path] = []
    env = os.environ.get("GLASSBREAK_PROFILE_PATH")
    if env:
        paths += [Path(p) for p in env.split(":") if p]
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    paths.append(Path(xdg) / "glassbreak" / "profiles")
    paths.append(Path("/etc/glassbreak/profiles"))
    paths.append(shipped_profiles_dir())
    return paths
