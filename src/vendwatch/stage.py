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
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod

from vendwatch.bus.base import Consumer, LogError, Record, TopicPartition
from vendwatch.observe.lag import LagMeter
from vendwatch.runtime import Context
from vendwatch.state.db import Tx

log = logging.getLogger("vendwatch.stage")


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
    hop: str | None = None  # the pipeline point this stage's work reaches (observe.metrics.POINTS)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._consumer: Consumer | None = None
        self.positions: dict[TopicPartition, int] = {}
        self._saved: dict[TopicPartition, int] = {}  # checkpoint values as last read or written
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
    def apply(self, tx: Tx, records: list[Record]) -> None:
        """Apply records' effects inside ``tx`` (committed together with the positions)."""

    def process(self, records: list[Record]) -> None:
        touched: dict[TopicPartition, int] = {}
        for r in records:
            touched[(r.topic, r.partition)] = r.offset + 1
        with self.ctx.state.db.transaction() as tx:
            self.apply(tx, records)
            for tp, pos in touched.items():
                self._save_position(tx, tp, pos)
        self.positions.update(touched)
        self._saved.update(touched)
        self.lag.processed(records, self.hop)

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

    def _report_lag(self) -> None:
        """Lag in records and seconds for the partitions this replica owns (observe.lag)."""
        self.lag.report(self.ctx.log, self.topics, self.positions)

    def idle(self) -> None:  # noqa: B027 - optional hook
        """Hook called when a poll returns nothing (timers)."""

    def run(self, stop: threading.Event) -> None:
        self._consumer = c = self.ctx.log.consumer(
            self.group, self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not stop.is_set():
                recs = c.poll(self.batch_size, self.poll_timeout_s)
                if recs:
                    try:
                        self.process(recs)
                    except StaleAssignment as e:
                        # another owner advanced this partition: reload it as if newly assigned
                        log.warning("%s: checkpoint of %s/%s moved on elsewhere; reloading", self.name, *e.tp)
                        self._on_revoke([e.tp])
                        self._on_assign([e.tp])
                        continue
                    # the group position is informational (lag); the truth is the checkpoint
                    try:
                        c.commit()
                    except LogError as e:
                        log.info("%s: group commit skipped (%s)", self.name, e)
                else:
                    self.idle()
                self._report_lag()
        finally:
            c.close()
