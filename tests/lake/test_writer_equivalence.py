"""The lake writer's faster paths write exactly what the plain ones did.

A hostile stream (odd unicode, escapes, big numbers, nested and pretty-printed payloads,
reordered and unknown fields, replayed copies, undecodable records) goes through the
writer's buffer in bulk runs and record by record, and through a reference copy of the
buffer as it was before the eighth round (one decode per poll, Python lists to Arrow);
the Arrow tables must be equal in every column, and the records set aside the same,
with the same reasons. The commit path's own partition split must give pyiceberg's
partitions, row for row, and a commit that loses a race must not leave the files of its
first attempt behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import _determine_partitions
from tests.lake.factory import T0, day_of_events

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.bus.base import Record
from vendwatch.bus.sqlite import JoinedRecords
from vendwatch.events import CATEGORY
from vendwatch.lake.catalog import ensure_table, open_catalog
from vendwatch.lake.replay import replay_record
from vendwatch.lake.writer import (
    EVENTS_SCHEMA,
    EventColumns,
    commit_batch,
    committed_offsets,
    partitions,
)

_UTC = pa.timestamp("us", tz="UTC")


# --- the buffer as it was at the end of the seventh round (reference) -----------------

class _OldEvent(msgspec.Struct, kw_only=True):
    event_id: str
    device_id: str
    type: str
    occurred_at: str
    received_at: str
    data: msgspec.Raw
    seq: int | None = None
    site_id: str | None = None
    schema_version: int = 1
    late: bool = False
    replayed: bool = False


_old_one = msgspec.json.Decoder(_OldEvent)
_old_many = msgspec.json.Decoder(list[_OldEvent])


def _old_timestamps(values: list[str]) -> pa.Array:
    try:
        return pc.cast(pa.array(values, pa.string()), _UTC)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([msgspec.convert(v, datetime) for v in values], _UTC)


def _old_table(records: list[Record], set_aside: Callable[[Record, str], None]) -> pa.Table:
    """What the writer buffered for ``records`` before: decode, skip, Python lists to Arrow."""
    try:
        decoded: list[_OldEvent | None] = list(_old_many.decode(b"[" + b",".join(r.value for r in records) + b"]"))
    except (msgspec.DecodeError, RecursionError):
        decoded = []
    if len(decoded) != len(records):  # (the count check is this round's fix, see the test below)
        decoded = []
        for r in records:
            try:
                decoded.append(_old_one.decode(r.value))
            except (msgspec.DecodeError, RecursionError) as e:
                set_aside(r, f"{type(e).__name__}: {e}")
                decoded.append(None)
    kept = [(r, e) for r, e in zip(records, decoded, strict=True) if e is not None and not e.replayed]
    evs = [e for _, e in kept]
    occurred = _old_timestamps([e.occurred_at for e in evs])
    types = pa.array([e.type for e in evs], pa.string())
    d = types.dictionary_encode()
    categories = pa.array([CATEGORY.get(t, "other") for t in d.dictionary.to_pylist()], pa.string()).take(d.indices)
    return pa.Table.from_pydict({
        "event_id": [e.event_id for e in evs],
        "device_id": [e.device_id for e in evs],
        "site_id": [e.site_id for e in evs],
        "type": types,
        "category": categories,
        "occurred_at": occurred,
        "received_at": _old_timestamps([e.received_at for e in evs]),
        "event_date": pc.cast(occurred, pa.date32()),
        "seq": [e.seq for e in evs],
        "schema_version": [e.schema_version for e in evs],
        "late": [e.late for e in evs],
        "payload": pa.array([bytes(e.data) for e in evs], pa.binary()).cast(pa.string()),
        "log_partition": [r.partition for r, _ in kept],
        "log_offset": [r.offset for r, _ in kept],
    }, schema=EVENTS_SCHEMA)


# --- the hostile stream ---------------------------------------------------------------

def _value(**fields: object) -> bytes:
    """A log value with the fields in the given order; ``data`` is put in as raw JSON text."""
    data = fields.pop("data", b"{}")
    head = msgspec.json.encode(fields)[:-1]
    return head + (b"," if fields else b"") + b'"data":' + data + b"}"


def _hostile_values() -> list[bytes]:
    base = {"event_id": "e", "device_id": "VM-1", "type": "telemetry",
            "occurred_at": "2026-11-20T08:00:00Z", "received_at": "2026-11-20T08:00:01Z"}
    out = [ev.encode(e) for e in day_of_events(n=3)]
    odd = [
        # odd unicode, raw and escaped, in ids and payloads
        {**base, "event_id": "é-😀-中文-\u202e-\u2028", "device_id": "VM-ñ\u0301",
         "data": '{"note":"😀 \\ud83d\\ude00 \\u2028 ,\\"x\\":1} \\/ \\t","ñ":"é"}'.encode()},
        # escapes in the envelope's strings
        {**base, "event_id": 'q"uote\\back\nline\u0001', "site_id": "s\\ite",
         "data": b'{"k":"\\"\\\\\\b\\f\\n\\r\\t"}'},
        # big and odd numbers, kept as sent
        {**base, "seq": 2**62, "data": b'{"big":123456789012345678901234567890,"f":1e308,"z":-0.0,"e":1E-7,"n":[0,-1,1.50]}'},
        {**base, "seq": -7, "data": b"[]"},
        {**base, "data": b'"just a string"'},
        {**base, "data": b"null"},
        {**base, "data": b"12.0"},
        # nested deeply, and pretty-printed with whitespace and newlines
        {**base, "data": b'{"a":' * 60 + b"1" + b"}" * 60},
        {**base, "data": b'{\n  "slots": [\n    {"slot": "A1", "count": 3}\n  ],\r\n\t"ok" : true }'},
        # fields in another order, unknown fields, explicit defaults and nulls, late events
        {"data": b'{"x":1}', "type": "heartbeat", "received_at": "2026-11-20T08:00:01Z",
         "occurred_at": "2026-11-20T08:00:00Z", "device_id": "VM-2", "event_id": "reordered"},
        {**base, "event_id": "extra", "data": b"{}", "firmware_extra": {"a": [1, 2]}, "late": False},
        {**base, "event_id": "nulls", "site_id": None, "seq": None, "data": b"{}"},
        {**base, "event_id": "v2-late", "schema_version": 2, "late": True, "site_id": "S-9", "data": b"{}"},
        # times with offsets and fractions, and an unknown event type
        {**base, "event_id": "offset", "occurred_at": "2026-11-20T23:30:00.123456+05:30",
         "received_at": "2026-11-21T00:00:00.5-01:00", "data": b"{}"},
        {**base, "event_id": "unknown-type", "type": "not-a-type", "data": b"{}"},
    ]
    for f in odd:
        data = f.pop("data")
        assert isinstance(data, bytes)
        out.append(_value(**f, data=data))
    e = day_of_events(n=1)[0]
    out += [
        replay_record(e),  # already in the lake: skipped
        b"{not json",
        b'{"event_id": 1, "device_id": "VM-1"}',  # wrong type, missing fields
        _value(**base) + b"," + _value(**base),  # two documents in one value
        b"",
        b"null",
        _value(**base) + b" trailing",
        _value(**{**base, "event_id": "bad-escape"}, data=b'"\\ud800"'),
    ]
    out += [ev.encode(x) for x in day_of_events(start=T0 + timedelta(days=1), n=3)]
    return out


def _records() -> list[Record]:
    return [Record(EVENTS, i % 2, 100 + i, "k", v, 1_700_000_000_000 + i) for i, v in enumerate(_hostile_values())]


def _runs(records: list[Record], size: int) -> list[list[Record]]:
    """Runs of consecutive records of one partition, as a bulk poll hands them over."""
    out: list[list[Record]] = []
    for p in (0, 1):
        mine = [r for r in records if r.partition == p]
        out += [mine[i:i + size] for i in range(0, len(mine), size)]
    return out


@pytest.mark.parametrize("run_size", [1, 3, 8, 1000])
@pytest.mark.parametrize("chunk_rows", [2, 16_384])
def test_hostile_stream_gives_the_columns_and_dead_letters_of_the_reference(run_size, chunk_rows):
    records = _records()
    runs = _runs(records, run_size)
    want_aside: list[tuple[int, str]] = []
    want = pa.concat_tables([_old_table(run, lambda r, why: want_aside.append((r.offset, why))) for run in runs])

    got_aside: list[tuple[int, str]] = []
    cols = EventColumns(lambda r, why: got_aside.append((r.offset, why)), chunk_rows=chunk_rows)
    for run in runs:
        j = JoinedRecords(EVENTS, run[0].partition, run[0].offset, [r.offset for r in run],
                          b",".join(r.value for r in run))
        cols.add_joined(j, lambda run=run: run)
    got = cols.to_arrow()
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows > 20
    for name in EVENTS_SCHEMA.names:
        assert got.column(name).combine_chunks().equals(want.column(name).combine_chunks()), name
    assert got_aside == want_aside
    assert len(got_aside) >= 6  # every undecodable record, with msgspec's reason

    # record by record (the path of a non-embedded log) gives the same rows
    one_by_one = EventColumns(lambda r, why: None, chunk_rows=chunk_rows)
    for run in runs:
        one_by_one.add_many(run)
    assert one_by_one.to_arrow().to_pylist() == got.to_pylist()


def test_a_value_holding_two_documents_is_set_aside_not_a_crash():
    """Read record by record, a value like ``{...},{...}`` made the poll's joined decode
    give one event too many: the buffer's events and log positions no longer matched and
    building the chunk raised (the role died and, restarted, died on it again)."""
    good = [ev.encode(e) for e in day_of_events(n=1)]
    two = good[0] + b"," + good[1]
    records = [Record(EVENTS, 0, 10 + i, "k", v, 0) for i, v in enumerate([good[0], two, good[2]])]
    aside: list[tuple[int, str]] = []
    cols = EventColumns(lambda r, why: aside.append((r.offset, why)))
    assert cols.add_many(records) == 2
    assert cols.to_arrow().column("log_offset").to_pylist() == [10, 12]
    assert [o for o, _ in aside] == [11] and "trailing characters" in aside[0][1].lower()


def test_payloads_are_the_log_bytes_exactly():
    records = _records()
    cols = EventColumns(lambda r, why: None)
    cols.add_many(records)
    got = cols.to_arrow()
    by_offset = {r.offset: r.value for r in records}
    for off, payload in zip(got.column("log_offset").to_pylist(), got.column("payload").to_pylist(), strict=True):
        assert payload.encode() in by_offset[off]
    pretty = [p for p in got.column("payload").to_pylist() if "\n" in p]
    assert pretty == ['{\n  "slots": [\n    {"slot": "A1", "count": 3}\n  ],\r\n\t"ok" : true }']


def _mixed_table(n_days: int = 3) -> pa.Table:
    """Rows of several days and types, in several chunks, interleaved."""
    items = []
    for d in range(n_days):
        items += day_of_events(start=T0 + timedelta(days=d, hours=22), n=5)  # crosses midnight
    items.sort(key=lambda e: e.event_id)  # interleave days and types
    recs = [Record(EVENTS, 0, i, e.device_id, ev.encode(e), 0) for i, e in enumerate(items)]
    cols = EventColumns(chunk_rows=7)
    for i in range(0, len(recs), 5):
        cols.add_many(recs[i:i + 5])
    t = cols.to_arrow()
    assert t.column("payload").num_chunks > 1
    return t


def test_the_partition_split_gives_pyicebergs_partitions_row_for_row(settings):
    table = ensure_table(open_catalog(settings), "raw.events")
    data = _mixed_table()
    meta = table.metadata
    want = {tuple(v.value for v in p.partition_key.field_values): p.arrow_table_partition
            for p in _determine_partitions(meta.spec(), meta.schema(), data)}
    got = {tuple(v.value for v in key.field_values): part
           for key, part in partitions(meta.spec(), meta.schema(), data)}
    assert len(want) >= 6
    assert sorted(got) == sorted(want)
    for k, part in got.items():
        assert part.to_pylist() == want[k].to_pylist(), k
        assert key_record(part, meta) == k


def key_record(part: pa.Table, meta) -> tuple:
    """The partition values every row of ``part`` has (one value per field, else an error)."""
    out = []
    for f in meta.spec().fields:
        src = meta.schema().find_field(f.source_id)
        vals = set(f.transform.pyarrow_transform(src.field_type)(part.column(src.name).combine_chunks()).to_pylist())
        assert len(vals) == 1
        out.append(vals.pop())
    return tuple(out)


def test_a_commit_writes_the_rows_table_append_writes(settings):
    cat = open_catalog(settings)
    data = _mixed_table()
    new = ensure_table(cat, "raw.events")
    commit_batch(new, data, {(EVENTS, 0): 0}, {(EVENTS, 0): data.num_rows}, "test")
    cat.create_namespace_if_not_exists("ref")
    old = cat.create_table("ref.events", schema=new.schema(), partition_spec=new.spec(), properties=new.properties)
    old.append(data)
    key = [("log_partition", "ascending"), ("log_offset", "ascending")]
    assert new.scan().to_arrow().sort_by(key).equals(old.scan().to_arrow().sort_by(key))

    def files(t):
        return sorted((str(f.file.partition), f.file.record_count) for f in t.scan().plan_files())

    assert files(new) == files(old)
    assert committed_offsets(new) == {(EVENTS, 0): data.num_rows}


def test_a_commit_that_loses_a_race_reuses_its_files(settings, monkeypatch):
    """Before, every attempt wrote the batch's Parquet files again and left the files of the
    failed attempt behind; now they are written once and committed on the next attempt."""
    cat = open_catalog(settings)
    table = ensure_table(cat, "raw.events")
    data = _mixed_table(n_days=1)
    real = type(cat).commit_table
    failures = [1]

    def flaky(self, *a, **kw):
        if failures[0]:
            failures[0] -= 1
            raise CommitFailedException("another writer committed first")
        return real(self, *a, **kw)

    monkeypatch.setattr(type(cat), "commit_table", flaky)
    commit_batch(table, data, {(EVENTS, 0): 0}, {(EVENTS, 0): data.num_rows}, "test")
    assert failures == [0]
    referenced = {f.file.file_path.removeprefix("file://") for f in table.scan().plan_files()}
    on_disk = {os.path.join(d, n) for d, _, names in os.walk(settings.data_path / "lake") for n in names
               if n.endswith(".parquet")}
    assert on_disk == referenced
    assert table.scan().to_arrow().num_rows == data.num_rows


def test_the_commit_transaction_works_its_metadata_out_once_per_set_of_updates(settings):
    """pyiceberg's ``Transaction.table_metadata`` deep-copies the whole table metadata on
    every access (a dozen per append); the writer's transaction keeps the result until
    an update is staged or the table changes."""
    from vendwatch.lake.writer import _Transaction

    table = ensure_table(open_catalog(settings), "raw.events")
    tx = _Transaction(table)
    first = tx.table_metadata
    assert tx.table_metadata is first
    tx.set_properties(**{"vendwatch.test": "1"})
    staged = tx.table_metadata
    assert staged is not first and staged.properties["vendwatch.test"] == "1"
    assert tx.table_metadata is staged


@pytest.mark.parametrize("field, bad", [
    ("occurred_at", "yesterday at noon"),
    ("received_at", "2026-13-45T99:00:00Z"),
    ("seq", 2**70),
    ("data", b'"\xff\xfe not utf-8"'),
])
def test_a_record_no_column_can_hold_is_set_aside_and_the_rest_is_kept(field: str, bad: object) -> None:
    """A record another producer put on the events topic may decode yet hold a value no
    column of raw.events can take (a time that is not RFC 3339, a seq beyond 64 bits, a
    payload that is not UTF-8). Building the chunk failed as a whole, and the role died on
    the same record after every restart. Now that record alone is set aside with the reason."""
    good = [ev.encode(e) for e in day_of_events(n=1)][:3]
    doc = msgspec.json.decode(good[1])
    if field == "data":
        broken = good[1].replace(msgspec.json.encode(doc["data"]), bad)  # type: ignore[arg-type]
    else:
        doc[field] = bad
        broken = msgspec.json.encode(doc)
    records = [Record(EVENTS, 0, 10 + i, "k", v, 0) for i, v in enumerate([good[0], broken, good[2]])]
    aside: list[tuple[int, str]] = []
    cols = EventColumns(lambda r, why: aside.append((r.offset, why)), chunk_rows=2)
    cols.add_many(records)
    assert cols.to_arrow().column("log_offset").to_pylist() == [10, 12]
    assert [o for o, _ in aside] == [11], aside
    assert aside[0][1], "a reason is given"
