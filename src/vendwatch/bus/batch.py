"""One poll's records read in bulk, for stages that decode a whole poll in one call.

Building a ``Record`` per log row and calling the decoder once per record cost the
stream stages 15-25 % of their CPU on the embedded log. A ``RecordBatch`` holds what
``Consumer.poll_joined`` returned (per partition: the values joined into the body of a
JSON array, and their offsets); ``decode`` turns each run into a list with one decoder
call. It is also a ``Sequence[Record]``: iterating it makes the records (reading them
again from the log when the backend did not keep them), which is the per-record path
that failure isolation and dead letters take. Anything unusual, an undecodable value
or a count that does not match, makes ``decode`` return None so the caller takes that
path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, overload

import msgspec

from vendwatch.bus.base import JoinedRecords, Log, Record, TopicPartition

T = TypeVar("T")


def run_records(log: Log, j: JoinedRecords) -> list[Record]:
    """The records of a run again (never one past it: retention may have removed some of
    it meanwhile, and the position after the run covers only the run)."""
    if j.records is not None:
        return j.records
    last = j.offsets[-1]
    return [r for r in log.read(j.topic, j.partition, j.offset, len(j.offsets)) if r.offset <= last]


def decode_run(decoder: msgspec.json.Decoder[list[T]], j: JoinedRecords) -> list[T] | None:
    """Every value of the run with one decoder call (``decoder`` reads a JSON array), or
    None when that fails or gives another count (a value that is not one JSON document)."""
    try:
        items = decoder.decode(b"[" + j.values + b"]")
    except (msgspec.DecodeError, RecursionError):
        return None
    return items if len(items) == len(j.offsets) else None


class RecordBatch(Sequence[Record]):
    """The records of one poll, kept as ``JoinedRecords`` runs until a record is asked for."""

    def __init__(self, log: Log, runs: list[JoinedRecords]) -> None:
        self.log = log
        self.runs = runs
        self._n = sum(len(j.offsets) for j in runs)
        self._records: list[Record] | None = None

    def __len__(self) -> int:
        return self._n

    def records(self) -> list[Record]:
        if self._records is None:
            self._records = [r for j in self.runs for r in run_records(self.log, j)]
        return self._records

    @overload
    def __getitem__(self, i: int) -> Record: ...

    @overload
    def __getitem__(self, i: slice) -> list[Record]: ...

    def __getitem__(self, i: int | slice) -> Record | list[Record]:
        return self.records()[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def decode(self, decoder: msgspec.json.Decoder[list[T]]) -> list[T] | None:
        """Every value, in order, decoded with one call per run; None if a run does not decode."""
        out: list[T] = []
        for j in self.runs:
            items = decode_run(decoder, j)
            if items is None:
                return None
            out += items
        return out

    def next_offsets(self) -> dict[TopicPartition, int]:
        """The position after this batch, per partition it has records of."""
        return {(j.topic, j.partition): j.offsets[-1] + 1 for j in self.runs}

    @property
    def oldest_ms(self) -> int:
        return min(j.oldest_ms for j in self.runs)

    @property
    def newest_ms(self) -> int:
        return max(j.newest_ms for j in self.runs)

    def __repr__(self) -> str:
        return f"RecordBatch({self._n} records in {len(self.runs)} runs)"


def first_ms(records: Sequence[Any]) -> int:
    """Append time of the first record of a batch (a ``RecordBatch``'s oldest)."""
    return records.oldest_ms if isinstance(records, RecordBatch) else records[0].timestamp_ms


def last_ms(records: Sequence[Any]) -> int:
    """Append time of the last record of a batch (a ``RecordBatch``'s newest)."""
    return records.newest_ms if isinstance(records, RecordBatch) else records[-1].timestamp_ms
