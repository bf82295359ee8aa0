"""The device-state stage against a plain model of its rules, event by event.

Random mixed streams (several devices and partitions, event times out of order,
duplicated records, late events, payloads with unknown keys, nulls, wrong shapes and
values that do not decode) are cut into random polls and run through the stage as it
runs (``process``: bulk reads and record lists). Whatever the stage does per poll
(grouping per device, skipping work, one statement per poll), the rows it commits must
be those of folding every event on its own, in log order, the records it cannot
process being set aside and left out."""

from __future__ import annotations

import copy
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from tests.test_device_state_fold import _event as _typed_payload
from tests.test_device_state_fold import _reference_fold

from vendwatch import events as ev
from vendwatch.bus import EVENTS
from vendwatch.bus.base import Record, join_records
from vendwatch.bus.batch import RecordBatch
from vendwatch.config import Settings
from vendwatch.runtime import Context
from vendwatch.state.db import SqliteDatabase
from vendwatch.state.deadletters import DeadLetters
from vendwatch.state.projector import DeviceStateProjector
from vendwatch.state.store import StateStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DEVICES = ["VM-1", "VM-2", "VM-3"]
_POISON = b'"data":{"x":1e400,'  # a number no decoder takes: the record is set aside


_sale = st.fixed_dictionaries({}, optional={
    "payment_status": st.sampled_from(["success", "failure", 1]), "vend_status": st.sampled_from(["success", "failure"]),
    "price_minor": st.one_of(st.integers(0, 500), st.just(1.5)), "amount_minor": st.integers(0, 500),
    "currency": st.sampled_from(["EUR", "USD", "EURO", 7])})


@st.composite
def _stream(draw: st.DrawFn) -> tuple[list[Record], list[int]]:
    """Records of a random stream in log order, and where the polls are cut."""
    n = draw(st.integers(1, 40))
    values: list[tuple[str, bytes]] = []
    for i in range(n):
        if values and draw(st.integers(0, 9)) == 0:  # a record written twice
            values.append(values[draw(st.integers(0, len(values) - 1))])
            continue
        dev = draw(st.sampled_from(DEVICES))
        t, at, data = draw(_typed_payload())
        if t in ("transaction", "refund"):
            data |= draw(_sale)
        shape = draw(st.integers(0, 19))
        payload: Any = data
        if shape == 0:
            payload = draw(st.sampled_from([[1, 2], "text", 3, None, {"slots": "x"}, {"slots": [1]}]))
        e = ev.StoredEvent(
            event_id=f"e-{i}", device_id=dev, type=t,
            occurred_at=T0 + timedelta(seconds=at),
            received_at=T0 + timedelta(seconds=draw(st.integers(0, 6)), microseconds=draw(st.integers(0, 3))),
            data=msgspec.Raw(msgspec.json.encode(payload)),
            seq=draw(st.one_of(st.none(), st.integers(-3, 50))),
            site_id=draw(st.sampled_from([None, "", "S1", "S2"])),
            late=draw(st.booleans()))
        value = ev.encode(e)
        if shape == 1 and b'"data":{"' in value:
            value = value.replace(b'"data":{', _POISON, 1)
        values.append((dev, value))
    records: list[Record] = []
    next_offset = [0, 0]
    for dev, value in values:
        part = DEVICES.index(dev) % 2
        records.append(Record(EVENTS, part, next_offset[part], dev, value, 0))
        next_offset[part] += 1
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4))))
    return records, cuts


def _sales(data: Any, t: str, out: dict[tuple[str, str], int]) -> None:
    """The business counters an applied sale or refund adds to, by (counter, label)."""
    if not isinstance(data, dict):
        return
    cur = data.get("currency")
    if t == "transaction":
        if data.get("payment_status") == "failure":
            outcome = "payment_failure"
        elif data.get("vend_status") == "success":
            outcome = "success"
            if isinstance(data.get("price_minor"), int) and isinstance(cur, str):
                out["revenue", cur[:3]] = out.get(("revenue", cur[:3]), 0) + data["price_minor"]
        else:
            outcome = "vend_failure" if data.get("vend_status") == "failure" else "not_attempted"
        out["vends", outcome] = out.get(("vends", outcome), 0) + 1
    elif t == "refund" and isinstance(data.get("amount_minor"), int) and isinstance(cur, str):
        out["refunds", cur[:3]] = out.get(("refunds", cur[:3]), 0) + data["amount_minor"]


_COUNTERS = {"vends": ("vendwatch_business_vends", "outcome"),
             "revenue": ("vendwatch_business_revenue_minor", "currency"),
             "refunds": ("vendwatch_business_refunds_minor", "currency")}


def _counters() -> dict[tuple[str, str], float]:
    """Every label's value of the business counters now."""
    names = {name + "_total": (c, label) for c, (name, label) in _COUNTERS.items()}
    out: dict[tuple[str, str], float] = {}
    for fam in REGISTRY.collect():
        for sample in fam.samples:
            if sample.name in names:
                c, label = names[sample.name]
                out[c, sample.labels[label]] = sample.value
    return out


def _model(records: list[Record]) -> tuple[dict[str, tuple[Any, ...]], int, dict[tuple[str, str], int]]:
    """Rows by device after folding each record on its own, how many were set aside, and
    what the business counters gained."""
    rows: dict[str, list[Any]] = {}
    aside = 0
    sales: dict[tuple[str, str], int] = {}
    for r in records:
        try:
            e = msgspec.json.decode(r.value, type=ev.StoredEvent)
            data = msgspec.json.decode(e.data)
            occ, recv = e.occurred_at.timestamp(), e.received_at.timestamp()
            row = copy.deepcopy(rows.get(e.device_id)) or [e.device_id, e.site_id, None, None, None, None, 0, {}]
            _reference_fold(row[7], e.type, occ, data)
        except (msgspec.MsgspecError, LookupError, TypeError, AttributeError, ValueError):
            aside += 1
            continue
        if e.site_id:
            row[1] = e.site_id
        row[2] = recv if row[2] is None else min(row[2], recv)
        row[3] = recv if row[3] is None else max(row[3], recv)
        row[4] = occ if row[4] is None else max(row[4], occ)
        if e.seq is not None:
            row[5] = e.seq if row[5] is None else max(row[5], e.seq)
        row[6] += 1
        rows[e.device_id] = row
        _sales(data, e.type, sales)
    rows_out = {d: (*r[:7], msgspec.json.decode(msgspec.json.encode(r[7]))) for d, r in rows.items()}
    return rows_out, aside, {k: v for k, v in sales.items() if v}  # a counter gains nothing from 0


def _run(records: list[Record], cuts: list[int], bulk: bool,
         postgres: str | None = None) -> tuple[dict[str, tuple[Any, ...]], int, list[Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        if postgres:
            from vendwatch.state.postgres import PostgresDatabase

            store = StateStore(PostgresDatabase(postgres, pool_size=2))
        else:
            store = StateStore(SqliteDatabase(Path(tmp) / "state.db"))
        store.migrate()
        ctx = Context(Settings(data_dir=tmp), _state=store)
        proj = DeviceStateProjector(ctx)
        for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True):
            poll = records[a:b]
            if poll:
                proj.process(RecordBatch(None, join_records(poll)) if bulk else poll)  # type: ignore[arg-type]
        rows = {r[0]: (*r[:7], msgspec.json.decode(r[7]))
                for r in store.db.query("SELECT * FROM device_state ORDER BY device_id")}
        aside = len(DeadLetters(store.db).list(stage="device-state"))
        cps = store.db.query("SELECT name, data FROM checkpoints ORDER BY name")
        store.close()
        return rows, aside, [(n, bytes(d)) for n, d in cps]


def _check(stream: tuple[list[Record], list[int]], on_postgres: bool = False) -> None:
    records, cuts = stream
    want_rows, want_aside, want_sales = _model(records)
    ends = {}
    for r in records:
        ends[f"offsets:vendwatch-device-state:{r.topic}/{r.partition}"] = str(r.offset + 1).encode()
    for bulk in (True, False):
        before = _counters()
        if on_postgres:
            from tests.contract.pg_backend import fresh_schema

            with fresh_schema() as dsn:
                rows, aside, cps = _run(records, cuts, bulk, dsn)
        else:
            rows, aside, cps = _run(records, cuts, bulk)
        after = _counters()
        assert {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)} == want_sales
        assert rows == want_rows
        assert aside == want_aside
        assert dict(cps) == ends  # every record is covered by the positions, set aside or not


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream())
def test_the_stage_commits_the_rows_of_folding_each_event_on_its_own(stream: tuple[list[Record], list[int]]) -> None:
    _check(stream)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream())
def test_the_same_on_a_postgresql_state_store(stream: tuple[list[Record], list[int]]) -> None:
    _check(stream, on_postgres=True)
