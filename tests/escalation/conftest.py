"""Escalation fixtures live in tests/escalation/helpers.py (importable by the tests too)."""

from tests.escalation.helpers import (  # noqa: F401
    ctx_factory,
    events,
    receiver,
    store,
    store_url,
    svc,
)
