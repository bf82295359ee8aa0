"""Raw-zone writing: log records to Arrow, and exactly-once commits to Iceberg.

A commit to ``raw.events`` carries, in its snapshot summary, the next log offset of
every partition it covers (``vendwatch.log-offsets``). Data files and offsets land in
one atomic catalog commit, so after a crash the writer reads the offsets back and
resumes exactly after the last committed record: nothing lost, nothing doubled.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException

# _check_pyarrow_schema_compatible and Transaction's _updates/_table are pyiceberg's private
# names: pyproject caps pyiceberg below the next minor release for them
from pyiceberg.io.pyarrow import (
    _check_pyarrow_schema_compatible,
    bin_pack_arrow_table,
    pyarrow_to_schema,
    write_file,
)
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties, Transaction, WriteTask
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.utils.properties import property_as_bool, property_as_int

from vendwatch.bus import EVENTS
from vendwatch.bus.base import Record, TopicPartition
from vendwatch.bus.sqlite import JoinedRecords
from vendwatch.events import CATEGORY
from vendwatch.lake.catalog import newest_property
from vendwatch.lake.schemas import RAW_EVENTS, RAW_REJECTED

log = logging.getLogger("vendwatch.lake.writer")

OFFSETS_PROP = "vendwatch.log-offsets"
WRITER_PROP = "vendwatch.writer"
EVENTS_SCHEMA = RAW_EVENTS.arrow_schema()
REJECTED_SCHEMA = RAW_REJECTED.arrow_schema()
_UTC = pa.timestamp("us", tz="UTC")


class _RawEvent(msgspec.Struct, kw_only=True):
    """StoredEvent as the lake reads it: payload kept as raw bytes, replay marker seen."""

    event_id: str
    device_id: str
    type: str
    # kept as RFC 3339 text: Arrow parses a whole column at once, far faster than a datetime per event
    occurred_at: str
    received_at: str
    data: msgspec.Raw
    seq: int | None = None
    site_id: str | None = None
    schema_version: int = 1
    late: bool = False
    replayed: bool = False  # set by `vendwatch replay`: already in raw.events


# what building a column raises for a value it cannot hold
_COLUMN_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, msgspec.ValidationError, OverflowError, ValueError, TypeError)
_enc = msgspec.json.Encoder()


class _RawRejected(msgspec.Struct, kw_only=True):
    received_at: datetime
    reason: str
    device_id: str | None = None
    event_id: str | None = None
    index: int | None = None
    raw: msgspec.Raw = msgspec.Raw(b"null")  # msgspec.Raw cannot be in a union with None


_dec_event = msgspec.json.Decoder(_RawEvent)
_dec_rejected = msgspec.json.Decoder(_RawRejected)


_dec_events = msgspec.json.Decoder(list[_RawEvent])


class EventColumns:
    """Buffered raw.events rows: records are decoded a poll at a time and turned into Arrow
    every ``chunk_rows`` events, so a batch waiting for its commit is held as Arrow columns
    (about the size of its JSON) rather than as one Python object per event (3x that)."""

    CHUNK_ROWS = 16_384

    def __init__(self, set_aside: Callable[[Record, str], None] | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> None:
        self.set_aside = set_aside  # where an unreadable record goes (the stage's dead letters)
        self.chunk_rows = chunk_rows
        self.events: list[_RawEvent] = []  # decoded, not yet in a chunk
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.chunks: list[pa.Table] = []
        self.sealed = 0  # rows in chunks
        self.nbytes = 0

    def __len__(self) -> int:
        return self.sealed + len(self.events)

    def add_many(self, records: list[Record]) -> int:
        """Add log records; replayed copies (already in the lake) and unreadable records are skipped."""
        try:
            # one decoder call for the whole poll: far less per-record overhead than one each
            decoded: list[_RawEvent | None] = list(_dec_events.decode(b"[" + b",".join(r.value for r in records) + b"]"))
        except (msgspec.DecodeError, RecursionError):
            decoded = []
        if len(decoded) != len(records):  # undecodable, or a value holding several documents
            decoded = [self._decode_one(r) for r in records]
        if all(e is not None and not e.replayed for e in decoded):
            # the common case, without a Python-level append per record
            self.events.extend(decoded)  # type: ignore[arg-type]
            self.partitions.extend([r.partition for r in records])
            self.offsets.extend([r.offset for r in records])
            self.nbytes += sum(len(r.value) for r in records)
            self._seal_if_full()
            return len(records)
        n = 0
        for r, e in zip(records, decoded, strict=True):
            if e is None or e.replayed:
                continue
            self.events.append(e)
            self.partitions.append(r.partition)
            self.offsets.append(r.offset)
            self.nbytes += len(r.value)
            n += 1
        self._seal_if_full()
        return n

    def add_joined(self, j: JoinedRecords, records: Callable[[], list[Record]]) -> int:
        """Add records read in bulk: one decode for the whole run, no object per log row.
        Anything unusual (an undecodable or replayed record) takes the per-record path,
        with ``records()`` reading the same records again."""
        try:
            decoded = _dec_events.decode(b"[" + j.values + b"]")
        except msgspec.DecodeError:
            return self.add_many(records())
        if len(decoded) != len(j.offsets) or any(e.replayed for e in decoded):
            return self.add_many(records())
        self.events.extend(decoded)
        self.partitions.extend([j.partition] * len(decoded))
        self.offsets.extend(j.offsets)
        self.nbytes += len(j.values)
        self._seal_if_full()
        return len(decoded)

    def add(self, r: Record) -> bool:
        return self.add_many([r]) == 1

    def _decode_one(self, r: Record) -> _RawEvent | None:
        try:
            return _dec_event.decode(r.value)
        except (msgspec.DecodeError, RecursionError) as e:
            if self.set_aside is None:
                log.error("undecodable record on %s/%d@%d skipped", r.topic, r.partition, r.offset)
            else:
                self.set_aside(r, f"{type(e).__name__}: {e}")
            return None

    def _seal_if_full(self) -> None:
        if len(self.events) >= self.chunk_rows:
            self._seal()

    def _seal(self) -> None:
        """The decoded events so far as one Arrow chunk (the structs, and the log bytes
        their payloads point into, are freed)."""
        if not self.events:
            return
        try:
            chunk = self._arrow(self.events, self.partitions, self.offsets)
        except _COLUMN_ERRORS:
            chunk = self._arrow_setting_aside()
        self.chunks.append(chunk)
        self.sealed += chunk.num_rows
        self.events, self.partitions, self.offsets = [], [], []

    def _arrow_setting_aside(self) -> pa.Table:
        """The chunk without the events no column can hold (a time that is not RFC 3339, a
        seq beyond 64 bits, a payload that is not UTF-8: records from a producer other than
        the collector), each set aside with the reason; one event at a time, so only when
        the chunk as a whole failed."""
        keep: tuple[list[_RawEvent], list[int], list[int]] = ([], [], [])
        for e, p, o in zip(self.events, self.partitions, self.offsets, strict=True):
            try:
                self._arrow([e], [p], [o])
            except _COLUMN_ERRORS as err:
                record = Record(EVENTS, p, o, e.device_id, _enc.encode(e), 0)
                reason = f"no column of raw.events can hold it: {type(err).__name__}: {err}"
                if self.set_aside is None:
                    log.error("record %s/%d@%d skipped: %s", EVENTS, p, o, reason)
                else:
                    self.set_aside(record, reason)
                continue
            for column, value in zip(keep, (e, p, o), strict=True):
                column.append(value)  # type: ignore[attr-defined]
        return self._arrow(*keep) if keep[0] else EVENTS_SCHEMA.empty_table()

    def to_arrow(self) -> pa.Table:
        self._seal()
        if not self.chunks:
            return EVENTS_SCHEMA.empty_table()
        return self.chunks[0] if len(self.chunks) == 1 else pa.concat_tables(self.chunks)

    @staticmethod
    def _arrow(evs: list[_RawEvent], partitions: list[int], offsets: list[int]) -> pa.Table:
        occurred = _timestamps([e.occurred_at for e in evs])
        types = pa.array([e.type for e in evs], pa.string())
        cols: dict[str, object] = {
            "event_id": [e.event_id for e in evs],
            "device_id": [e.device_id for e in evs],
            "site_id": [e.site_id for e in evs],
            "type": types,
            "category": _categories(types),
            "occurred_at": occurred,
            "received_at": _timestamps([e.received_at for e in evs]),
            "event_date": pc.cast(occurred, pa.date32()),
            "seq": [e.seq for e in evs],
            "schema_version": [e.schema_version for e in evs],
            "late": [e.late for e in evs],
            "payload": _payloads([e.data for e in evs]),
            "log_partition": partitions,
            "log_offset": offsets,
        }
        return pa.Table.from_pydict(cols, schema=EVENTS_SCHEMA)


def _payloads(raws: list[msgspec.Raw]) -> pa.Array:
    """The payloads' JSON text as the table's string column, checked as UTF-8 by Arrow:
    joined in one C call and cut at their lengths (a ``bytes`` copy per payload, then an
    Arrow conversion of each, cost 2.5 times as much; a Python ``str`` each, 5 times)."""
    offsets = pc.cumulative_sum(pa.array([0, *map(len, raws)], pa.int64()))
    out = pa.Array.from_buffers(pa.large_string(), len(raws), [None, offsets.buffers()[1], pa.py_buffer(b"".join(raws))])
    out.validate(full=True)  # raises ArrowInvalid on bad UTF-8, as the cast from binary did
    return out


def _categories(types: pa.Array) -> pa.Array:
    """Each event type's category, looked up once per distinct type (a batch has a few)."""
    d = types.dictionary_encode()
    names = pa.array([None if t is None else CATEGORY.get(t, "other") for t in d.dictionary.to_pylist()], pa.string())
    return names.take(d.indices)


def _timestamps(values: list[object]) -> pa.Array:
    """RFC 3339 strings -> UTC timestamps, vectorised; per value only if the batch has an odd one."""
    try:
        return pc.cast(pa.array(values, pa.string()), _UTC)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([msgspec.convert(v, datetime) for v in values], _UTC)


class RejectedColumns:
    def __init__(self) -> None:
        self.cols: dict[str, list[object]] = {f.name: [] for f in REJECTED_SCHEMA}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.cols["reason"])

    def add_many(self, records: list[Record]) -> int:
        for r in records:
            self.add(r)
        return len(records)

    def add(self, r: Record) -> bool:
        c = self.cols
        try:
            e = _dec_rejected.decode(r.value)
            received, reason = e.received_at, e.reason
            device_id, event_id, index = e.device_id, e.event_id, e.index
            raw = None if bytes(e.raw) == b"null" else bytes(e.raw).decode(errors="replace")
        except msgspec.DecodeError as err:
            # keep even an unreadable quarantine record: the lake is the audit trail
            received, reason = datetime.fromtimestamp(r.timestamp_ms / 1000, UTC), f"undecodable: {err}"
            device_id, event_id, index, raw = r.key or None, None, None, r.value.decode(errors="replace")
        c["received_at"].append(received)
        c["reason"].append(reason)
        c["device_id"].append(device_id)
        c["event_id"].append(event_id)
        c["batch_index"].append(index)
        c["raw"].append(raw)
        c["log_partition"].append(r.partition)
        c["log_offset"].append(r.offset)
        self.nbytes += len(r.value)
        return True

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=REJECTED_SCHEMA)


def encode_offsets(offsets: dict[TopicPartition, int]) -> str:
    return msgspec.json.encode({f"{t}/{p}": o for (t, p), o in sorted(offsets.items())}).decode()


def decode_offsets(raw: str) -> dict[TopicPartition, int]:
    data: dict[str, int] = msgspec.json.decode(raw)
    out = {}
    for k, v in data.items():
        t, _, p = k.rpartition("/")
        out[(t, int(p))] = int(v)
    return out


def committed_offsets(table: Table) -> dict[TopicPartition, int]:
    """Offsets of the newest writer commit (maintenance never expires it, see maintain.py)."""
    raw = newest_property(table, OFFSETS_PROP)
    return decode_offsets(raw) if raw else {}


class OffsetConflict(Exception):
    """Another writer committed past this batch's start: the batch must be dropped and re-read."""


def commit_batch(
    table: Table,
    data: pa.Table,
    start: dict[TopicPartition, int],
    end: dict[TopicPartition, int],
    writer_id: str,
    max_attempts: int = 20,
) -> Table:
    """Append ``data`` with the offsets it covers, re-checking offsets on every attempt.

    ``start`` holds where this batch began per partition; if the table's committed
    offsets for those partitions have moved elsewhere, another writer owns them now
    and committing would double rows, so raise OffsetConflict instead. The Parquet
    files are written once; an attempt that loses a race (a concurrent commit) only
    commits them again, unless the table's schema or partitioning changed meanwhile.
    """
    files: list[DataFile] = []
    written_for: tuple[int, int] | None = None
    for attempt in range(max_attempts):
        table.refresh()
        current = committed_offsets(table)
        for tp, begin in start.items():
            if current.get(tp, begin) != begin and tp in current:
                raise OffsetConflict(f"{tp[0]}/{tp[1]}: lake has {current[tp]}, batch starts at {begin}")
        merged = {**current, **end}
        layout = (table.metadata.current_schema_id, table.metadata.default_spec_id)
        if layout != written_for:
            files, written_for = write_data_files(table, data), layout
        try:
            append_files(table, files, {OFFSETS_PROP: encode_offsets(merged), WRITER_PROP: writer_id})
            return table
        except CommitFailedException:
            # a concurrent commit (maintenance, another writer): reload and re-check
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise CommitFailedException(f"{table.name()}: could not commit after {max_attempts} attempts")


def append_files(table: Table, files: list[DataFile], props: dict[str, str]) -> None:
    """One snapshot adding ``files`` (none: a snapshot that only moves the offsets), as
    ``Table.append`` makes it: merging manifests when the table asks for it."""
    with _Transaction(table) as tx:
        update = tx.update_snapshot(snapshot_properties=props)
        merge = property_as_bool(tx.table_metadata.properties, TableProperties.MANIFEST_MERGE_ENABLED,
                                 TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT)
        with update.merge_append() if merge else update.fast_append() as app:
            for f in files:
                app.append_data_file(f)


class _Transaction(Transaction):
    """A ``Transaction`` that works out its table metadata once per set of staged updates.

    pyiceberg's ``Transaction.table_metadata`` applies the staged updates to the table's
    metadata and deep-copies the result on every access, and an append reads it a dozen
    times: that was most of a commit's CPU, and it grows with the snapshots the table
    keeps (docs/benchmarks.md, "Snapshots and commit cost"). The metadata models are
    frozen, so the same result can be handed out until the updates or the table change.
    """

    _memo: tuple[object, object, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        memo = self._memo
        if memo is None or memo[0] is not self._updates or memo[1] is not self._table.metadata:
            memo = self._memo = (self._updates, self._table.metadata, super().table_metadata)
        return memo[2]


def write_data_files(table: Table, data: pa.Table) -> list[DataFile]:
    """``data`` as Parquet data files of ``table``: what ``Table.append`` writes (one file
    per partition, bin-packed to ``write.target-file-size-bytes``), with the rows split
    by partition in one pass (see ``partitions``)."""
    meta = table.metadata
    schema = meta.schema()
    _check_pyarrow_schema_compatible(schema, data.schema, format_version=meta.format_version)
    if data.num_rows == 0:
        return []
    task_schema = pyarrow_to_schema(data.schema, name_mapping=schema.name_mapping, format_version=meta.format_version)
    target = property_as_int(meta.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
                             TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT)
    write_uuid, counter = uuid.uuid4(), itertools.count()
    tasks = [
        WriteTask(write_uuid=write_uuid, task_id=next(counter), record_batches=batches, partition_key=key,
                  schema=task_schema)
        for key, part in partitions(meta.spec(), schema, data)
        for batches in bin_pack_arrow_table(part, target or 0)
    ]
    return list(write_file(table.io, meta, iter(tasks)))


def partitions(spec: PartitionSpec, schema: Schema, data: pa.Table) -> Iterator[tuple[PartitionKey | None, pa.Table]]:
    """The rows of ``data`` per partition of ``spec``, each partition's rows in their order.

    pyiceberg's own split filters the whole batch once per partition (a day of raw events
    has one per event type): that was half of a commit's CPU. Here every row gets one
    integer for its partition (the dictionary codes of its partition values), one stable
    sort groups the rows, and each partition is a slice of the sorted copy.
    """
    if spec.is_unpartitioned():
        yield None, data
        return
    codes: pa.Array | None = None
    fields: list[tuple[PartitionField, pa.Array]] = []
    for f in spec.fields:
        source = schema.find_field(f.source_id)
        column = data.column(schema.find_column_name(f.source_id)).combine_chunks()
        enc = pc.dictionary_encode(f.transform.pyarrow_transform(source.field_type)(column), null_encoding="encode")
        index = enc.indices.cast(pa.int64())
        codes = index if codes is None else pc.add(pc.multiply(codes, len(enc.dictionary)), index)
        fields.append((f, enc.dictionary))
    assert codes is not None
    order = pc.sort_indices(codes)  # stable: a partition keeps the rows' order, as a filter would
    runs = pc.run_end_encode(codes.take(order))
    rows = data.take(order)
    begin = 0
    for end, code in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        values = []
        for f, dictionary in reversed(fields):
            code, i = divmod(code, len(dictionary))
            values.append(PartitionFieldValue(field=f, value=dictionary[i].as_py()))
        yield PartitionKey(field_values=values[::-1], partition_spec=spec, schema=schema), rows.slice(begin, end - begin)
        begin = end
