"""Which store a deployment uses: GLASSBREAK_STORE picks a backend (SQLite by default, Redis for
multi-host). Kept apart from escalation.store (the contract) so that the backends, which
implement the contract, are not imported by it."""

from __future__ import annotations

import os

from escalation.store import Store


def open_store(url: str | None = None) -> Store:
    """GLASSBREAK_STORE=redis://[user:password@]host:port/db | rediss://... (TLS; query
    parameters such as ?ssl_ca_certs=/path) | sqlite:///path | (unset: SQLite in the state
    dir). Redis is imported only when used; the config's `redis:` section adds credentials and
    TLS files."""
    url = url if url is not None else os.environ.get("GLASSBREAK_STORE", "")
    if url.startswith(("redis://", "rediss://", "unix://")):
        from escalation.redis_store import RedisStore
        from sandbox.config import load_config
        from sandbox.errors import GlassbreakError, StoreError

        try:  # credentials and TLS files from the operator's config (the URL's own win)
            options = load_config().redis.connection_kwargs()
        except GlassbreakError as e:
            raise StoreError(f"the Redis settings cannot be used: {e.message}",
                             hint=e.hint) from None
        return RedisStore(url, options)
    from escalation.sqlite_store import SqliteStore

    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite://"):])
    if url:
        from sandbox.errors import StoreError

        raise StoreError(f"unknown GLASSBREAK_STORE {url!r}",
                         hint="use redis://host:6379/0 or sqlite:///path/state.db, or unset it")
    from sandbox.paths import db_path

    return SqliteStore(str(db_path()))
