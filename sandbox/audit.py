"""Append-only JSONL audit log in the state dir. One event per line.

Durability: write_many(sync=True) (the default) fsyncs the batch. The supervisor syncs once per
run at its end and at once for what a user sees (blocks, lost events, seccomp kills, grant
changes); large batches of exec events in between are written (so readable at once) but not
fsync'd on their own: a host crash can lose at most the exec events of runs still in flight.

Lines are written with O_APPEND in one write() each, so concurrent writers (several runs, the
daemon) never interleave inside a line.

Secrets in argv stay out of the log: every event's `argv` is written with the escalation
record's redaction (escalation.redact.redact_argv: `--api-token=VALUE` values and URL
passwords masked). The run's own stderr/JSON output (the caller's own command) is unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from sandbox.paths import audit_log_path


class AuditLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or audit_log_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, event: object) -> None:
        self.write_many([event])

    def write_many(self, events: Iterable[object], sync: bool = True) -> None:
        data = b"".join(_line(e) for e in events)
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def event_json(event: object) -> str:
    """One event as a JSON line (no newline). Strings that came from the kernel as bytes that
    are not UTF-8 (surrogateescape) are kept, escaped as \\udcXX: the exact bytes come back
    with json.loads + os.fsencode, and no argv a process can pass breaks the log."""
    if hasattr(event, "model_dump_json"):
        try:
            return str(event.model_dump_json())
        except ValueError:  # PydanticSerializationError: a lone surrogate
            event = event.model_dump(mode="json")  # type: ignore[attr-defined]
    return json.dumps(event, separators=(",", ":"), default=str)


def redacted(event: object) -> object:
    """The event as the audit log keeps it: its argv (if any) redacted like the escalation
    record's (docs/escalation.md, "Redaction rule")."""
    argv = event.get("argv") if isinstance(event, dict) else getattr(event, "argv", None)
    if not isinstance(argv, list) or not argv:
        return event
    if not any(isinstance(a, str) and ("@" in a or (a[:1] == "-" and "=" in a)) for a in argv):
        return event  # the common case: nothing redact_argv could mask (hot path: every exec)
    from escalation.redact import redact_argv

    masked = redact_argv([a if isinstance(a, str) else str(a) for a in argv])
    if masked == argv:
        return event
    if isinstance(event, dict):
        return {**event, "argv": masked}
    if hasattr(event, "model_copy"):
        return event.model_copy(update={"argv": masked})
    return event


def _line(event: object) -> bytes:
    return event_json(redacted(event)).encode() + b"\n"


def read_events(path: Path | None = None, run_id: str | None = None) -> Iterator[dict[str, object]]:
    p = path or audit_log_path()
    if not p.exists():
        return
    with p.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                ev = json.loads(raw)
            except ValueError:
                continue  # a torn last line after a crash; everything before it is intact
            if run_id is None or ev.get("run_id") == run_id:
                yield ev
