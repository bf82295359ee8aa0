"""A log-consuming stage with exactly-once effects in the state store.

``CheckpointedStage`` stores its consumer positions in the ``checkpoints`` table in
the same transaction as its output, and seeks to them when partitions are assigned.
A crash anywhere therefore replays exactly the records whose effects were not
committed. Subclasses implement ``apply(tx, records)``.

Positions are stored one row per partition (``offsets:<group>:<topic>/<partition>``),
so replicas of a stage sharing partitions through a consumer group (Kafka) never
overwrite each other, and a partition's state moves with it on a rebalance. Each
write advances the row only from the value this owner last read (compare-and-set),
which fences a zombie owner: its batch rolls back instead of being applied twice.

A record the stage cannot process never stops it. When a batch fails, it is split in
halves until the failing record is alone; the rest is committed, and that record is
set aside in the stage's dead letters (``vendwatch.state.deadletters``) together with
the checkpoint that moves past it. A failure the record causes (bad data: decoding,
value, type, lookup, arithmetic errors, or a constraint of the database) sets it aside
at once; any other failure of a record alone is retried, and set aside after
``max_attempts``. Failures of the machinery (the log, the database, the disk) are never
blamed on a record: the stage stops and is restarted, and its health says so.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from vendwatch.bus.base import Consumer, LogError, Record, TopicPartition
from vendwatch.bus.batch import RecordBatch, first_ms, last_ms
from vendwatch.errors import TransactionConflict, Unavailable
from vendwatch.observe.lag import LagMeter
from vendwatch.observe.metrics import STAGE_DEAD_LETTERS, STAGE_FAILURES
from vendwatch.runtime import Context
from vendwatch.state.db import Tx
from vendwatch.state.deadletters import DeadLetters

log = logging.getLogger("vendwatch.stage")

# failures a record causes by its content: retrying cannot help
_RECORD_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, LookupError, ArithmeticError, AttributeError, RecursionError,
    msgspec.MsgspecError, sqlite3.DataError, sqlite3.IntegrityError,
)
# failures of the machinery: never blamed on a record
_INFRA_ERRORS: tuple[type[BaseException], ...] = (OSError, LogError, sqlite3.OperationalError)


def _is_infra(e: BaseException) -> bool:
    if isinstance(e, (*_INFRA_ERRORS, Unavailable)):
        return True
    # psycopg's connection-level errors, without importing psycopg where it is not installed
    return type(e).__name__ in ("OperationalError", "InterfaceError", "DatabaseUnavailable", "PoolTimeout")


def _is_record_error(e: BaseException) -> bool:
    return isinstance(e, _RECORD_ERRORS) or type(e).__name__ in ("DataError", "IntegrityError")


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _SetAsideAgain(Exception):
    """A redriven record was set aside again by ``apply``."""


@dataclass
class StageHealth:
    """What ``/healthz`` reports about one stage of this process."""

    stage: str
    consecutive_failures: int = 0
    last_error: str | None = None
    lag_records: int = 0
    lag_s: float = 0.0
    last_progress_at: float = 0.0
    crashes_in_row: int = 0  # restarts by the supervisor without a minute of uptime between them
    last_crash_at: float = 0.0

    def problem(self, max_failures: int, max_lag_s: float, crash_window_s: float = 120.0) -> str | None:
        if self.consecutive_failures >= max_failures:
            return f"failed {self.consecutive_failures} times in a row: {self.last_error}"
        if self.crashes_in_row >= max_failures and time.time() - self.last_crash_at < crash_window_s:
            return f"crashed {self.crashes_in_row} times in a row: {self.last_error}"
        if self.lag_s > max_lag_s:
            return f"{self.lag_s:.0f}s behind the log ({self.lag_records} records)"
        return None


_HEALTH_LOCK = threading.Lock()


def health(ctx: Context, stage: str) -> StageHealth:
    """The health record of ``stage`` in this process (created on first use)."""
    with _HEALTH_LOCK:
        reg: dict[str, StageHealth] = ctx.extras.setdefault("stage_health", {})
        h = reg.get(stage)
        if h is None:
            h = reg[stage] = StageHealth(stage, last_progress_at=time.time())
        return h


def stage_problems(ctx: Context, max_failures: int = 3, max_lag_s: float = 300.0) -> dict[str, str]:
    """Stages of this process and of its role processes that are stuck (failing again and
    again, crashing) or far behind."""
    with _HEALTH_LOCK:
        items = list(ctx.extras.get("stage_health", {}).values())
    out = {h.stage: p for h in items if (p := h.problem(max_failures, max_lag_s)) is not None}
    procs = ctx.extras.get("role_processes")  # stages in child processes (vendwatch.procs)
    if procs is not None:
        out.update(procs.problems(max_failures, max_lag_s))
    return out


def set_aside(ctx: Context, stage: str, record: Record, reason: str) -> None:
    """Put ``record`` in ``stage``'s dead letters in a transaction of its own.

    For stages that checkpoint on their own schedule (the detector): a replay after a
    crash finds the row already there."""
    with ctx.state.db.transaction() as tx:
        new = DeadLetters(ctx.state.db).put(tx, stage, record, reason)
    log.error("%s: record %s/%s@%s set aside as a dead letter: %s", stage, record.topic, record.partition,
              record.offset, reason)
    if new:
        STAGE_DEAD_LETTERS.labels(stage=stage).inc()


class StaleAssignment(Exception):
    """A partition's checkpoint was advanced by another owner; this batch is void."""

    def __init__(self, tp: TopicPartition) -> None:
        super().__init__(f"{tp[0]}/{tp[1]}")
        self.tp = tp


class CheckpointedStage(ABC):
    name: str = "stage"
    topics: tuple[str, ...] = ()
    batch_size: int = 2000
    poll_timeout_s: float = 0.2
    max_attempts: int = 3  # a record failing alone this often (unclassified error) is set aside
    redrive_every_s: float = 5.0
    hop: str | None = None  # the pipeline point this stage's work reaches (observe.metrics.POINTS)
    # read each poll in bulk (``Consumer.poll_joined``): ``apply`` then gets a
    # ``RecordBatch``, which it may decode in one call per partition (``RecordBatch.decode``)
    bulk_read: bool = False
    # the consumer group's position is informational (lag views; the truth is the
    # checkpoint), so it is written at most this often: each write is a durable
    # transaction on the log, the log's writer lock and an fsync
    group_commit_every_s: float = 1.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._consumer: Consumer | None = None
        self.positions: dict[TopicPartition, int] = {}
        self._saved: dict[TopicPartition, int] = {}  # checkpoint values as last read or written
        self._lag_due = 0.0
        self._redrive_due = 0.0
        self._group_due = 0.0
        self._group_behind = False  # records processed since the last group commit
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._new_dead = 0  # dead letters written by the open transaction
        self._aside: list[str] = []  # reasons of records set aside by the open transaction
        self.dead_letters = DeadLetters(ctx.state.db)
        self.health = health(ctx, self.name)
        self.lag = LagMeter(self.name)

    @property
    def group(self) -> str:
        return f"vendwatch-{self.name}"

    @property
    def checkpoint_name(self) -> str:
        return f"offsets:{self.group}"

    def _partition_checkpoint(self, tp: TopicPartition) -> str:
        # one row per partition: replicas owning different partitions never overwrite
        # each other's positions
        return f"{self.checkpoint_name}:{tp[0]}/{tp[1]}"

    def _load_positions(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in parts:
            raw = self.ctx.state.load_checkpoint(self._partition_checkpoint(tp))
            if raw:
                out[tp] = int(raw)
        return out

    def _on_assign(self, parts: list[TopicPartition]) -> None:
        saved = self._load_positions(parts)
        for tp in parts:
            self._saved.pop(tp, None)
            if tp in saved:
                assert self._consumer is not None
                self._consumer.seek(tp[0], tp[1], saved[tp])
                self.positions[tp] = self._saved[tp] = saved[tp]
        self._unread_from_start([tp for tp in parts if tp not in saved])
        self.on_assign(parts)

    def _unread_from_start(self, parts: list[TopicPartition]) -> None:
        """A partition without a checkpoint counts as lagging from the log's beginning
        (its records are unread), so the lag gauges see it too."""
        begins: dict[str, dict[int, int]] = {}
        for topic, part in parts:
            try:
                if topic not in begins:
                    begins[topic] = self.ctx.log.begin_offsets(topic)
            except LogError:
                return
            self.positions.setdefault((topic, part), begins[topic].get(part, 0))

    def _on_revoke(self, parts: list[TopicPartition]) -> None:
        self.on_revoke(parts)
        for tp in parts:
            self.positions.pop(tp, None)
            self._saved.pop(tp, None)

    def on_assign(self, parts: list[TopicPartition]) -> None:  # noqa: B027 - optional hook
        """Hook: load per-partition state."""

    def on_revoke(self, parts: list[TopicPartition]) -> None:  # noqa: B027 - optional hook
        """Hook: drop per-partition state."""

    @abstractmethod
    def apply(self, tx: Tx, records: Sequence[Record]) -> None:
        """Apply records' effects inside ``tx`` (committed together with the positions).

        ``records`` is a list, or with ``bulk_read`` a ``RecordBatch`` of a whole poll
        (the per-record paths, failure isolation and redrive, always pass lists)."""

    def committed(self, applied: bool) -> None:  # noqa: B027 - optional hook
        """Hook: a transaction of this stage committed; ``applied``: ``apply`` ran in it
        (False for a record set aside alone). For effects outside the store (metrics) that
        must follow exactly what was committed, also when a batch is isolated."""

    def dead_letter(self, tx: Tx, record: Record, reason: str) -> None:
        """Set ``record`` aside (inside ``apply``'s transaction, so with the checkpoint)."""
        if self.dead_letters.put(tx, self.name, record, reason):
            self._new_dead += 1
        self._aside.append(reason)
        log.error("%s: record %s/%s@%s set aside as a dead letter: %s", self.name, record.topic, record.partition,
                  record.offset, reason)

    def process(self, records: Sequence[Record]) -> None:
        """Apply ``records`` and advance the checkpoints; a record that cannot be processed
        is set aside, the others are applied (see the module docstring)."""
        try:
            try:
                self._commit_retrying_conflicts(records)
            except StaleAssignment:
                raise
            except Exception as e:
                if _is_infra(e):
                    raise
                self._isolate(list(records), e)  # record by record from here
        except StaleAssignment:
            raise  # a rebalance, not a failure
        except BaseException as e:
            self._failed(e, records)
            raise
        self._progressed(records)

    #: a transaction rolled back for a deadlock or serialization conflict with another
    #: replica is run again this many times (after 10, 20, 40 … ms) before the stage gives up
    #: and the supervisor restarts it (which, on Kafka, would cost a consumer-group rebalance)
    CONFLICT_RETRIES = 8

    def _commit_retrying_conflicts(self, records: Sequence[Record]) -> None:
        for attempt in range(self.CONFLICT_RETRIES + 1):
            try:
                self._commit(records)
                return
            except TransactionConflict as e:
                if attempt == self.CONFLICT_RETRIES:
                    raise
                delay = min(0.01 * 2 ** attempt, 1.0) * random.uniform(0.5, 1.5)  # replicas do not retry in step
                log.info("%s: %s; running it again in %.0f ms", self.name, e, delay * 1000)
                time.sleep(delay)

    def _commit(self, records: Sequence[Record], dead: tuple[Record, str] | None = None) -> None:
        touched: dict[TopicPartition, int] = {}
        if isinstance(records, RecordBatch):
            touched = records.next_offsets()
        else:
            for r in records:
                touched[(r.topic, r.partition)] = r.offset + 1
        self._new_dead = 0
        self._aside = []
        try:
            with self.ctx.state.db.transaction() as tx:
                if dead is not None:
                    rec, reason = dead
                    touched[(rec.topic, rec.partition)] = rec.offset + 1
                    self.dead_letter(tx, rec, reason)
                else:
                    self.apply(tx, records)
                for tp, pos in touched.items():
                    self._save_position(tx, tp, pos)
        except BaseException:
            self._new_dead = 0
            raise
        if self._new_dead:
            STAGE_DEAD_LETTERS.labels(stage=self.name).inc(self._new_dead)
        self.committed(dead is None)
        if self._attempts:  # records that failed before and went through now
            done = ([(j.topic, j.partition, o) for j in records.runs for o in j.offsets]
                    if isinstance(records, RecordBatch) else [(r.topic, r.partition, r.offset) for r in records])
            for key in done:
                self._attempts.pop(key, None)
        self.positions.update(touched)
        self._saved.update(touched)
        self.lag.processed(records, self.hop)

    def _isolate(self, records: list[Record], error: Exception) -> None:
        """Commit what can be committed of a failed batch; set aside the record that fails alone."""
        if len(records) == 1:
            r = records[0]
            key = (r.topic, r.partition, r.offset)
            attempts = self._attempts.get(key, 0) + 1
            if not _is_record_error(error) and attempts < self.max_attempts:
                self._attempts[key] = attempts
                raise error
            self._attempts.pop(key, None)
            self._commit([], dead=(r, _reason(error)))
            return
        mid = len(records) // 2
        for half in (records[:mid], records[mid:]):
            try:
                self._commit(half)
            except StaleAssignment:
                raise
            except Exception as e:
                if _is_infra(e):
                    raise
                self._isolate(half, e)

    def _failed(self, e: BaseException, records: Sequence[Record]) -> None:
        h = self.health
        h.consecutive_failures += 1
        h.last_error = _reason(e)
        STAGE_FAILURES.labels(stage=self.name).set(h.consecutive_failures)
        if records:
            self._set_lag_s(time.time() - first_ms(records) / 1000)

    def _progressed(self, records: Sequence[Record]) -> None:
        h = self.health
        h.consecutive_failures = 0
        h.last_error = None
        h.last_progress_at = time.time()
        STAGE_FAILURES.labels(stage=self.name).set(0)
        if records:
            self._set_lag_s(h.last_progress_at - last_ms(records) / 1000)

    def _set_lag_s(self, lag_s: float) -> None:
        # health only: the vendwatch_stage_lag_* gauges are the LagMeter's (one writer)
        self.health.lag_s = max(0.0, lag_s)

    def redrive(self) -> int:
        """Apply this stage's dead letters an operator marked for redrive; returns how many
        were applied (one that fails again stays a dead letter, with the new reason)."""
        done = 0
        for dl_id, rec in self.dead_letters.due(self.name):
            self._aside = []
            try:
                with self.ctx.state.db.transaction() as tx:
                    self.apply(tx, [rec])
                    if self._aside:  # apply set it aside again itself
                        raise _SetAsideAgain(self._aside[-1])
                    self.dead_letters.done(tx, dl_id)
            except Exception as e:
                if _is_infra(e):
                    raise
                reason = str(e) if isinstance(e, _SetAsideAgain) else _reason(e)
                self.dead_letters.failed_again(dl_id, reason)
                log.error("%s: dead letter %s failed again: %s", self.name, dl_id, reason)
                continue
            self.committed(True)
            log.info("%s: dead letter %s redriven", self.name, dl_id)
            done += 1
        return done

    def _maybe_redrive(self) -> None:
        now = time.monotonic()
        if now >= self._redrive_due:
            self._redrive_due = now + self.redrive_every_s
            self.redrive()

    def _save_position(self, tx: Tx, tp: TopicPartition, pos: int) -> None:
        """Advance a partition's checkpoint only from the value this owner last saw.

        A zombie (an owner the group already replaced, e.g. after a long pause) finds
        the row moved on and its whole batch rolls back (``StaleAssignment``)."""
        name, new, now = self._partition_checkpoint(tp), str(pos).encode(), time.time()
        prev = self._saved.get(tp)
        if prev is None:
            n = tx.execute("INSERT INTO checkpoints VALUES (?,?,?) ON CONFLICT(name) DO NOTHING", (name, new, now))
        else:
            n = tx.execute("UPDATE checkpoints SET data=?, updated_at=? WHERE name=? AND data=?",
                           (new, now, name, str(prev).encode()))
        if n != 1:
            raise StaleAssignment(tp)

    def _report_lag(self, every_s: float = 15.0) -> None:
        """Lag in records and seconds for the partitions this replica owns (``observe.lag``;
        throttled: on Kafka each end-offset lookup is a broker round trip)."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + every_s
        try:
            owned = set(self._consumer.assignment()) if self._consumer is not None else set(self.positions)
            ends: dict[str, dict[int, int]] = {}
            positions: list[tuple[TopicPartition, int]] = []
            for topic in self.topics:
                mine = [tp for tp in owned if tp[0] == topic]
                if not mine:
                    continue
                ends[topic] = self.ctx.log.end_offsets(topic)
                # a partition never checkpointed is behind by all the log retains of it
                begins = self.ctx.log.begin_offsets(topic) if any(tp not in self.positions for tp in mine) else {}
                positions += [(tp, self.positions.get(tp, begins.get(tp[1], 0))) for tp in mine]
            self.lag.measure(ends, positions)
            self.health.lag_records = self.lag.records
            if self.lag.records == 0:
                self._set_lag_s(0.0)
        except LogError as e:
            log.debug("%s: lag not measured: %s", self.name, e)

    def idle(self) -> None:  # noqa: B027 - optional hook
        """Hook called when a poll returns nothing (timers)."""

    def poll(self, c: Consumer, timeout_s: float) -> Sequence[Record]:
        """The next records to process (a ``RecordBatch`` with ``bulk_read``)."""
        if self.bulk_read:
            runs = c.poll_joined(self.batch_size, timeout_s)
            return RecordBatch(self.ctx.log, runs) if runs else []
        return c.poll(self.batch_size, timeout_s)

    def commit_group(self, c: Consumer) -> None:
        """Commit the consumer group's positions when records were processed since the last
        commit, at most every ``group_commit_every_s`` (call it every round, idle or not)."""
        now = time.monotonic()
        if not self._group_behind or now < self._group_due:
            return
        self._group_due = now + self.group_commit_every_s
        self._group_behind = False
        try:
            c.commit()
        except LogError as e:
            log.info("%s: group commit skipped (%s)", self.name, e)

    def run(self, stop: threading.Event) -> None:
        self._consumer = c = self.ctx.log.consumer(
            self.group, self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not stop.is_set():
                recs = self.poll(c, self.poll_timeout_s)
                if recs:
                    try:
                        self.process(recs)
                    except StaleAssignment as e:
                        # another owner advanced this partition: reload it as if newly assigned
                        log.warning("%s: checkpoint of %s/%s moved on elsewhere; reloading", self.name, *e.tp)
                        self._on_revoke([e.tp])
                        self._on_assign([e.tp])
                        continue
                    self._group_behind = True
                else:
                    self.idle()
                    self._maybe_redrive()
                self.commit_group(c)
                self._report_lag()
        except BaseException:
            self._lag_due = 0.0  # a stuck stage's lag must show at once, not after the throttle
            self._report_lag()
            raise
        finally:
            c.close()
