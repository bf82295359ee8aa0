"""Durable, deduplicated commit of accepted events (and quarantined ones) to the log.

``SqliteIngestSink`` keeps the dedupe index in the log's own SQLite file and writes it
in the same transaction as the events, so "seen" and "stored" can never disagree, even
after a crash. The index is split into one table per UTC day (dropped whole after the
dedupe window) so a lookup touches small B-trees and expiry costs nothing per event.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import Log
from vendwatch.bus.sqlite import SqliteLog


@dataclass(slots=True)
class Pending:
    device_id: str
    event_id: str
    value: bytes  # StoredEvent JSON


def dedupe_key(device_id: str, event_id: str) -> bytes:
    # 128-bit: a collision (a real event taken for a duplicate) is ~1e-20 likely at 1e9 ids
    return hashlib.blake2b(f"{device_id}\x00{event_id}".encode(), digest_size=16).digest()


class IngestSink(ABC):
    @abstractmethod
    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Store new events durably; returns, per accepted event, True if stored, False if a duplicate."""


class SqliteIngestSink(IngestSink):
    def __init__(self, log: SqliteLog, window_s: float = 7 * 86_400.0) -> None:
        self.log = log
        self.window_days = max(1, int(window_s // 86_400) + 1)
        self._tables: set[int] = set()
        self._last_gc_day = -1

    def _day(self) -> int:
        return int(time.time() // 86_400)

    def _ensure(self, db, day: int) -> None:  # type: ignore[no-untyped-def]
        if day in self._tables:
            return
        db.execute(f"CREATE TABLE IF NOT EXISTS ingest_seen_{day}(k BLOB PRIMARY KEY) WITHOUT ROWID")
        self._tables.add(day)
        if self._last_gc_day != day:
            self._last_gc_day = day
            names = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'ingest_seen_%'")]
            for n in names:
                d = int(n.rsplit("_", 1)[1])
                if d < day - self.window_days:
                    db.execute(f"DROP TABLE {n}")
                    self._tables.discard(d)
                else:
                    self._tables.add(d)

    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        keys = [dedupe_key(p.device_id, p.event_id) for p in accepted]
        day = self._day()
        with self.log.transaction() as db:
            self._ensure(db, day)
            seen: set[bytes] = set()
            if keys:
                for d in sorted(t for t in self._tables if t >= day - self.window_days):
                    for i in range(0, len(keys), 900):
                        chunk = keys[i : i + 900]
                        seen.update(r[0] for r in db.execute(
                            f"SELECT k FROM ingest_seen_{d} WHERE k IN ({','.join('?' * len(chunk))})", chunk))
            fresh: list[bool] = []
            new_keys: list[tuple[bytes]] = []
            items: list[tuple[str, bytes]] = []
            for p, k in zip(accepted, keys, strict=True):
                if k in seen:
                    fresh.append(False)
                    continue
                seen.add(k)  # the same event twice in one group commit
                fresh.append(True)
                new_keys.append((k,))
                items.append((p.device_id, p.value))
            if new_keys:
                db.executemany(f"INSERT INTO ingest_seen_{day} VALUES (?)", new_keys)
            self.log.append_in(db, {EVENTS: items, REJECTED: list(rejected)})
        return fresh


class DedupeStore(ABC):
    """A shared 'seen event ids' index for scale-out collectors (e.g. PostgreSQL)."""

    @abstractmethod
    def claim(self, keys: Sequence[bytes]) -> list[bool | None]:
        """Claim keys before appending them: True for a key not seen before (now claimed by
        this caller), False for one already stored, None for one another request is storing
        right now (answer "retry later": if that request fails, the retry must store it)."""

    def confirm(self, keys: Sequence[bytes]) -> None:  # noqa: B027 - optional
        """The claimed keys' events are durable in the log."""

    def release(self, keys: Sequence[bytes]) -> None:  # noqa: B027 - optional
        """The claimed keys' events could not be appended: forget the claims."""


class LogIngestSink(IngestSink):
    """Any log plus a separate dedupe index: claim, append, confirm. If the append fails
    the claims are released; if the process dies before confirming, the claims expire,
    so a retry of the batch is never taken for a duplicate of an event that was lost."""

    def __init__(self, log: Log, dedupe: DedupeStore) -> None:
        self.log = log
        self.dedupe = dedupe

    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool | None]:  # type: ignore[override]
        keys = [dedupe_key(p.device_id, p.event_id) for p in accepted]
        fresh = self.dedupe.claim(keys)
        mine = [k for k, f in zip(keys, fresh, strict=True) if f]
        items = [(p.device_id, p.value) for p, f in zip(accepted, fresh, strict=True) if f]
        try:
            self.log.append_many({EVENTS: items, REJECTED: list(rejected)})
        except Exception:
            self.dedupe.release(mine)
            raise
        self.dedupe.confirm(mine)
        return fresh


def open_sink(log: Log, settings) -> IngestSink:  # type: ignore[no-untyped-def]
    if isinstance(log, SqliteLog):
        return SqliteIngestSink(log, settings.ingest.dedupe_window_s)
    from vendwatch.ingest.dedupe_pg import PostgresDedupe  # type: ignore[import-not-found]

    return LogIngestSink(log, PostgresDedupe(settings))
