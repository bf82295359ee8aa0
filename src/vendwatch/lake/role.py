"""The lake-writer role: appends the ``events`` and ``rejected`` topics to the raw zone.

Records are buffered and committed in batches (by count, bytes or age) so Iceberg
gets healthy files rather than one file per event. Exactly once: each commit stores
the log offsets it covers in its snapshot summary; on (re)assignment the consumer
seeks to those offsets, never to the group's own position, which is only a lag gauge.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pyiceberg.table import Table

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.bus.base import Consumer, Record, TopicPartition
from vendwatch.bus.sqlite import JoinedRecords, SqliteConsumer
from vendwatch.lake import metrics
from vendwatch.lake.catalog import ensure_table, open_catalog
from vendwatch.lake.system_logs import SYSTEM_LOGS, SystemLogColumns
from vendwatch.lake.writer import (
    EventColumns,
    OffsetConflict,
    RejectedColumns,
    commit_batch,
    committed_offsets,
)
from vendwatch.observe.lag import LagMeter
from vendwatch.runtime import Context
from vendwatch.stage import set_aside

log = logging.getLogger("vendwatch.lake.role")


class _TopicSink:
    """One topic -> one raw table: buffer, positions, commit."""

    def __init__(self, topic: str, table: Table,
                 new_buffer: Callable[[], EventColumns | RejectedColumns | SystemLogColumns]) -> None:
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
        # commits run in a second thread so Parquet encoding (which releases the GIL)
        # overlaps with polling and decoding the next batch; one batch in flight at most
        self._jobs: queue.Queue[tuple[_TopicSink, Any, dict[TopicPartition, int], dict[TopicPartition, int]] | None] = queue.Queue(maxsize=1)
        self._failed: BaseException | None = None
        self._committer: threading.Thread | None = None
        self.lag = LagMeter(self.name)

    def _open(self) -> None:
        cat = open_catalog(self.ctx.settings)
        self.sinks = {
            EVENTS: _TopicSink(EVENTS, ensure_table(cat, "raw.events"),
                               lambda: EventColumns(lambda r, why: set_aside(self.ctx, self.name, r, why))),
            REJECTED: _TopicSink(REJECTED, ensure_table(cat, "raw.rejected"), RejectedColumns),
            SYSTEM_LOGS: _TopicSink(SYSTEM_LOGS, ensure_table(cat, "raw.system_logs"), SystemLogColumns),
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
        self.lag.processed(records)
        now = time.monotonic()
        by_topic: dict[str, list[Record]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        for topic, recs in by_topic.items():
            sink = self.sinks.get(topic)
            if sink is None:
                continue
            sink.buf.add_many(recs)
            sink.pos.update({(r.topic, r.partition): r.offset + 1 for r in recs})  # the last per partition wins
            if sink.first_at is None:
                sink.first_at = now

    def add_joined(self, runs: list[JoinedRecords]) -> None:
        """``add`` for records read in bulk from the embedded log (no object per record)."""
        now = time.monotonic()
        for j in runs:
            sink = self.sinks.get(j.topic)
            if sink is None:
                continue

            def records(j: JoinedRecords = j) -> list[Record]:
                # the same records again; never one past the run (retention may have removed
                # some in between, and the position below already covers only the run)
                last = max(j.offsets)
                return [r for r in self.ctx.log.read(j.topic, j.partition, j.offset, len(j.offsets))
                        if r.offset <= last]

            if isinstance(sink.buf, EventColumns):
                sink.buf.add_joined(j, records)
            else:  # quarantine records are few: the per-record path keeps their log metadata
                sink.buf.add_many(records())
            sink.pos[(j.topic, j.partition)] = max(j.offsets) + 1
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

    def _flush_burst(self) -> None:
        """The log is quiet: commit now, instead of ``batch_max_wait_s`` later, a buffer that
        holds ``batch_idle_min_events`` or filled at a rate that would reach that within
        ``batch_max_wait_s`` (the tail of a burst). A slower trickle keeps waiting, so a
        quiet fleet gets one file per ``batch_max_wait_s``, not one per poll."""
        least = self.cfg.batch_idle_min_events
        if least <= 0:
            return
        rate = least / self.cfg.batch_max_wait_s  # events/s that fill a worthwhile batch in time
        now = time.monotonic()
        for sink in self.sinks.values():
            if not sink.pending() or sink.first_at is None:
                continue
            n = len(sink.buf)
            if n >= least or n / max(now - sink.first_at, 1.0) >= rate:
                self.flush(sink)

    def flush_all(self, force: bool = False) -> None:
        for sink in self.sinks.values():
            if sink.pending() and (force or self._due(sink)):
                self.flush(sink)
        if force:
            self._jobs.join()  # everything handed over is committed (or failed)
        self._raise_if_failed()

    def flush(self, sink: _TopicSink) -> None:
        """Hand the sink's buffer and the offsets it covers to the committer thread."""
        self._raise_if_failed()
        self._jobs.put((sink, sink.buf, dict(sink.start), dict(sink.pos)))
        sink.start = dict(sink.pos)
        sink.buf = sink.new_buffer()
        sink.first_at = None

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            err, self._failed = self._failed, None
            # the supervisor restarts the role, which re-reads the offsets from the lake:
            # whatever was not committed is read again, nothing twice
            raise RuntimeError(f"lake commit failed: {err}") from err

    def _commit_loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._failed is not None:
                    continue  # after a failure nothing later may commit (offsets would skip)
                sink, buf, start, end = job
                started = time.perf_counter()
                try:
                    commit_batch(sink.table, buf.to_arrow(), start, end, self.writer_id)
                except OffsetConflict as e:
                    log.warning("lake writer lost ownership of a partition, re-reading: %s", e)
                    self._failed = e
                    continue
                except BaseException as e:
                    log.exception("lake commit failed")
                    self._failed = e
                    continue
                metrics.RAW_ROWS.labels(sink.table.name()[-1]).inc(len(buf))
                metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
            finally:
                self._jobs.task_done()

    def run(self, stop: threading.Event) -> None:
        self._open()
        for t in (EVENTS, REJECTED, SYSTEM_LOGS):
            self.ctx.log.create_topic(t)
        self._consumer = c = self.ctx.log.consumer(
            "vendwatch-lake-writer", [EVENTS, REJECTED, SYSTEM_LOGS], on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        self._failed = None
        self._committer = threading.Thread(target=self._commit_loop, name="vw-lake-commit", daemon=True)
        self._committer.start()
        try:
            # the embedded log can hand a poll over as one string per partition: the
            # per-record objects of poll() were most of this role's read cost
            bulk = isinstance(c, SqliteConsumer)
            while not stop.is_set():
                recs: list[Record] | list[JoinedRecords]
                if bulk:
                    recs = c.poll_joined(10_000, 0.5)  # type: ignore[union-attr]
                    if recs:
                        self.add_joined(recs)
                else:
                    recs = c.poll(10_000, 0.5)
                    if recs:
                        self.add(recs)
                self.flush_all()
                # behind = not yet handed to a lake commit (buffered records count as lag)
                self.lag.report(self.ctx.log, self.sinks, {tp: o for s in self.sinks.values() for tp, o in s.start.items()})
                if not recs:
                    self._flush_burst()
                    self._jobs.join()
                    c.commit({tp: o for s in self.sinks.values() for tp, o in s.start.items()})
            self.flush_all(force=True)  # graceful stop: nothing left in memory
        finally:
            self._jobs.put(None)
            self._committer.join()
            c.close()


def build(ctx: Context) -> LakeWriter:
    """The lake-writer role (``vendwatch run lake-writer``; part of ``vendwatch serve``)."""
    return LakeWriter(ctx)
