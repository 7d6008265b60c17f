"""The multi-host store on Redis. Grants live as keys with native TTLs (`gb:grant:live:ID`
exists exactly while the grant is usable); a revocation deletes that key and is broadcast on
the `gb:revocations` channel so that every host stops honouring it at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from escalation.models import Delivery, EscalationRecord, Grant, Transition
from escalation.store import Store
from sandbox.errors import StoreError

P = "gb:"
CHANNEL = P + "revocations"
KEEP_S = 30 * 86400  # how long decided escalations and ended grants stay listable


class RedisStore(Store):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        """url: redis://[user:password@]host:port/db or rediss://... (TLS: ?ssl_ca_certs=...,
        ssl_certfile, ssl_keyfile, ssl_cert_reqs); options: defaults for what the URL does not
        say (username, password, ssl_*), from the config's `redis:` section."""
        import redis

        self.url = url
        self._redis = redis
        self.r = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                      health_check_interval=5, **(options or {}))

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._redis.RedisError as e:
            raise StoreError(f"the Redis store {self._safe_url()} is unreachable: {e}",
                             hint="start redis or fix GLASSBREAK_STORE; until then runs use "
                                  "the strict profile (fail closed)") from None

    def _safe_url(self) -> str:
        u = self.url
        if "@" in u:  # never show credentials
            scheme, _, rest = u.partition("://")
            return f"{scheme}://{rest.split('@', 1)[-1]}"
        return u

    def _watch(self, keys: list[str], body: Callable[[Any], Any]) -> Any:
        """Optimistic transaction: body(pipe) runs after WATCH; retried on conflict."""
        def run() -> Any:
            with self.r.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(*keys)
                        return body(pipe)
                    except self._redis.WatchError:
                        continue
        return self._call(run)

    def ping(self) -> None:
        self._call(self.r.ping)

    # -- escalations ---------------------------------------------------------------------------
    def create_or_attach(self, rec: EscalationRecord, now: float, run_id: str
                         ) -> tuple[EscalationRecord, bool]:
        dkey = P + "esc:pending:" + rec.dedupe

        def body(pipe: Any) -> tuple[EscalationRecord, bool]:
            cur_id = pipe.get(dkey)
            cur = None
            if cur_id:
                pipe.watch(dkey, P + "esc:" + cur_id.decode())
                raw = pipe.get(P + "esc:" + cur_id.decode())
                cur = EscalationRecord.model_validate_json(raw) if raw else None
            if cur and cur.state == "pending" and cur.expires_at > now:
                cur.count += 1
                cur.last_seen = cur.updated_at = now
                if run_id and run_id not in cur.run_ids:
                    cur.run_ids = [*cur.run_ids[-19:], run_id]
                pipe.multi()
                pipe.set(P + "esc:" + cur.id, cur.stored(), ex=KEEP_S)
                pipe.execute()
                return cur, False
            ttl = max(1, int(rec.expires_at - now) + 1)
            pipe.multi()
            pipe.set(P + "esc:" + rec.id, rec.stored(), ex=KEEP_S)
            pipe.zadd(P + "esc:index", {rec.id: rec.created_at})
            pipe.set(dkey, rec.id, ex=ttl)
            pipe.execute()
            return rec, True

        return self._watch([dkey], body)  # type: ignore[no-any-return]

    def get_escalation(self, esc_id: str) -> EscalationRecord | None:
        raw = self._call(lambda: self.r.get(P + "esc:" + esc_id))
        return EscalationRecord.model_validate_json(raw) if raw else None

    def list_escalations(self, state: str | None = None, limit: int = 100
                         ) -> list[EscalationRecord]:
        ids = self._call(lambda: self.r.zrevrange(P + "esc:index", 0, 999))
        if not ids:
            return []
        raws = self._call(lambda: self.r.mget([P + "esc:" + i.decode() for i in ids]))
        out = [EscalationRecord.model_validate_json(r) for r in raws if r]
        if state:
            out = [e for e in out if e.state == state]
        return out[:limit]

    def cas_escalation(self, rec: EscalationRecord, expected_state: str) -> bool:
        key = P + "esc:" + rec.id

        def body(pipe: Any) -> bool:
            raw = pipe.get(key)
            if not raw or EscalationRecord.model_validate_json(raw).state != expected_state:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.set(key, rec.stored(), ex=KEEP_S)
            if rec.state != "pending":
                pipe.delete(P + "esc:pending:" + rec.dedupe)
            pipe.execute()
            return True

        return self._watch([key], body)  # type: ignore[no-any-return]

    def add_history(self, esc_id: str, t: Transition) -> None:
        key = P + "esc:" + esc_id

        def body(pipe: Any) -> None:
            raw = pipe.get(key)
            if not raw:
                pipe.unwatch()
                return
            cur = EscalationRecord.model_validate_json(raw)
            cur.history.append(t)
            pipe.multi()
            pipe.set(key, cur.stored(), ex=KEEP_S)
            pipe.execute()

        self._watch([key], body)

    # -- grants --------------------------------------------------------------------------------
    def _index_key(self, g: Grant) -> str:
        if g.scope == "profile":
            return f"{P}grants:profile:{g.profile}:{g.agent or ''}"
        if g.scope == "destination":
            return f"{P}grants:dest:{g.profile}:{g.agent or ''}"
        return f"{P}grants:cmd:{g.profile}:{g.agent or ''}:{g.cmd_key}"

    def put_grant(self, g: Grant) -> None:
        ttl_ms = max(1, int((g.expires_at - time.time()) * 1000))
        pipe = self.r.pipeline(transaction=True)
        pipe.set(P + "grant:" + g.id, g.model_dump_json(), px=ttl_ms + KEEP_S * 1000)
        if g.revoked_at is None:
            pipe.set(P + "grant:live:" + g.id, "1", px=ttl_ms)
            if g.one_shot and g.consumed_at is None:
                pipe.set(P + "grant:once:" + g.id, "1", px=ttl_ms)
        pipe.sadd(self._index_key(g), g.id)
        pipe.pexpire(self._index_key(g), ttl_ms + 60_000)
        pipe.zadd(P + "grants:index", {g.id: g.created_at})
        self._call(pipe.execute)

    def get_grant(self, grant_id: str) -> Grant | None:
        raw = self._call(lambda: self.r.get(P + "grant:" + grant_id))
        return Grant.model_validate_json(raw) if raw else None

    def list_grants(self, include_ended: bool = False, limit: int = 200) -> list[Grant]:
        ids = [i.decode() for i in self._call(
            lambda: self.r.zrevrange(P + "grants:index", 0, 999))]
        if not ids:
            return []
        raws = self._call(lambda: self.r.mget([P + "grant:" + i for i in ids]))
        out = [Grant.model_validate_json(r) for r in raws if r]
        if not include_ended:
            now = time.time()
            out = [g for g in out if g.status(now) == "active"]
        return out[:limit]

    def candidate_grants(self, agent: str | None, profile: str, cmd_key: str) -> list[Grant]:
        keys = [f"{P}grants:profile:{profile}:{agent or ''}",
                f"{P}grants:cmd:{profile}:{agent or ''}:{cmd_key}",
                f"{P}grants:dest:{profile}:{agent or ''}"]
        pipe0 = self.r.pipeline(transaction=False)
        for k in keys:
            pipe0.smembers(k)
        ids = sorted({i.decode() for members in self._call(pipe0.execute) for i in members})
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.get(P + "grant:" + i)
            pipe.exists(P + "grant:live:" + i)
            pipe.exists(P + "grant:once:" + i)
        res = self._call(pipe.execute)
        out = []
        for n in range(len(ids)):
            raw, live, once = res[3 * n:3 * n + 3]
            if not raw or not live:
                continue
            g = Grant.model_validate_json(raw)
            if g.one_shot and not once:
                continue
            out.append(g)
        return sorted(out, key=lambda g: -g.expires_at)

    def consume_grant(self, grant_id: str, now: float) -> bool:
        won = self._call(lambda: self.r.delete(P + "grant:once:" + grant_id)) == 1
        if won:
            g = self.get_grant(grant_id)
            if g is not None:
                g.consumed_at = now
                ttl = self._call(lambda: self.r.pttl(P + "grant:" + grant_id))
                self._call(lambda: self.r.set(P + "grant:" + grant_id, g.model_dump_json(),
                                              px=max(1, int(ttl))))
        return won

    def revoke_grant(self, grant_id: str, by: str, why: str | None, now: float
                     ) -> Grant | None:
        key = P + "grant:" + grant_id

        def body(pipe: Any) -> Grant | None:
            raw = pipe.get(key)
            if not raw:
                pipe.unwatch()
                return None
            g = Grant.model_validate_json(raw)
            if g.revoked_at is None:
                g.revoked_at, g.revoked_by, g.revoke_reason = now, by, why
            pipe.multi()
            pipe.set(key, g.model_dump_json(), keepttl=True)
            pipe.delete(P + "grant:live:" + grant_id, P + "grant:once:" + grant_id)
            pipe.publish(CHANNEL, grant_id)
            pipe.execute()
            return g

        return self._watch([key], body)  # type: ignore[no-any-return]

    def grant_live(self, grant_id: str, now: float) -> str:
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(P + "grant:live:" + grant_id)
        pipe.get(P + "grant:" + grant_id)
        live, raw = self._call(pipe.execute)
        if live:
            return "active"
        if raw and Grant.model_validate_json(raw).revoked_at is not None:
            return "revoked"
        return "expired"

    def publish_revocation(self, grant_id: str) -> None:
        self._call(lambda: self.r.publish(CHANNEL, grant_id))

    def subscribe_revocations(self, callback: Callable[[str], None]) -> Callable[[], None]:
        ps = self.r.pubsub(ignore_subscribe_messages=True)
        self._call(lambda: ps.subscribe(CHANNEL))
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    msg = ps.get_message(timeout=0.2)
                except (self._redis.RedisError, OSError, ValueError):
                    if stop.is_set():
                        break
                    callback("*")  # lost the channel: callers must treat grants as ended
                    stop.wait(1.0)
                    try:
                        ps.subscribe(CHANNEL)
                    except self._redis.RedisError:
                        pass
                    continue
                if msg and msg.get("type") == "message":
                    callback(msg["data"].decode())
            try:
                ps.close()
            except (self._redis.RedisError, OSError, ValueError):
                pass

        threading.Thread(target=loop, name="glassbreak-revocations", daemon=True).start()
        return stop.set

    # -- outbox --------------------------------------------------------------------------------
    def save_delivery(self, d: Delivery) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(P + "outbox:" + d.id, d.model_dump_json(), ex=KEEP_S)
        pipe.sadd(P + "outbox:esc:" + d.escalation_id, d.id)
        if d.state in ("pending", "retrying"):
            pipe.zadd(P + "outbox:due", {d.id: d.next_at})
        else:
            pipe.zrem(P + "outbox:due", d.id)
        pipe.delete(P + "outbox:lease:" + d.id)
        self._call(pipe.execute)

    def due_deliveries(self, now: float, escalation_id: str | None = None, limit: int = 50
                       ) -> list[Delivery]:
        ids = self._call(lambda: self.r.zrangebyscore(P + "outbox:due", 0, now, 0, 500))
        if not ids:
            return []
        raws = self._call(lambda: self.r.mget([P + "outbox:" + i.decode() for i in ids]))
        out = [Delivery.model_validate_json(r) for r in raws if r]
        if escalation_id:
            out = [d for d in out if d.escalation_id == escalation_id]
        leased = self._call(lambda: self.r.mget([P + "outbox:lease:" + d.id for d in out])) \
            if out else []
        return [d for d, lease in zip(out, leased, strict=True) if not lease][:limit]

    def claim_delivery(self, delivery_id: str, lease_s: float, now: float) -> bool:
        return bool(self._call(lambda: self.r.set(P + "outbox:lease:" + delivery_id, "1",
                                                  nx=True, px=int(lease_s * 1000))))

    def deliveries_for(self, escalation_id: str) -> list[Delivery]:
        ids = sorted(self._call(lambda: self.r.smembers(P + "outbox:esc:" + escalation_id)))
        if not ids:
            return []
        raws = self._call(lambda: self.r.mget([P + "outbox:" + i.decode() for i in ids]))
        seen: dict[str, Delivery] = {}
        for r in raws:
            if r:
                d = Delivery.model_validate_json(r)
                seen[d.id] = d
        return sorted(seen.values(), key=lambda d: d.created_at)

    # -- nonces, counters ----------------------------------------------------------------------
    def remember_nonce(self, nonce: str, ttl_s: int, now: float) -> bool:
        return bool(self._call(lambda: self.r.set(P + "nonce:" + nonce, "1", nx=True,
                                                  ex=ttl_s)))

    def bump_counter(self, key: str, window_s: int, now: float) -> int:
        pipe = self.r.pipeline(transaction=True)
        pipe.incr(P + "count:" + key)
        pipe.expire(P + "count:" + key, window_s, nx=True)
        return int(self._call(pipe.execute)[0])

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # noqa: BLE001, S110 - closing a dead connection
            pass
