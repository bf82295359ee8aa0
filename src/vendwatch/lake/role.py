"""The lake-writer role: appends the ``events`` and ``rejected`` topics to the raw zone.

Records are buffered and committed in batches (by count, bytes or age) so Iceberg
gets healthy files rather than one file per event. Exactly once: each commit stores
the log offsets it covers in its snapshot summary; on (re)assignment the consumer
seeks to those offsets, never to the group's own position, which is only a lag gauge.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from pyiceberg.table import Table

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import Consumer, Record, TopicPartition
from vendwatch.lake import metrics
from vendwatch.lake.catalog import ensure_table, open_catalog
from vendwatch.lake.writer import (
    EventColumns,
    OffsetConflict,
    RejectedColumns,
    commit_batch,
    committed_offsets,
)
from vendwatch.runtime import Context

log = logging.getLogger("vendwatch.lake.role")


class _TopicSink:
    """One topic -> one raw table: buffer, positions, commit."""

    def __init__(self, topic: str, table: Table, new_buffer: Callable[[], EventColumns | RejectedColumns]) -> None:
        self.topic = topic
        self.table = table
        self.new_buffer = new_buffer
        self.buf = new_buffer()
        self.start: dict[TopicPartition, int] = {}  # committed position per partition
        self.pos: dict[TopicPartition, int] = {}  # position after the last buffered record
        self.first_at: float | None = None

    def pending(self) -> bool:
        return self.pos != self.start


class LakeWriter:
    name = "lake-writer"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.settings.lake
        self.writer_id = f"{socket.gethostname()}:{os.getpid()}"
        self._consumer: Consumer | None = None
        self.sinks: dict[str, _TopicSink] = {}

    def _open(self) -> None:
        cat = open_catalog(self.ctx.settings)
        self.sinks = {
            EVENTS: _TopicSink(EVENTS, ensure_table(cat, "raw.events"), EventColumns),
            REJECTED: _TopicSink(REJECTED, ensure_table(cat, "raw.rejected"), RejectedColumns),
        }

    def _on_assign(self, parts: list[TopicPartition]) -> None:
        assert self._consumer is not None
        for topic, sink in self.sinks.items():
            sink.table.refresh()
            stored = committed_offsets(sink.table)
            begins = self.ctx.log.begin_offsets(topic)
            for tp in parts:
                if tp[0] != topic:
                    continue
                # never trust the group position: it may be ahead of or behind the lake
                off = stored.get(tp, begins.get(tp[1], 0))
                self._consumer.seek(tp[0], tp[1], off)
                sink.start[tp] = sink.pos[tp] = off
        log.info("lake writer assigned %s", ", ".join(f"{t}/{p}" for t, p in parts))

    def _on_revoke(self, parts: list[TopicPartition]) -> None:
        # flush what we hold for these partitions before another member takes them
        self.flush_all(force=True)
        for sink in self.sinks.values():
            for tp in parts:
                sink.start.pop(tp, None)
                sink.pos.pop(tp, None)

    def add(self, records: list[Record]) -> None:
        now = time.monotonic()
        for r in records:
            sink = self.sinks.get(r.topic)
            if sink is None:
                continue
            sink.buf.add(r)
            sink.pos[(r.topic, r.partition)] = r.offset + 1
            if sink.first_at is None:
                sink.first_at = now

    def _due(self, sink: _TopicSink) -> bool:
        if not sink.pending():
            return False
        return (
            len(sink.buf) >= self.cfg.batch_max_events
            or sink.buf.nbytes >= self.cfg.batch_max_bytes
            or (sink.first_at is not None and time.monotonic() - sink.first_at >= self.cfg.batch_max_wait_s)
        )

    def flush_all(self, force: bool = False) -> None:
        for sink in self.sinks.values():
            if sink.pending() and (force or self._due(sink)):
                self.flush(sink)

    def flush(self, sink: _TopicSink) -> None:
        """Commit the sink's buffer with its offsets (a batch of only replayed copies commits offsets alone)."""
        n = len(sink.buf)
        started = time.perf_counter()
        data = sink.buf.to_arrow()
        try:
            commit_batch(sink.table, data, dict(sink.start), dict(sink.pos), self.writer_id)
        except OffsetConflict as e:
            log.warning("lake writer lost ownership, re-reading: %s", e)
            self._reset(sink)
            return
        metrics.RAW_ROWS.labels(sink.table.name()[-1]).inc(n)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        log.debug("lake commit %s rows=%d", ".".join(sink.table.name()), n)
        sink.start = dict(sink.pos)
        sink.buf = sink.new_buffer()
        sink.first_at = None

    def _reset(self, sink: _TopicSink) -> None:
        assert self._consumer is not None
        sink.buf = sink.new_buffer()
        sink.first_at = None
        sink.table.refresh()
        stored = committed_offsets(sink.table)
        for tp in list(sink.pos):
            off = stored.get(tp, sink.start[tp])
            self._consumer.seek(tp[0], tp[1], off)
            sink.start[tp] = sink.pos[tp] = off

    def run(self, stop: threading.Event) -> None:
        self._open()
        for t in (EVENTS, REJECTED):
            self.ctx.log.create_topic(t)
        self._consumer = c = self.ctx.log.consumer(
            "vendwatch-lake-writer", [EVENTS, REJECTED], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not stop.is_set():
                recs = c.poll(10_000, 0.5)
                if recs:
                    self.add(recs)
                self.flush_all()
                if not recs:
                    c.commit({tp: o for s in self.sinks.values() for tp, o in s.start.items()})
            self.flush_all(force=True)  # graceful stop: nothing left in memory
        finally:
            c.close()


def build(ctx: Context) -> LakeWriter:
    """The lake-writer role (``vendwatch run lake-writer``; part of ``vendwatch serve``)."""
    return LakeWriter(ctx)
