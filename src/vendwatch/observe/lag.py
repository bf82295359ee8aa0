"""How far behind the log end a consumer is, in records and in seconds.

Records: the log's end offsets minus this replica's positions, for the partitions it
owns. Seconds: while records wait, the age (log append time) of the last record the
stage processed on the partition that is furthest behind; the oldest waiting record
was appended after it, so this bounds its wait from above. Caught up: 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from vendwatch.bus.base import JoinedRecords, Log, LogError, Record
from vendwatch.bus.batch import RecordBatch
from vendwatch.observe.metrics import STAGE_LAG, STAGE_LAG_SECONDS, STAGE_RECORDS, observe_hop

Partition = tuple[str, int]


class LagMeter:
    """Lag gauges and the processed-records counter of one stage."""

    def __init__(self, stage: str, every_s: float = 15.0, clock: Callable[[], float] = time.time) -> None:
        self.stage, self.every_s, self.clock = stage, every_s, clock
        self._last_ts: dict[Partition, float] = {}  # append time of the last record processed
        self._since = clock()  # a partition with nothing processed yet waits since the start
        self._due = 0.0
        self.records = 0
        self.seconds = 0.0

    def processed(self, records: Sequence[Record], hop: str | None = None) -> None:
        """Count a processed batch; ``hop`` observes the durable->here latency (first and last record)."""
        if isinstance(records, RecordBatch):
            self.processed_runs(records.runs, hop)
            return
        if not records:
            return
        for r in records:
            self._last_ts[(r.topic, r.partition)] = r.timestamp_ms / 1000.0
        self._count(len(records), records[0].timestamp_ms, records[-1].timestamp_ms, hop)

    def processed_runs(self, runs: list[JoinedRecords], hop: str | None = None) -> None:
        """``processed`` for records read in bulk (``Consumer.poll_joined``): first and last
        are the oldest and newest of the runs."""
        if not runs:
            return
        for j in runs:
            self._last_ts[(j.topic, j.partition)] = j.newest_ms / 1000.0
        self._count(sum(len(j.offsets) for j in runs), min(j.oldest_ms for j in runs),
                    max(j.newest_ms for j in runs), hop)

    def _count(self, n: int, first_ms: int, last_ms: int, hop: str | None) -> None:
        STAGE_RECORDS.labels(self.stage).inc(n)
        if hop is not None:
            now = self.clock()
            # one observation per batch end, not per record: a histogram per record costs
            # more than some stages' whole per-record work
            observe_hop(hop, now - first_ms / 1000.0)
            if n > 1:
                observe_hop(hop, now - last_ms / 1000.0)

    def measure(self, ends: Mapping[str, Mapping[int, int]], positions: Iterable[tuple[Partition, int]]) -> None:
        """Set both gauges from the log's end offsets per topic and this replica's positions."""
        now = self.clock()
        lag_records, lag_s = 0, 0.0
        for (topic, part), pos in positions:
            behind = max(0, ends.get(topic, {}).get(part, 0) - pos)
            if behind:
                lag_records += behind
                lag_s = max(lag_s, now - self._last_ts.get((topic, part), self._since))
        self.records, self.seconds = lag_records, lag_s
        STAGE_LAG.labels(self.stage).set(lag_records)
        STAGE_LAG_SECONDS.labels(self.stage).set(lag_s)

    def report(self, log: Log, topics: Iterable[str], positions: Mapping[Partition, int],
               force: bool = False) -> None:
        """``measure`` against the log, at most every ``every_s`` (on Kafka each lookup is a round trip)."""
        now = time.monotonic()
        if not force and now < self._due:
            return
        self._due = now + self.every_s
        try:
            ends = {t: log.end_offsets(t) for t in topics}
        except LogError:
            return  # the log is down: the gauges keep their last values, the stage's errors say why
        self.measure(ends, positions.items())

    def forget(self, parts: Iterable[Partition]) -> None:
        for tp in parts:
            self._last_ts.pop(tp, None)
