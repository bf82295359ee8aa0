"""ETL raw -> analytics: cleansing, incremental, idempotent, schema evolution, incidents."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from pyiceberg.schema import Schema
from tests.lake.conftest import drain
from tests.lake.factory import T0, heartbeat, inventory, publish, sale, stored, telemetry

from vendwatch import events as ev
from vendwatch.lake import schemas
from vendwatch.lake.catalog import open_catalog
from vendwatch.lake.etl import Etl, run_etl
from vendwatch.lake.query import LakeSQL


def q(settings, sql):
    return LakeSQL(settings).run(sql).rows()


def _with(e: ev.StoredEvent, **changes) -> ev.StoredEvent:
    return ev.StoredEvent(**{**{f: getattr(e, f) for f in e.__struct_fields__}, **changes})


def _raw_payload(type_: str, data: dict, **kw) -> ev.StoredEvent:
    """An event whose payload is given as JSON as-is (to test what the protocol struct would not build)."""
    base = stored("heartbeat", ev.Heartbeat(), **kw)
    return _with(base, type=type_, event_id=f"raw-{type_}-{base.occurred_at.timestamp()}",
                 data=msgspec.Raw(msgspec.json.encode(data)))


def test_transactions_cleansed(ctx):
    s1 = sale(T0, txid="t1")
    dup_event = _with(s1)  # same event id twice (a replay through a second collector)
    retry = _with(sale(T0 + timedelta(seconds=5), txid="t1"), event_id="other-id")  # same transaction id
    skewed = sale(T0 + timedelta(hours=5), txid="t2", received=T0 + timedelta(hours=1))  # device clock 4h ahead
    failed = sale(T0 + timedelta(minutes=3), txid="t3", paid=True, vended=False)
    yen = _raw_payload("transaction", {"transaction_id": "t4", "product_id": "tea", "slot": "B1", "price_minor": 150,
                                        "currency": "JPY", "payment_method": "CASH", "payment_status": "success",
                                        "vend_status": "success"}, at=T0 + timedelta(minutes=4))
    negative = _raw_payload("transaction", {"transaction_id": "t5", "product_id": "x", "slot": "B2", "price_minor": -5,
                                            "currency": "EUR", "payment_method": "card", "payment_status": "success",
                                            "vend_status": "success"}, at=T0 + timedelta(minutes=5))
    publish(ctx.log, [s1, dup_event, retry, skewed, failed, yen, negative])
    drain(ctx)
    run_etl(ctx.settings)
    rows = {r["transaction_id"]: r for r in q(ctx.settings, "SELECT * FROM analytics.transactions")}
    assert sorted(rows) == ["t1", "t2", "t3", "t4", "t5"]
    assert rows["t1"]["event_id"] == s1.event_id and rows["t1"]["amount"] == 2.5
    assert rows["t2"]["clock_skewed"] and rows["t2"]["event_time"] == skewed.received_at
    assert rows["t3"]["sold"] is False and rows["t3"]["vend_status"] == "failure"
    assert rows["t4"]["amount"] == 150.0 and rows["t4"]["payment_method"] == "cash"  # JPY has no minor unit
    assert rows["t5"]["price_minor"] is None and rows["t5"]["amount"] is None  # impossible value dropped


def test_telemetry_hourly_units_and_impossible_values(ctx):
    items = [
        telemetry(T0, temp=4.0),
        telemetry(T0 + timedelta(minutes=10), temp=6.0),
        _raw_payload("telemetry", {"cabinet_temp_f": 41.0, "door_open": True}, at=T0 + timedelta(minutes=20)),
        _raw_payload("telemetry", {"cabinet_temp_c": 900.0, "voltage_v": 5000}, at=T0 + timedelta(minutes=30)),
    ]
    publish(ctx.log, items)
    drain(ctx)
    run_etl(ctx.settings)
    (row,) = q(ctx.settings, "SELECT * FROM analytics.telemetry_hourly")
    assert row["samples"] == 4
    assert row["cabinet_temp_min"] == 4.0 and row["cabinet_temp_max"] == 6.0
    assert row["cabinet_temp_avg"] == pytest.approx(5.0)  # 41 F = 5 C; 900 C dropped
    assert row["rejected_values"] == 2
    assert row["door_open_minutes"] == pytest.approx(60.0 / 3)  # 1 of 3 samples that report the door


def test_inventory_stockouts_faults_security_and_device_daily(ctx):
    items = [
        heartbeat(T0),
        inventory(T0 + timedelta(minutes=1), {"A1": 3, "A2": 0}),
        inventory(T0 + timedelta(hours=2), {"A1": 0, "A2": 0}),
        stored("refill", ev.Refill(slots=[ev.RefillSlot(slot="A2", added=10, count_after=10)]), at=T0 + timedelta(hours=3)),
        stored("fault", ev.Fault(code="motor_jam", slot="A1"), at=T0 + timedelta(hours=4)),
        stored("security", ev.Security(kind="door_forced", magnitude_g=2.5), at=T0 + timedelta(hours=5)),
        sale(T0 + timedelta(minutes=30)),
    ]
    publish(ctx.log, items)
    drain(ctx)
    run_etl(ctx.settings)
    inv = q(ctx.settings, "SELECT slot, count, source FROM analytics.inventory ORDER BY observed_at, slot")
    assert inv == [
        {"slot": "A1", "count": 3, "source": "inventory"}, {"slot": "A2", "count": 0, "source": "inventory"},
        {"slot": "A1", "count": 0, "source": "inventory"}, {"slot": "A2", "count": 0, "source": "inventory"},
        {"slot": "A2", "count": 10, "source": "refill"},
    ]
    outs = q(ctx.settings, "SELECT slot, started_at, ended_at, duration_s FROM analytics.stockouts ORDER BY slot")
    assert outs[0]["slot"] == "A1" and outs[0]["ended_at"] is None  # still out
    assert outs[1]["slot"] == "A2" and outs[1]["duration_s"] == pytest.approx(3 * 3600 - 60)
    assert q(ctx.settings, "SELECT code, state, slot FROM analytics.faults") == [{"code": "motor_jam", "state": "raised", "slot": "A1"}]
    assert q(ctx.settings, "SELECT kind, magnitude_g FROM analytics.security_events") == [{"kind": "door_forced", "magnitude_g": 2.5}]
    (d,) = q(ctx.settings, "SELECT * FROM analytics.device_daily")
    assert (d["events"], d["heartbeats"], d["sales"], d["revenue_minor"], d["faults"], d["security_events"]) == (7, 1, 1, 250, 1, 1)
    assert 0 < d["uptime_pct"] <= 100


def _state(settings):
    t = {}
    cat = open_catalog(settings)
    for name in schemas.ANALYTICS:
        tb = cat.load_table(name)
        t[name] = (tb.current_snapshot().snapshot_id, sorted(map(str, tb.scan().to_arrow().to_pylist())))
    return t


def test_second_run_changes_nothing(ctx):
    publish(ctx.log, [sale(T0), heartbeat(T0), inventory(T0, {"A1": 0})])
    drain(ctx)
    run_etl(ctx.settings)
    before = _state(ctx.settings)
    rep = run_etl(ctx.settings)
    assert set(rep.tables.values()) == {"unchanged"}
    assert _state(ctx.settings) == before


def test_incremental_rebuilds_only_touched_days(ctx):
    publish(ctx.log, [sale(T0, txid="a"), sale(T0 + timedelta(days=1), txid="b")])
    drain(ctx)
    run_etl(ctx.settings)
    tx = open_catalog(ctx.settings).load_table("analytics.transactions")
    files_day1 = {t.file.file_path for t in tx.scan().plan_files() if t.file.partition[0] == T0.date()}
    # a late event for day 2 only
    publish(ctx.log, [sale(T0 + timedelta(days=1, hours=2), txid="c")])
    drain(ctx)
    rep = run_etl(ctx.settings)
    day2 = (T0 + timedelta(days=1)).date().isoformat()
    assert rep.days == [day2]
    tx.refresh()
    assert {t.file.file_path for t in tx.scan().plan_files() if t.file.partition[0] == T0.date()} == files_day1
    assert q(ctx.settings, "SELECT count(*) AS n FROM analytics.transactions") == [{"n": 3}]


def test_new_payload_field_does_not_break_anything(ctx):
    s = sale(T0)
    data = msgspec.json.decode(s.data)
    data["loyalty_card"] = "L-1"  # a field this version does not know
    publish(ctx.log, [_with(s, data=msgspec.Raw(msgspec.json.encode(data)))])
    drain(ctx)
    run_etl(ctx.settings)
    assert q(ctx.settings, "SELECT count(*) AS n FROM analytics.transactions WHERE sold") == [{"n": 1}]
    assert q(ctx.settings, "SELECT json_extract_string(payload, '$.loyalty_card') AS c FROM raw.events") == [{"c": "L-1"}]


def test_analytics_table_gains_a_column_by_schema_evolution(ctx):
    # an older release created analytics.transactions without `failure_reason` and wrote a row
    cat = open_catalog(ctx.settings)
    tdef = schemas.TABLES["analytics.transactions"]
    old = Schema(*[f for f in tdef.schema.fields if f.name != "failure_reason"])
    cat.create_table("analytics.transactions", schema=old, partition_spec=tdef.partition_spec, properties=tdef.properties)
    publish(ctx.log, [sale(T0, txid="old")])
    drain(ctx)
    run_etl(ctx.settings)
    table = cat.load_table("analytics.transactions")
    names = [f.name for f in table.schema().fields]
    assert "failure_reason" in names
    assert len(table.schemas()) == 2  # evolved in place, not recreated
    failed = _raw_payload("transaction", {"transaction_id": "new", "product_id": "p", "slot": "A1", "price_minor": 1,
                                          "currency": "EUR", "payment_method": "card", "payment_status": "failure",
                                          "vend_status": "not_attempted", "failure_reason": "card_declined"},
                          at=T0 + timedelta(days=1))
    publish(ctx.log, [failed])
    drain(ctx)
    run_etl(ctx.settings)
    rows = q(ctx.settings, "SELECT transaction_id, failure_reason FROM analytics.transactions ORDER BY transaction_id")
    assert rows == [{"transaction_id": "new", "failure_reason": "card_declined"}, {"transaction_id": "old", "failure_reason": None}]


def test_incidents_from_the_incident_store(ctx):
    """The real incident store, filled by the incident service as the orchestrator fills it."""
    from tests.incidents.incident_helpers import make_signal

    from vendwatch.delivery.clock import VirtualClock
    from vendwatch.incidents.service import IncidentService

    clock = VirtualClock(T0.timestamp())
    svc = IncidentService(ctx.state, ctx.settings.incidents, clock)
    with ctx.state.db.transaction() as tx:
        first = svc.handle_signal(tx, make_signal(clock, "cooling/dev-1", rule_id="cooling", device_id="dev-1"))
        svc.handle_signal(tx, make_signal(clock, "cooling/dev-2", rule_id="cooling", device_id="dev-2"))
    [i1] = first.incidents
    clock.advance(60)
    svc.acknowledge(i1.incident_id, "alice")
    clock.advance(540)
    svc.resolve(i1.incident_id, "alice", "fixed")
    Etl(ctx.settings, state=ctx.state).run()
    got = q(ctx.settings, "SELECT device_id, status, time_to_ack_s, time_to_resolve_s FROM analytics.incidents ORDER BY 1")
    assert got == [{"device_id": "dev-1", "status": "resolved", "time_to_ack_s": 60.0, "time_to_resolve_s": 600.0},
                   {"device_id": "dev-2", "status": "open", "time_to_ack_s": None, "time_to_resolve_s": None}]
    # unchanged incident list: nothing committed
    assert Etl(ctx.settings, state=ctx.state).run().tables["analytics.incidents"] == "unchanged"
    clock.advance(60)
    with ctx.state.db.transaction() as tx:
        svc.handle_signal(tx, make_signal(clock, "cooling/dev-3", rule_id="cooling", device_id="dev-3"))
    assert Etl(ctx.settings, state=ctx.state).run().tables["analytics.incidents"] == "3 rows"


def test_without_incident_store_the_table_is_empty(ctx):
    run_etl(ctx.settings, state=ctx.state)
    assert q(ctx.settings, "SELECT count(*) AS n FROM analytics.incidents") == [{"n": 0}]


def test_dimensions(ctx):
    ctx.state.add_device("dev-1", site_id="site-a", model="VX-200")
    publish(ctx.log, [sale(T0, device="dev-1"), heartbeat(T0, device="dev-2", site="site-b")])
    drain(ctx)
    run_etl(ctx.settings, state=ctx.state)
    devs = q(ctx.settings, "SELECT device_id, site_id, model, events, firmware_version FROM analytics.dim_devices ORDER BY 1")
    assert devs == [{"device_id": "dev-1", "site_id": "site-a", "model": "VX-200", "events": 1, "firmware_version": None},
                    {"device_id": "dev-2", "site_id": "site-b", "model": None, "events": 1, "firmware_version": "1.2.3"}]
    assert q(ctx.settings, "SELECT site_id, devices FROM analytics.dim_sites ORDER BY 1") == [
        {"site_id": "site-a", "devices": 1}, {"site_id": "site-b", "devices": 1}]
    assert q(ctx.settings, "SELECT product_id, transactions FROM analytics.dim_products") == [{"product_id": "cola", "transactions": 1}]


@pytest.mark.parametrize("payload", [
    '{"a": "x", "b": 1.50, "c": true, "d": null, "e": {"f": [1, 2]}, "g": [], "h": "é\\u00e9"}',
    '{"a": 7}', '{}', '[]', '"text"', '{"b": -0.0, "c": "false", "e": "{}"}', None,
])
def test_payload_fields_from_one_parse_equal_one_at_a_time(payload):
    """``transforms.Payload`` reads many fields from one JSON parse; each must be what reading it
    on its own gives (strings, numbers, booleans, null, objects, missing fields, a NULL payload)."""
    import duckdb

    from vendwatch.lake.transforms import Payload

    paths = ("a", "b", "c", "d", "e", "g", "h", "missing")
    p = Payload(*paths)
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT CAST(? AS VARCHAR) AS payload", [payload])
    one = con.execute("SELECT " + ", ".join(f"json_extract_string(payload, '$.{k}')" for k in paths)
                      + " FROM t").fetchone()
    many = con.execute(f"SELECT {', '.join(p[k] for k in paths)} FROM (SELECT {p.parse()} FROM t)").fetchone()
    assert many == one
