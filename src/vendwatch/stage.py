"""A log-consuming stage with exactly-once effects in the state store.

``CheckpointedStage`` stores its consumer positions in the ``checkpoints`` table in
the same transaction as its output, and seeks to them when partitions are assigned.
A crash anywhere therefore replays exactly the records whose effects were not
committed. Subclasses implement ``apply(tx, records)``.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

import msgspec

from vendwatch.bus.base import Consumer, Record, TopicPartition
from vendwatch.runtime import Context
from vendwatch.state.db import Tx

log = logging.getLogger("vendwatch.stage")


class CheckpointedStage(ABC):
    name: str = "stage"
    topics: tuple[str, ...] = ()
    batch_size: int = 2000
    poll_timeout_s: float = 0.2

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._consumer: Consumer | None = None
        self.positions: dict[TopicPartition, int] = {}

    @property
    def group(self) -> str:
        return f"vendwatch-{self.name}"

    @property
    def checkpoint_name(self) -> str:
        return f"offsets:{self.group}"

    def _load_positions(self) -> dict[TopicPartition, int]:
        raw = self.ctx.state.load_checkpoint(self.checkpoint_name)
        if not raw:
            return {}
        data: dict[str, int] = msgspec.json.decode(raw)
        out = {}
        for k, v in data.items():
            t, _, p = k.rpartition("/")
            out[(t, int(p))] = v
        return out

    def _on_assign(self, parts: list[TopicPartition]) -> None:
        saved = self._load_positions()
        for tp in parts:
            if tp in saved:
                assert self._consumer is not None
                self._consumer.seek(tp[0], tp[1], saved[tp])
                self.positions[tp] = saved[tp]
        self.on_assign(parts)

    def on_assign(self, parts: list[TopicPartition]) -> None:
        """Hook: load per-partition state."""

    def on_revoke(self, parts: list[TopicPartition]) -> None:
        """Hook: drop per-partition state."""

    @abstractmethod
    def apply(self, tx: Tx, records: list[Record]) -> None:
        """Apply records' effects inside ``tx`` (committed together with the positions)."""

    def process(self, records: list[Record]) -> None:
        for r in records:
            self.positions[(r.topic, r.partition)] = r.offset + 1
        enc = msgspec.json.encode({f"{t}/{p}": o for (t, p), o in self.positions.items()})
        with self.ctx.state.db.transaction() as tx:
            self.apply(tx, records)
            self.ctx.state.save_checkpoint(self.checkpoint_name, enc, tx=tx)

    def idle(self) -> None:
        """Hook called when a poll returns nothing (timers)."""

    def run(self, stop: threading.Event) -> None:
        self._consumer = c = self.ctx.log.consumer(
            self.group, self.topics, on_assign=self._on_assign, on_revoke=self.on_revoke
        )
        try:
            while not stop.is_set():
                recs = c.poll(self.batch_size, self.poll_timeout_s)
                if recs:
                    self.process(recs)
                    # the group position is informational (lag); the truth is the checkpoint
                    c.commit()
                else:
                    self.idle()
        finally:
            c.close()
