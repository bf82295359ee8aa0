"""Durable, deduplicated commit of accepted events (and quarantined ones) to the log.

``SqliteIngestSink`` (embedded) pays no write for deduplication: the log is the record
of what was accepted, and an in-memory ``SeenIndex`` is derived from it. Every commit
runs inside the log's write transaction (SQLite's single-writer lock) and first indexes
whatever other processes appended since the last look, then checks the batch against
the index, then appends. "Seen" and "stored" therefore cannot disagree: after a crash
the index is rebuilt from the log's tail (the dedupe window), and a rolled-back append
leaves nothing in the index. A random-key B-tree insert per event would cost 4-5x the
append itself (docs/benchmarks.md); this design costs one hash and one dict probe.

The price is memory (about 100 bytes per event id inside the window, reported by
``vendwatch_ingest_dedupe_keys``) and a start-up scan of the window. The dedupe
window cannot be longer than the log's retention (checked in config).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import Log, LogUnavailable, partition_for
from vendwatch.bus.sqlite import SqliteLog, _table
from vendwatch.ingest import metrics as m
from vendwatch.ingest.dedupe import SeenIndex, dedupe_key

if TYPE_CHECKING:
    from vendwatch.config import Settings

__all__ = ["Abandoned", "ClaimState", "DedupeStore", "IngestSink", "LogIngestSink", "Pending", "SqliteIngestSink", "dedupe_key", "open_sink"]

log = logging.getLogger("vendwatch.ingest")


class Pending(msgspec.Struct, gc=False):
    """An accepted event on its way to the log. Not tracked by the garbage collector
    (it holds only strings and bytes): a request's events wait for their group commit,
    and a tracked object per event made the collector's full collections frequent."""

    device_id: str
    event_id: str
    value: bytes  # StoredEvent JSON


class IngestSink(ABC):
    @abstractmethod
    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Store new events durably; returns, per accepted event, True if stored, False if a duplicate."""

    def warm(self) -> None:  # noqa: B027 - optional hook
        """Prepare before the first request (load indexes)."""

    def maintain(self) -> None:  # noqa: B027 - optional hook
        """Periodic housekeeping (expire old dedupe keys)."""


class _EventIdOnly(msgspec.Struct):
    event_id: str


_event_id_decoder = msgspec.json.Decoder(_EventIdOnly)


class SqliteIngestSink(IngestSink):
    """Events + quarantine in one SQLite transaction, deduplicated by an index derived from the log."""

    scan_chunk = 20_000

    def __init__(self, log: SqliteLog, window_s: float = 7 * 86_400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.clock = clock
        self.index = SeenIndex(window_s)
        self._next: dict[int, int] | None = None  # events partition -> next offset not yet indexed
        self._looked: tuple[sqlite3.Connection, int] | None = None  # connection and its data_version at the last scan
        self._last_expire = 0.0

    def warm(self) -> None:
        """Index the log's tail (the dedupe window) before serving; reads only, no write lock."""
        t0 = time.perf_counter()
        n = self._catch_up(self.log._conn())
        log.info("dedupe index: %d event ids from the log in %.2fs", n, time.perf_counter() - t0)

    def maintain(self) -> None:
        self.index.expire(self.clock())

    def _catch_up(self, db: sqlite3.Connection) -> int:
        """Index records appended since the last look (by this or another process)."""
        # SQLite's data_version changes when another connection commits to the file, never
        # for this connection's own commits (which move ``_next`` themselves): unchanged
        # since the last look on this connection, there is nothing new to index. Under a
        # steady load with no other writer that saves a query per partition per commit.
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if self._looked is not None and self._looked[0] is db and self._looked[1] == version:
            return 0
        added = self._scan(db)
        self._looked = (db, version)
        return added

    def _scan(self, db: sqlite3.Connection) -> int:
        parts = self.log.partitions(EVENTS)
        if self._next is None:
            self._next = self.log.begin_offsets(EVENTS)
        cutoff_ms = int((self.clock() - self.index.window_s) * 1000)
        added = 0
        for p in range(parts):
            t = _table(EVENTS, p)
            while True:
                rows = db.execute(
                    f"SELECT offset, ts, key, value FROM {t} WHERE offset >= ? ORDER BY offset LIMIT ?",
                    (self._next.get(p, 0), self.scan_chunk),
                ).fetchall()
                for off, ts, key, value in rows:
                    if ts < cutoff_ms:
                        continue
                    try:
                        event_id = _event_id_decoder.decode(value).event_id
                    except (msgspec.DecodeError, UnicodeDecodeError):
                        # not written by a collector; it cannot be a duplicate of anything
                        log.warning("events/%d@%d is not a stored event; not indexed", p, off)
                        continue
                    self.index.add(dedupe_key(key, event_id), ts / 1000)
                    added += 1
                if rows:
                    self._next[p] = rows[-1][0] + 1
                if len(rows) < self.scan_chunk:
                    break
        return added

    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        keys = [dedupe_key(p.device_id, p.event_id) for p in accepted]
        fresh: list[bool] = []
        new_keys: list[bytes] = []
        with self.log.transaction() as db:
            self._catch_up(db)
            seen = self.index.membership()
            in_commit: set[bytes] = set(keys)  # the same event twice in one group commit
            if len(in_commit) == len(keys) and seen.keys().isdisjoint(in_commit):
                # the usual commit, every event new: set operations in C instead of a loop per event
                fresh, new_keys = [True] * len(keys), keys
                items = [(p.device_id, p.value) for p in accepted]
            else:
                in_commit.clear()
                items = []
                for p, k in zip(accepted, keys, strict=True):
                    if k in seen or k in in_commit:
                        fresh.append(False)
                        continue
                    in_commit.add(k)
                    fresh.append(True)
                    new_keys.append(k)
                    items.append((p.device_id, p.value))
            positions = self.log.append_in(db, {EVENTS: items, REJECTED: list(rejected)})
        # committed: only now may the index claim these keys
        now = self.clock()
        self.index.add_many(new_keys, now)
        assert self._next is not None
        for part, off in positions.get(EVENTS, []):
            if off >= self._next.get(part, 0):
                self._next[part] = off + 1
        if now - self._last_expire > 60:
            self._last_expire = now
            self.index.expire(now)
        return fresh


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A claim taken over from an attempt that never confirmed (its collector died, or
    its append failed): the attempt's records may be in the log, appended between
    ``since`` (the first attempt's claim) and ``until`` (the last attempt's lease end)."""

    since: float
    until: float


#: per key: True (claimed, new), False (already stored), None (being stored elsewhere), or
#: Abandoned (claimed, but look in the log first)
ClaimState = bool | None | Abandoned


class DedupeStore(ABC):
    """A shared 'seen event ids' index for scale-out collectors (e.g. PostgreSQL)."""

    @abstractmethod
    def claim(self, keys: Sequence[bytes]) -> list[ClaimState]:
        """Claim keys before appending them: True for a key not seen before (now claimed by
        this caller), False for one already stored, None for one another request is storing
        right now (answer "retry later"), ``Abandoned`` for one now claimed by this caller
        whose earlier attempt may or may not have reached the log."""

    def confirm(self, keys: Sequence[bytes]) -> None:  # noqa: B027 - optional
        """The claimed keys' events are durable in the log."""

    def release(self, keys: Sequence[bytes]) -> None:  # noqa: B027 - optional
        """The append of the claimed keys failed (some may be stored all the same): end the
        claims so a retry can take them over."""


class LogIngestSink(IngestSink):
    """Any log plus a separate dedupe index: claim, append, confirm.

    If the append fails, the claims are released; if the process dies before confirming,
    they expire. Either way the events may or may not be in the log, so the next claim
    of such a key is ``Abandoned`` and the sink reads the device's partition over the
    abandoned attempt's time span (``find_stored``) before appending: the retry is
    neither lost nor stored twice. That read is the price of a crash or a failed append
    only; the normal path is claim, append, confirm.
    """

    #: how far record timestamps may be from the claiming collector's clock (a broker
    #: using LogAppendTime, clocks of different hosts)
    clock_slack_s = 30.0

    def __init__(self, log: Log, dedupe: DedupeStore) -> None:
        self.log = log
        self.dedupe = dedupe

    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool | None]:  # type: ignore[override]
        keys = [dedupe_key(p.device_id, p.event_id) for p in accepted]
        claims = self.dedupe.claim(keys)
        mine = [k for k, c in zip(keys, claims, strict=True) if c]  # True or Abandoned
        try:
            maybe = [(p, c) for p, c in zip(accepted, claims, strict=True) if isinstance(c, Abandoned)]
            found = self.find_stored(maybe) if maybe else set()
            fresh: list[bool | None] = []
            for p, c in zip(accepted, claims, strict=True):
                fresh.append((p.device_id, p.event_id) not in found if isinstance(c, Abandoned) else c)
            if found:  # already in the log: confirm those claims, append the rest
                taken = set(mine)
                self.dedupe.confirm([k for k, f in zip(keys, fresh, strict=True) if f is False and k in taken])
                mine = [k for k, f in zip(keys, fresh, strict=True) if f]
            items = [(p.device_id, p.value) for p, f in zip(accepted, fresh, strict=True) if f]
            self.log.append_many({EVENTS: items, REJECTED: list(rejected)})
        except Exception:
            self.dedupe.release(mine)  # the retry takes them over and looks again
            raise
        self.dedupe.confirm(mine)
        return fresh

    def find_stored(self, wanted: Sequence[tuple[Pending, Abandoned]]) -> set[tuple[str, str]]:
        """Which of these (device, event id) pairs an abandoned attempt did append: reads
        each device's partition of the events topic over the attempts' time span."""
        n = self.log.partitions(EVENTS)
        spans: dict[int, tuple[float, float, set[tuple[str, str]]]] = {}
        for p, a in wanted:
            part = partition_for(p.device_id, n)
            lo, hi, want = spans.get(part, (a.since, a.until, set()))
            want.add((p.device_id, p.event_id))
            spans[part] = (min(lo, a.since), max(hi, a.until), want)
        found: set[tuple[str, str]] = set()
        read = 0
        for part, (lo, hi, want) in spans.items():
            off = self.log.offset_for_time(EVENTS, part, int((lo - self.clock_slack_s) * 1000))
            end = self.log.offset_for_time(EVENTS, part, int((hi + self.clock_slack_s) * 1000))
            while off < end and want:
                recs = self.log.read(EVENTS, part, off, min(5000, end - off))
                if not recs:
                    if self.log.begin_offsets(EVENTS).get(part, 0) >= end:
                        break  # the span is past the log's retention: nothing of it is left
                    # an event not read is not an event not stored: answer "retry later"
                    raise LogUnavailable(f"could not read {EVENTS}/{part} from offset {off} to look for"
                                         " the events of an abandoned claim")
                for r in recs:
                    if r.offset >= end:
                        break
                    read += 1
                    try:
                        pair = (r.key, _event_id_decoder.decode(r.value).event_id)
                    except (msgspec.DecodeError, UnicodeDecodeError):
                        continue  # not written by a collector
                    if pair in want:
                        want.discard(pair)
                        found.add(pair)
                off = recs[-1].offset + 1
        m.ABANDONED_CLAIMS.labels("found").inc(len(found))
        m.ABANDONED_CLAIMS.labels("not_found").inc(len(wanted) - len(found))
        m.ABANDONED_RECORDS_READ.inc(read)
        log.info("abandoned claims of %d events taken over: %d were in the log (%d records read), the rest is appended",
                 len(wanted), len(found), read)
        return found


def open_sink(log: Log, settings: Settings) -> IngestSink:
    """The sink for the configured log: embedded SQLite, or any log plus a shared dedupe store."""
    if isinstance(log, SqliteLog):
        return SqliteIngestSink(log, settings.ingest.dedupe_window_s)
    from vendwatch.ingest.dedupe_pg import PostgresDedupe  # type: ignore[import-not-found]

    return LogIngestSink(log, PostgresDedupe(settings))
