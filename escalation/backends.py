"""Which store a deployment uses: GLASSBREAK_STORE picks a backend (SQLite by default, Redis for
multi-host). Kept apart from escalation.store (the contract) so that the backends, which
implement the contract, are not imported by it."""

from __future__ import annotations

import os

from escalation.store import Store


def open_store(url: str | None = None) -> Store:
    """GLASSBREAK_STORE=redis://host:port/db | sqlite:///path | (unset: SQLite in the state
    dir). Redis is imported only when used."""
    url = url if url is not None else os.environ.get("GLASSBREAK_STORE", "")
    if url.startswith(("redis://", "rediss://", "unix://")):
        from escalation.redis_store import RedisStore

        return RedisStore(url)
    from escalation.sqlite_store import SqliteStore

    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite://"):])
    if url:
        from sandbox.errors import StoreError

        raise StoreError(f"unknown GLASSBREAK_STORE {url!r}",
                         hint="use redis://host:6379/0 or sqlite:///path/state.db, or unset it")
    from sandbox.paths import db_path

    return SqliteStore(str(db_path()))
