"""Bounded capture of a run's stdout or stderr: the first `limit` bytes are kept, the rest is
counted and said (a marker line), never silently dropped. Pure; the reader drains the pipe
whatever the limit, so a chatty command never blocks on a full pipe."""

from __future__ import annotations

import codecs


class Capture:
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = max(0, limit)
        self.total = 0
        self._buf = bytearray()
        self._stream = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, data: bytes) -> str:
        """Keep what fits; return `data` decoded for streaming (split UTF-8 sequences are
        carried over to the next chunk)."""
        self.total += len(data)
        room = self.limit - len(self._buf)
        if room > 0:
            self._buf += data[:room]
        return self._stream.decode(data)

    @property
    def truncated(self) -> bool:
        return self.total > len(self._buf)

    def text(self) -> str:
        out = self._buf.decode("utf-8", "replace")
        if self.truncated:
            if out and not out.endswith("\n"):
                out += "\n"
            out += marker(self.name, len(self._buf), self.total)
        return out


def marker(name: str, kept: int, total: int) -> str:
    return (f"[glassbreak: {name} truncated: showing the first {kept} of {total} bytes; "
            f"{total - kept} bytes not shown]")
