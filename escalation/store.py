"""The store contract shared by the SQLite (embedded) and Redis (multi-host) stores.

Every method raises sandbox.errors.StoreError when the store cannot be reached: callers fail
closed (no grant honoured, the strict profile used, the reason said).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable

from escalation.models import Delivery, EscalationRecord, Grant, Transition


def dedupe_key(agent: str | None, profile: str, rule_id: str, argv: list[str], cwd: str) -> str:
    raw = json.dumps([agent, profile, rule_id, argv, cwd], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def command_key(argv: list[str], cwd: str | None, binary_sha256: str | None) -> str:
    """A command grant matches exactly this argv, cwd and binary content."""
    raw = json.dumps([argv, cwd, binary_sha256], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


# path grants are stored as command-indexed grants under this one key per (agent, profile), so
# both stores find them with candidate_grants() unchanged
PATH_GRANTS_KEY = command_key(["glassbreak:path-grants"], None, None)


class Store(ABC):
    url: str

    @abstractmethod
    def ping(self) -> None: ...

    # escalations
    @abstractmethod
    def create_or_attach(self, rec: EscalationRecord, now: float, run_id: str
                         ) -> tuple[EscalationRecord, bool]:
        """Atomically: attach to the pending, unexpired request with rec.dedupe (count+1,
        last_seen, run id) -> (that, False); else store rec -> (rec, True)."""

    @abstractmethod
    def get_escalation(self, esc_id: str) -> EscalationRecord | None: ...

    @abstractmethod
    def list_escalations(self, state: str | None = None, limit: int = 100
                         ) -> list[EscalationRecord]: ...

    @abstractmethod
    def cas_escalation(self, rec: EscalationRecord, expected_state: str) -> bool:
        """Replace the record only if its stored state is still `expected_state`."""

    @abstractmethod
    def add_history(self, esc_id: str, t: Transition) -> None: ...

    # grants
    @abstractmethod
    def put_grant(self, g: Grant) -> None: ...

    @abstractmethod
    def get_grant(self, grant_id: str) -> Grant | None: ...

    @abstractmethod
    def list_grants(self, include_ended: bool = False, limit: int = 200) -> list[Grant]: ...

    @abstractmethod
    def candidate_grants(self, agent: str | None, profile: str, cmd_key: str) -> list[Grant]:
        """Unrevoked, unexpired profile grants for (agent, profile) and command grants with
        cmd_key (one-shot ones not yet consumed)."""

    @abstractmethod
    def consume_grant(self, grant_id: str, now: float) -> bool:
        """One-shot grants: True for exactly one caller, ever."""

    @abstractmethod
    def revoke_grant(self, grant_id: str, by: str, why: str | None, now: float
                     ) -> Grant | None: ...

    @abstractmethod
    def grant_live(self, grant_id: str, now: float) -> str:
        """active | expired | revoked (fast path used by running sessions)."""

    @abstractmethod
    def publish_revocation(self, grant_id: str) -> None: ...

    @abstractmethod
    def subscribe_revocations(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call callback(grant_id) on every revocation (any host); returns a stop function."""

    # outbox
    @abstractmethod
    def save_delivery(self, d: Delivery) -> None: ...

    @abstractmethod
    def due_deliveries(self, now: float, escalation_id: str | None = None, limit: int = 50
                       ) -> list[Delivery]: ...

    @abstractmethod
    def claim_delivery(self, delivery_id: str, lease_s: float, now: float) -> bool:
        """A lease so that two flushers never send the same delivery at once; a crashed
        holder's lease runs out and the next flusher takes over."""

    @abstractmethod
    def deliveries_for(self, escalation_id: str) -> list[Delivery]: ...

    # replay protection, rate limits
    @abstractmethod
    def remember_nonce(self, nonce: str, ttl_s: int, now: float) -> bool:
        """True when the nonce is new (and now remembered); False on a replay."""

    @abstractmethod
    def bump_counter(self, key: str, window_s: int, now: float) -> int: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass
