"""The ``Log`` port: a durable, partitioned, replayable record log (the MSK part).

Semantics every backend honours (tests/contract/test_log.py checks them):

* ``append`` returns only once the records are durable; a record's partition is a
  stable function of its key, so one device's events stay in order.
* Offsets are integers that only grow within a partition; they need not be dense.
  Positions are "next offset to read", as in Kafka.
* A consumer group remembers its committed positions; a new consumer of the group
  resumes after the last commit (at-least-once). Stages that need exactly-once store
  their own positions with their output and ``seek`` on assignment.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vendwatch.errors import Unavailable

TopicPartition = tuple[str, int]
AssignCallback = Callable[[list[TopicPartition]], None]

# Topic names used across vendwatch.
EVENTS = "events"  # accepted device events (StoredEvent JSON), key = device_id
REJECTED = "rejected"  # quarantined events (RejectedEvent JSON), key = device_id or ""
SIGNALS = "signals"  # detector output, key = dedupe key
BUSINESS = "business"  # business events routed by the event bus, key = dedupe key


class LogError(Exception):
    """The log failed an operation."""


class LogUnavailable(LogError, Unavailable):
    """The log cannot take writes right now (disk full, broker down, timeout); retry later."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class JoinedRecords:
    """Consecutive records of one partition read in bulk: their values joined by commas
    (the body of a JSON array, so one decoder call reads them all) and their offsets in
    the same order, without a ``Record`` object per record.

    ``records`` holds the records themselves when the backend had them anyway (the
    generic ``Consumer.poll_joined``); otherwise ``Log.read(topic, partition, offset,
    len(offsets))`` gives them again (see ``vendwatch.bus.batch``)."""

    topic: str
    partition: int
    offset: int  # where the read started
    offsets: list[int]
    values: bytes
    oldest_ms: int = 0  # append times (``Record.timestamp_ms``) of the oldest and newest record
    newest_ms: int = 0
    records: list[Record] | None = None


def join_records(records: Iterable[Record]) -> list[JoinedRecords]:
    """Records as runs of consecutive records of the same partition, in their order."""
    out: list[JoinedRecords] = []
    run: list[Record] = []
    for r in records:
        if run and (r.partition != run[0].partition or r.topic != run[0].topic):
            out.append(_joined(run))
            run = []
        run.append(r)
    if run:
        out.append(_joined(run))
    return out


def _joined(run: list[Record]) -> JoinedRecords:
    ts = [r.timestamp_ms for r in run]
    return JoinedRecords(run[0].topic, run[0].partition, run[0].offset, [r.offset for r in run],
                         b",".join([r.value for r in run]), min(ts), max(ts), run)


def partition_for(key: str, partitions: int) -> int:
    """Stable key -> partition mapping used by backends that choose partitions themselves."""
    return zlib.crc32(key.encode()) % partitions


class Consumer(ABC):
    """A member of a consumer group reading one or more topics."""

    @abstractmethod
    def poll(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[Record]:
        """Records after the current positions, in order within each partition; [] after timeout."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit next-offsets; with None, the positions after the last polled records."""

    @abstractmethod
    def committed(self) -> dict[TopicPartition, int]:
        """The group's committed next-offsets for the assigned partitions."""

    @abstractmethod
    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Make the next poll of that partition start at ``offset``."""

    @abstractmethod
    def assignment(self) -> list[TopicPartition]:
        """Partitions currently assigned to this member."""

    def poll_joined(self, max_records: int = 1000, timeout_s: float = 0.5) -> list[JoinedRecords]:
        """``poll``, with each partition's records joined (``JoinedRecords``), so a stage can
        decode them in one call. Backends that can read that way without building a
        ``Record`` per record (the embedded log) override this; it is the generic form."""
        return join_records(self.poll(max_records, timeout_s))

    def position(self) -> dict[TopicPartition, int]:
        """Next offsets this member will read (after the last polled record)."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Log(ABC):
    """A durable partitioned log; one instance is shared by all stages in a process."""

    def check(self, timeout_s: float = 5.0) -> None:
        """Raise ``LogUnavailable`` (saying where and why) when the log does not answer now.
        A log in this process's own files always answers."""
        return None

    @abstractmethod
    def create_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create a topic if it does not exist (idempotent)."""

    @abstractmethod
    def partitions(self, topic: str) -> int: ...

    @abstractmethod
    def append(self, topic: str, items: Sequence[tuple[str, bytes]]) -> list[TopicPartition]:
        """Durably append (key, value) pairs; returns (partition, offset) of each, in order."""

    def append_many(self, batches: dict[str, Sequence[tuple[str, bytes]]]) -> dict[str, list[TopicPartition]]:
        """Append to several topics; backends that can, do it atomically."""
        return {topic: self.append(topic, items) for topic, items in batches.items() if items}

    @abstractmethod
    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        """Records of one partition from ``offset`` (inclusive), without a consumer group."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition."""

    @abstractmethod
    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The first offset of a partition whose record timestamp is at or after
        ``timestamp_ms``; the end offset if there is none."""

    @abstractmethod
    def begin_offsets(self, topic: str) -> dict[int, int]:
        """Oldest offset still retained, per partition."""

    @abstractmethod
    def consumer(
        self,
        group: str,
        topics: Iterable[str],
        *,
        on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> Consumer:
        """Join ``group``; ``on_assign`` runs (in the polling thread) before records of new partitions are returned."""

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """A group's committed positions, for lag reporting."""
        raise NotImplementedError

    def enforce_retention(self, max_age_s: float) -> int:
        """Drop records older than ``max_age_s``; returns how many. Optional."""
        return 0

    def write_problem(self) -> str | None:
        """Why appends are failing right now (the last one failed, none succeeded since), or None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
