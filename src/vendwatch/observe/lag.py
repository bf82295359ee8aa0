"""How far behind the log end a consumer is, in records and in seconds.

Records: the log's end offsets minus this replica's positions, for the partitions it
owns. Seconds: while records wait, the age (log append time) of the last record the
stage processed on the partition that is furthest behind; the oldest waiting record
was appended after it, so this bounds its wait from above. Caught up: 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from vendwatch.bus.base import Log, LogError, Record
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

    def processed(self, records: list[Record], hop: str | None = None) -> None:
        """Count a processed batch; ``hop`` observes the durable->here latency (first and last record)."""
        if not records:
            return
        STAGE_RECORDS.labels(self.stage).inc(len(records))
        for r in records:
            self._last_ts[(r.topic, r.partition)] = r.timestamp_ms / 1000.0
        if hop is not None:
            now = self.clock()
            # one observation per batch end, not per record: a histogram per record costs
            # more than some stages' whole per-record work
            observe_hop(hop, now - records[0].timestamp_ms / 1000.0)
            if len(records) > 1:
                observe_hop(hop, now - records[-1].timestamp_ms / 1000.0)

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
