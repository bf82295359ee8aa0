"""The embedded backbone: a partitioned log in one SQLite file (WAL, synchronous=FULL).

Each (topic, partition) is its own table whose rowid is the offset, so an append is
a pure B-tree append with no secondary index, and a read is a rowid range scan.
Consumer-group positions live in the same file. One process writes at a time (SQLite's
lock); readers in other processes see committed data, so `vendwatch run <role>`
processes can share a data directory.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain, groupby, repeat
from operator import itemgetter
from pathlib import Path
from typing import TypeVar

from vendwatch.bus.base import (
    AssignCallback,
    Consumer,
    JoinedRecords,
    Log,
    LogError,
    LogUnavailable,
    Record,
    TopicPartition,
    partition_for,
)

_T = TypeVar("_T")
_TOPIC_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _table(topic: str, partition: int) -> str:
    return f"log_{topic}_p{partition}"


# multi-row INSERTs: about twice the rows/s of executemany (one statement, and one
# AUTOINCREMENT bookkeeping write, per chunk instead of per row)
_ROWS_PER_INSERT = 8000 if sqlite3.sqlite_version_info >= (3, 32, 0) else 240  # 4 params per row


def _insert_rows(db: sqlite3.Connection, table: str, params: list[object]) -> None:
    step = _ROWS_PER_INSERT * 4
    for k in range(0, len(params), step):
        chunk = params[k : k + step]
        db.execute(f"INSERT INTO {table}(offset, ts, key, value) VALUES "
                   + ",".join(["(?,?,?,?)"] * (len(chunk) // 4)), chunk)


_key_of = itemgetter(0)
_value_of = itemgetter(1)


class SqliteLog(Log):
    # how long a failed write keeps /healthz unready when no write succeeds after it (a
    # collector out of the load balancer gets no traffic to prove it has recovered)
    WRITE_ERROR_REPORT_S = 30.0

    def __init__(self, path: str | Path, default_partitions: int = 4, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self.default_partitions = default_partitions
        self._busy_ms = busy_timeout_ms
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._appended = threading.Condition()
        self._topics: dict[str, int] = {}
        self._write_error: tuple[float, str] | None = None  # (monotonic time, cause) of the last failed write
        db = self._conn()
        db.execute("PRAGMA journal_mode=WAL")
        with self._write_lock:
            db.execute(
                "CREATE TABLE IF NOT EXISTS topics(name TEXT PRIMARY KEY, partitions INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS group_offsets(grp TEXT, topic TEXT, part INTEGER,"
                " next_offset INTEGER NOT NULL, PRIMARY KEY(grp, topic, part)) WITHOUT ROWID"
            )
        self._load_topics()

    # -- write health -----------------------------------------------------------
    def _write_failed(self, e: BaseException) -> None:
        self._write_error = (time.monotonic(), str(e))

    def _write_ok(self) -> None:
        self._write_error = None

    def write_problem(self) -> str | None:
        err = self._write_error
        if err is None or time.monotonic() - err[0] > self.WRITE_ERROR_REPORT_S:
            return None
        return f"log writes are failing: {err[1]}"

    # -- connections ------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000)
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            self._local.db = db
        return db

    def _load_topics(self) -> None:
        rows = self._conn().execute("SELECT name, partitions FROM topics").fetchall()
        self._topics = {name: n for name, n in rows}

    def _parts(self, topic: str) -> int:
        n = self._topics.get(topic)
        if n is None:
            self._load_topics()
            n = self._topics.get(topic)
            if n is None:
                self.create_topic(topic)
                n = self._topics[topic]
        return n

    # -- topics -----------------------------------------------------------------
    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        with self.transaction() as db:
            self._create_in(db, topic, partitions)

    def _create_in(self, db: sqlite3.Connection, topic: str, partitions: int | None = None) -> int:
        """Create a topic inside an open write transaction; returns its partition count."""
        if not _TOPIC_RE.match(topic):
            raise LogError(f"invalid topic name {topic!r}: use lowercase letters, digits and _")
        row = db.execute("SELECT partitions FROM topics WHERE name=?", (topic,)).fetchone()
        if row is not None:
            self._topics[topic] = row[0]
            return int(row[0])
        n = partitions or self.default_partitions
        db.execute("INSERT INTO topics VALUES (?, ?)", (topic, n))
        for p in range(n):
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_table(topic, p)}("
                "offset INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL,"
                " key TEXT NOT NULL, value BLOB NOT NULL)"
            )
        self._topics[topic] = n  # dropped again by _WriteTxn if the transaction rolls back
        return n

    def partitions(self, topic: str) -> int:
        return self._parts(topic)

    # -- writes -----------------------------------------------------------------
    def append(self, topic: str, items: Sequence[tuple[str, bytes]]) -> list[TopicPartition]:
        return self.append_many({topic: items}).get(topic, [])

    def append_many(self, batches: dict[str, Sequence[tuple[str, bytes]]]) -> dict[str, list[TopicPartition]]:
        """Append to several topics in one transaction (atomic, one fsync)."""
        with self.transaction() as db:
            return self.append_in(db, batches)

    def transaction(self) -> _WriteTxn:
        """A write transaction; other embedded components (ingest dedupe) may join it."""
        return _WriteTxn(self)

    def append_in(
        self, db: sqlite3.Connection, batches: dict[str, Sequence[tuple[str, bytes]]]
    ) -> dict[str, list[TopicPartition]]:
        now = int(time.time() * 1000)
        out: dict[str, list[TopicPartition]] = {}
        for topic, items in batches.items():
            if not items:
                continue
            n = self._topics.get(topic) or self._create_in(db, topic)
            # items come in runs of one key (a request is one device's batch): runs, not
            # items, are sorted into partitions, and each run's rows and positions are
            # built in C (a Python loop per item was ~0.15 µs per event more)
            runs: dict[int, list[tuple[str, list[bytes], int]]] = {}  # partition -> (key, values, first index)
            part_of: dict[str, int] = {}
            first = 0
            for key, run in groupby(items, key=_key_of):
                values = list(map(_value_of, run))
                p = part_of.get(key)
                if p is None:
                    p = part_of[key] = partition_for(key, n)
                runs.setdefault(p, []).append((key, values, first))
                first += len(values)
            result: list[TopicPartition] = [(0, 0)] * len(items)
            for p, part_runs in runs.items():
                t = _table(topic, p)
                (last,) = db.execute(f"SELECT coalesce(max(offset), (SELECT seq FROM sqlite_sequence WHERE name=?), 0) FROM {t}", (t,)).fetchone()
                off = last + 1
                params: list[object] = []  # (offset, ts, key, value) per row, flattened
                for key, values, i in part_runs:
                    offs = range(off, off + len(values))
                    params += chain.from_iterable(zip(offs, repeat(now), repeat(key), values))
                    result[i : i + len(values)] = zip(repeat(p), offs)
                    off += len(values)
                _insert_rows(db, t, params)
            out[topic] = result
        return out

    def _notify(self) -> None:
        with self._appended:
            self._appended.notify_all()

    def wait_for_append(self, timeout_s: float) -> None:
        with self._appended:
            self._appended.wait(timeout_s)

    # -- reads ------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        n = self._parts(topic)
        if not 0 <= partition < n:
            raise LogError(f"topic {topic} has no partition {partition}")
        rows = self._conn().execute(
            f"SELECT offset, ts, key, value FROM {_table(topic, partition)} WHERE offset >= ? ORDER BY offset LIMIT ?",
            (offset, max_records),
        ).fetchall()
        return [Record(topic, partition, o, k, v, ts) for o, ts, k, v in rows]

    def read_joined(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> JoinedRecords | None:
        """The records ``read`` returns, without a Python object per record: one string of
        comma-joined values, the list of their offsets and their oldest and newest append
        times (None when there are none)."""
        n = self._parts(topic)
        if not 0 <= partition < n:
            raise LogError(f"topic {topic} has no partition {partition}")
        # Offsets are consecutive unless records were deleted in between, so the first
        # read asks only for the lowest and highest (joining every offset as text and
        # splitting it again was a quarter of the read); a run with a gap is read again
        # with its offsets joined, where both aggregates see the rows in the same order.
        try:
            row = self._conn().execute(
                "SELECT count(*), CAST(group_concat(value, ',') AS BLOB), min(offset), max(offset), min(ts), max(ts)"
                f" FROM (SELECT offset, ts, value FROM {_table(topic, partition)} WHERE offset >= ?"
                " ORDER BY offset LIMIT ?)",
                (offset, max_records),
            ).fetchone()
            if row[0] and row[3] - row[2] + 1 != row[0]:
                row = self._conn().execute(
                    "SELECT count(*), CAST(group_concat(value, ',') AS BLOB), group_concat(offset, ','), min(ts), max(ts)"
                    f" FROM (SELECT offset, ts, value FROM {_table(topic, partition)} WHERE offset >= ?"
                    " ORDER BY offset LIMIT ?)",
                    (offset, max_records),
                ).fetchone()
                if not row[0]:
                    return None
                return JoinedRecords(topic, partition, offset, list(map(int, row[2].split(","))), row[1], row[3], row[4])
        except sqlite3.DataError:
            # the joined values would pass SQLite's string limit (large events): fewer at a time
            if max_records <= 1:
                raise
            return self.read_joined(topic, partition, offset, max_records // 2)
        if not row[0]:
            return None
        return JoinedRecords(topic, partition, offset, list(range(row[2], row[3] + 1)), row[1], row[4], row[5])

    def end_offsets(self, topic: str) -> dict[int, int]:
        db = self._conn()
        out = {}
        for p in range(self._parts(topic)):
            t = _table(topic, p)
            (last,) = db.execute(
                f"SELECT coalesce(max(offset), (SELECT seq FROM sqlite_sequence WHERE name=?), 0) FROM {t}", (t,)
            ).fetchone()
            out[p] = last + 1
        return out

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        (first,) = self._conn().execute(
            f"SELECT min(offset) FROM {_table(topic, partition)} WHERE ts >= ?", (timestamp_ms,)
        ).fetchone()
        return self.end_offsets(topic)[partition] if first is None else int(first)

    def begin_offsets(self, topic: str) -> dict[int, int]:
        db = self._conn()
        ends = self.end_offsets(topic)
        out = {}
        for p in range(self._parts(topic)):
            (first,) = db.execute(f"SELECT min(offset) FROM {_table(topic, p)}").fetchone()
            out[p] = ends[p] if first is None else first
        return out

    # -- groups -----------------------------------------------------------------
    def consumer(
        self,
        group: str,
        topics: Iterable[str],
        *,
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> Consumer:
        return SqliteConsumer(self, group, list(topics), on_assign, on_revoke)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        rows = self._conn().execute(
            "SELECT part, next_offset FROM group_offsets WHERE grp=? AND topic=?", (group, topic)
        ).fetchall()
        return dict(rows)

    def _commit_group(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO group_offsets VALUES (?,?,?,?) ON CONFLICT(grp, topic, part)"
                " DO UPDATE SET next_offset=excluded.next_offset",
                [(group, t, p, o) for (t, p), o in offsets.items()],
            )

    def enforce_retention(self, max_age_s: float, chunk: int = 50_000) -> int:
        """Drop records older than ``max_age_s`` from every topic, oldest first, in short transactions."""
        cutoff = int((time.time() - max_age_s) * 1000)
        self._load_topics()
        dropped = 0
        for topic, n in list(self._topics.items()):
            for p in range(n):
                t = _table(topic, p)
                # records are appended in time order, so the expired ones are a prefix: find
                # its end by scanning only the prefix; the newest record is always kept so
                # offsets never restart
                row = self._conn().execute(
                    f"SELECT coalesce((SELECT offset FROM {t} WHERE ts >= ? ORDER BY offset LIMIT 1),"
                    f" (SELECT max(offset) FROM {t}))", (cutoff,),
                ).fetchone()
                if row is None or row[0] is None:
                    continue
                keep_from = row[0]
                while True:
                    with self.transaction() as db:
                        cur = db.execute(
                            f"DELETE FROM {t} WHERE offset IN"
                            f" (SELECT offset FROM {t} WHERE offset < ? ORDER BY offset LIMIT ?)",
                            (keep_from, chunk),
                        )
                        removed = cur.rowcount
                    dropped += removed
                    if removed < chunk:
                        break
        return dropped

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _WriteTxn:
    def __init__(self, log: SqliteLog) -> None:
        self.log = log

    def __enter__(self) -> sqlite3.Connection:
        self.log._write_lock.acquire()
        db = self.log._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            self.log._write_lock.release()
            raise LogUnavailable(f"log busy: {e}") from e
        return db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        db = self.log._conn()
        try:
            if exc_type is None:
                try:
                    db.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    self._rollback(db)
                    self.log._write_failed(e)
                    raise LogUnavailable(f"log commit failed: {e}") from e
            else:
                self._rollback(db)
                if isinstance(exc, sqlite3.OperationalError):
                    self.log._write_failed(exc)
                    raise LogUnavailable(f"log write failed: {exc}") from exc
        finally:
            self.log._write_lock.release()
        if exc_type is None:
            self.log._write_ok()
            self.log._notify()

    def _rollback(self, db: sqlite3.Connection) -> None:
        self.log._topics.clear()  # topics created in this transaction are gone
        # SQLite rolls back by itself on some errors (a full disk, an I/O error): a second
        # ROLLBACK would raise "no transaction is active" and hide the real cause
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # gone either way; the original error matters
                db.execute("ROLLBACK")


class SqliteConsumer(Consumer):
    def __init__(
        self,
        log: SqliteLog,
        group: str,
        topics: list[str],
        on_assign: AssignCallback | None,
        on_revoke: AssignCallback | None,
    ) -> None:
        self.log = log
        self.group = group
        self.topics = topics
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._assigned: list[TopicPartition] = []
        self._pos: dict[TopicPartition, int] = {}
        self._rr = 0
        self._closed = False

    def _ensure_assigned(self) -> None:
        if self._assigned:
            return
        parts = [(t, p) for t in self.topics for p in range(self.log.partitions(t))]
        begins = {t: self.log.begin_offsets(t) for t in self.topics}
        for t in self.topics:
            committed = self.log.committed_offsets(self.group, t)
            for p in range(self.log.partitions(t)):
                self._pos[(t, p)] = max(committed.get(p, 0), begins[t][p])
        self._assigned = parts
        if self._on_assign:
            self._on_assign(list(parts))

    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        def read(tp: TopicPartition, pos: int, limit: int) -> tuple[list[Record], int, int] | None:
            recs = self.log.read(tp[0], tp[1], pos, limit)
            return (recs, len(recs), recs[-1].offset + 1) if recs else None

        return self._poll(read, max_records, timeout_s)

    def poll_joined(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[JoinedRecords]:
        """``poll``, with each partition's records read in bulk (``SqliteLog.read_joined``)."""

        def read(tp: TopicPartition, pos: int, limit: int) -> tuple[list[JoinedRecords], int, int] | None:
            j = self.log.read_joined(tp[0], tp[1], pos, limit)
            return ([j], len(j.offsets), max(j.offsets) + 1) if j is not None else None

        return self._poll(read, max_records, timeout_s)

    def _poll(self, read: Callable[[TopicPartition, int, int], tuple[list[_T], int, int] | None],
              max_records: int, timeout_s: float) -> list[_T]:
        """Up to ``max_records`` from the assigned partitions; ``read(tp, position, limit)``
        gives (items, records in them, next position) or None."""
        self._ensure_assigned()
        deadline = time.monotonic() + timeout_s
        while True:
            out: list[_T] = []
            got, n = 0, len(self._assigned)
            # round-robin the starting partition so no partition starves
            for k in range(n):
                tp = self._assigned[(self._rr + k) % n]
                if got >= max_records:
                    break
                res = read(tp, self._pos[tp], max_records - got)
                if res is not None:
                    items, count, self._pos[tp] = res
                    got += count
                    out.extend(items)
            self._rr += 1
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # in-process appends wake us at once; appends from other processes within 50 ms
            self.log.wait_for_append(min(remaining, 0.05))

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        self._ensure_assigned()
        self.log._commit_group(self.group, dict(self._pos) if offsets is None else offsets)

    def committed(self) -> dict[TopicPartition, int]:
        out = {}
        for t in self.topics:
            for p, o in self.log.committed_offsets(self.group, t).items():
                out[(t, p)] = o
        return out

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._ensure_assigned()
        if (topic, partition) not in self._pos:
            raise LogError(f"{topic}/{partition} is not assigned to this consumer")
        self._pos[(topic, partition)] = offset

    def position(self) -> dict[TopicPartition, int]:
        self._ensure_assigned()
        return dict(self._pos)

    def assignment(self) -> list[TopicPartition]:
        self._ensure_assigned()
        return list(self._assigned)

    def close(self) -> None:
        if not self._closed and self._assigned and self._on_revoke:
            self._on_revoke(list(self._assigned))
        self._closed = True
