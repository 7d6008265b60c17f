"""The embedded store: one SQLite file in the state dir, WAL mode, safe for several processes
(every read-modify-write runs in a BEGIN IMMEDIATE transaction)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from escalation.models import Delivery, EscalationRecord, Grant, Transition
from escalation.store import Store
from sandbox.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS escalations (id TEXT PRIMARY KEY, dedupe TEXT, state TEXT,
  created REAL, expires REAL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS esc_dedupe ON escalations(dedupe, state);
CREATE TABLE IF NOT EXISTS grants (id TEXT PRIMARY KEY, agent TEXT, profile TEXT, scope TEXT,
  cmd_key TEXT, one_shot INTEGER, expires REAL, revoked REAL, consumed REAL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS grants_lookup ON grants(profile, agent);
CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, escalation_id TEXT, state TEXT,
  next_at REAL, lease_until REAL DEFAULT 0, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires REAL);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, n INTEGER, expires REAL);
"""


class SqliteStore(Store):
    def __init__(self, path: str) -> None:
        self.url = f"sqlite://{path}"
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"the SQLite store {path} cannot be opened: {e}",
                             hint="check the state dir's permissions and free space") from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StoreError(f"the SQLite store {self.path} failed: {e}") from None

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as e:
                raise StoreError(f"the SQLite store {self.path} failed: {e}") from None

    def ping(self) -> None:
        self._q("SELECT 1")

    # -- escalations ---------------------------------------------------------------------------
    def create_or_attach(self, rec: EscalationRecord, now: float, run_id: str
                         ) -> tuple[EscalationRecord, bool]:
        with self._tx() as db:
            row = db.execute("SELECT data FROM escalations WHERE dedupe=? AND state='pending' "
                             "AND expires>? ORDER BY created DESC LIMIT 1",
                             (rec.dedupe, now)).fetchone()
            if row:
                cur = EscalationRecord.model_validate_json(row[0])
                cur.count += 1
                cur.last_seen = cur.updated_at = now
                if run_id and run_id not in cur.run_ids:
                    cur.run_ids = [*cur.run_ids[-19:], run_id]
                db.execute("UPDATE escalations SET data=? WHERE id=?", (cur.stored(), cur.id))
                return cur, False
            db.execute("INSERT INTO escalations VALUES (?,?,?,?,?,?)",
                       (rec.id, rec.dedupe, rec.state, rec.created_at, rec.expires_at,
                        rec.stored()))
            return rec, True

    def get_escalation(self, esc_id: str) -> EscalationRecord | None:
        rows = self._q("SELECT data FROM escalations WHERE id=?", (esc_id,))
        return EscalationRecord.model_validate_json(str(rows[0][0])) if rows else None

    def list_escalations(self, state: str | None = None, limit: int = 100
                         ) -> list[EscalationRecord]:
        if state:
            rows = self._q("SELECT data FROM escalations WHERE state=? ORDER BY created DESC "
                           "LIMIT ?", (state, limit))
        else:
            rows = self._q("SELECT data FROM escalations ORDER BY created DESC LIMIT ?",
                           (limit,))
        return [EscalationRecord.model_validate_json(str(r[0])) for r in rows]

    def cas_escalation(self, rec: EscalationRecord, expected_state: str) -> bool:
        with self._tx() as db:
            c = db.execute("UPDATE escalations SET state=?, data=? WHERE id=? AND state=?",
                           (rec.state, rec.stored(), rec.id, expected_state))
            return c.rowcount == 1

    def add_history(self, esc_id: str, t: Transition) -> None:
        with self._tx() as db:
            row = db.execute("SELECT data FROM escalations WHERE id=?", (esc_id,)).fetchone()
            if row:
                cur = EscalationRecord.model_validate_json(row[0])
                cur.history.append(t)
                db.execute("UPDATE escalations SET data=? WHERE id=?", (cur.stored(), esc_id))

    # -- grants --------------------------------------------------------------------------------
    def put_grant(self, g: Grant) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO grants VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (g.id, g.agent or "", g.profile, g.scope, g.cmd_key, int(g.one_shot),
                        g.expires_at, g.revoked_at, g.consumed_at, g.model_dump_json()))

    def get_grant(self, grant_id: str) -> Grant | None:
        rows = self._q("SELECT data, consumed FROM grants WHERE id=?", (grant_id,))
        return _grant(rows[0]) if rows else None

    def list_grants(self, include_ended: bool = False, limit: int = 200) -> list[Grant]:
        if include_ended:
            rows = self._q("SELECT data, consumed FROM grants ORDER BY rowid DESC LIMIT ?",
                           (limit,))
        else:
            rows = self._q("SELECT data, consumed FROM grants WHERE revoked IS NULL AND "
                           "expires>? ORDER BY rowid DESC LIMIT ?", (time.time(), limit))
        return [_grant(r) for r in rows]

    def candidate_grants(self, agent: str | None, profile: str, cmd_key: str) -> list[Grant]:
        rows = self._q(
            "SELECT data, consumed FROM grants WHERE profile=? AND agent=? AND revoked IS NULL "
            "AND expires>? AND (scope IN ('profile', 'destination') OR (cmd_key=? AND "
            "(one_shot=0 OR consumed IS NULL))) ORDER BY expires DESC",
            (profile, agent or "", time.time(), cmd_key))
        return [_grant(r) for r in rows]

    def consume_grant(self, grant_id: str, now: float) -> bool:
        with self._tx() as db:
            c = db.execute("UPDATE grants SET consumed=? WHERE id=? AND consumed IS NULL AND "
                           "revoked IS NULL AND expires>?", (now, grant_id, now))
            return c.rowcount == 1

    def revoke_grant(self, grant_id: str, by: str, why: str | None, now: float
                     ) -> Grant | None:
        with self._tx() as db:
            row = db.execute("SELECT data, consumed FROM grants WHERE id=?",
                             (grant_id,)).fetchone()
            if not row:
                return None
            g = _grant(row)
            if g.revoked_at is None:
                g.revoked_at, g.revoked_by, g.revoke_reason = now, by, why
                db.execute("UPDATE grants SET revoked=?, data=? WHERE id=?",
                           (now, g.model_dump_json(), grant_id))
            return g

    def grant_live(self, grant_id: str, now: float) -> str:
        g = self.get_grant(grant_id)
        return "expired" if g is None else g.status(now)

    def publish_revocation(self, grant_id: str) -> None:
        pass  # other processes see the `revoked` column (subscribe_revocations polls it)

    def subscribe_revocations(self, callback: Callable[[str], None]) -> Callable[[], None]:
        stop = threading.Event()
        start = time.time()
        seen: set[str] = set()
        other = SqliteStore(self.path)

        def loop() -> None:
            while not stop.wait(0.25):
                try:
                    rows = other._q("SELECT id FROM grants WHERE revoked>=?", (start - 1,))
                except StoreError:
                    continue
                for (gid,) in rows:
                    if gid not in seen:
                        seen.add(str(gid))
                        callback(str(gid))

        threading.Thread(target=loop, name="glassbreak-revocations", daemon=True).start()
        return stop.set

    # -- outbox --------------------------------------------------------------------------------
    def save_delivery(self, d: Delivery) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO outbox (id, escalation_id, state, next_at, data) VALUES "
                       "(?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET state=excluded.state, "
                       "next_at=excluded.next_at, data=excluded.data, lease_until=0",
                       (d.id, d.escalation_id, d.state, d.next_at, d.model_dump_json()))

    def due_deliveries(self, now: float, escalation_id: str | None = None, limit: int = 50
                       ) -> list[Delivery]:
        sql = ("SELECT data FROM outbox WHERE state IN ('pending','retrying') AND next_at<=? "
               "AND lease_until<?")
        args: tuple[object, ...] = (now, now)
        if escalation_id:
            sql += " AND escalation_id=?"
            args += (escalation_id,)
        rows = self._q(sql + " ORDER BY next_at LIMIT ?", (*args, limit))
        return [Delivery.model_validate_json(str(r[0])) for r in rows]

    def claim_delivery(self, delivery_id: str, lease_s: float, now: float) -> bool:
        with self._tx() as db:
            c = db.execute("UPDATE outbox SET lease_until=? WHERE id=? AND lease_until<? AND "
                           "state IN ('pending','retrying')", (now + lease_s, delivery_id, now))
            return c.rowcount == 1

    def deliveries_for(self, escalation_id: str) -> list[Delivery]:
        rows = self._q("SELECT data FROM outbox WHERE escalation_id=? ORDER BY rowid",
                       (escalation_id,))
        return [Delivery.model_validate_json(str(r[0])) for r in rows]

    # -- nonces, counters ----------------------------------------------------------------------
    def remember_nonce(self, nonce: str, ttl_s: int, now: float) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM nonces WHERE expires<?", (now,))
            c = db.execute("INSERT OR IGNORE INTO nonces VALUES (?,?)", (nonce, now + ttl_s))
            return c.rowcount == 1

    def bump_counter(self, key: str, window_s: int, now: float) -> int:
        with self._tx() as db:
            db.execute("DELETE FROM counters WHERE expires<?", (now,))
            db.execute("INSERT INTO counters VALUES (?,1,?) ON CONFLICT(key) DO UPDATE SET "
                       "n=n+1", (key, now + window_s))
            row = db.execute("SELECT n FROM counters WHERE key=?", (key,)).fetchone()
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _grant(row: tuple[object, ...]) -> Grant:
    g = Grant.model_validate_json(str(row[0]))
    if row[1] is not None:
        g.consumed_at = float(row[1])  # type: ignore[arg-type]
    return g
