"""One decoding contract: whatever the collector accepts, every stage decodes and processes.

Hypothesis writes hostile device events as JSON *text* (so numbers like ``1e400`` or a
400-digit integer, which no Python value produces, are in play), with hostile unknown
fields, strings and nesting. Each event the collector's validator accepts is then fed
to every stage's own decoding and processing: device state (folded and written to the
state store), the detector (decoded, evaluated by the default rule pack, state encoded
for its checkpoint), the lake writer (decoded and turned into the raw table's Arrow
rows) and the router (its envelope, encoded as the outbox stores it).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.ingest_support import settings as vw_settings

from vendwatch import events as ev
from vendwatch.bus.base import EVENTS, Record
from vendwatch.config import IngestSettings
from vendwatch.detect.role import _data, _lean, build_engine
from vendwatch.ingest.validate import BodyError, Validator, parse
from vendwatch.lake.writer import EventColumns
from vendwatch.route.envelope import from_record
from vendwatch.runtime import Context
from vendwatch.state.projector import DeviceStateProjector

_NOW = datetime.now(UTC)

# --- JSON text, hostile where it can be -----------------------------------------------------
_number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.from_regex(r"-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
)
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_string = _text.map(lambda s: json.dumps(s, ensure_ascii=False))
_scalar = st.one_of(_number, _string, st.sampled_from(["true", "false", "null"]))
_key = st.one_of(_text, st.sampled_from(["at", "slot", "code", "state", "count", "kind", "health", "stock"]))


def _compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arr = st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
    obj = st.lists(st.tuples(_key.map(json.dumps), children), max_size=4).map(
        lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")
    return st.one_of(arr, obj)


_value = st.recursive(_scalar, _compound, max_leaves=12)

# a valid payload per type, so most generated events pass the typed checks and reach the stages
_BASE: dict[str, dict[str, Any]] = {
    "heartbeat": {"uptime_s": 5, "firmware_version": "1.2.3", "interval_s": 60},
    "telemetry": {"cabinet_temp_c": 4.5, "cpu_pct": 10, "motor_status": "idle", "door_open": False},
    "transaction": {"transaction_id": "t1", "product_id": "p1", "slot": "A1", "price_minor": 150, "currency": "EUR",
                    "payment_method": "card", "payment_status": "success", "vend_status": "failure"},
    "refund": {"refund_id": "r1", "transaction_id": "t1", "amount_minor": 150, "currency": "EUR"},
    "inventory": {"slots": [{"slot": "A1", "product_id": "p1", "count": 0, "capacity": 10, "low_threshold": 2}]},
    "stock_alert": {"slot": "A1", "level": "out", "count": 0},
    "refill": {"visit_id": "v1", "slots": [{"slot": "A1", "added": 5, "count_after": 5}]},
    "fault": {"code": "motor_jam", "state": "raised", "component": "motor", "slot": "A1"},
    "security": {"kind": "door_forced", "magnitude_g": 3.5},
    "config": {"firmware_version": "2.0", "update_status": "failure", "error": "e"},
    "connectivity": {"network": "4g", "signal_dbm": -120, "gps": {"lat": 1.0, "lon": 2.0}},
    "log": {"kind": "crash", "level": "error", "message": "boom"},
}


@st.composite
def _event_text(draw: st.DrawFn) -> tuple[str, bytes]:
    type_ = draw(st.sampled_from(sorted(_BASE)))
    fields = {k: json.dumps(v) for k, v in _BASE[type_].items()}
    for k in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)):
        fields[k] = draw(_value)  # a known field with any value: mostly refused, sometimes not
    for k, v in draw(st.lists(st.tuples(_key, _value), max_size=4)):
        fields.setdefault(k, v)  # unknown fields are kept whatever they hold
    data = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
    at = (_NOW - timedelta(seconds=draw(st.integers(0, 3600)))).isoformat()
    eid = draw(_text.filter(bool))
    body = (f'{{"events":[{{"event_id":{json.dumps(eid)},"device_id":"VM-1","type":"{type_}",'
            f'"occurred_at":"{at}","seq":{draw(st.integers(0, 2**63 - 1))},"data":{data}}}]}}')
    return type_, body.encode()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stages(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Device state on both state stores (PostgreSQL TEXT refuses what SQLite takes, e.g. NUL)."""
    with contextlib.ExitStack() as stack:
        over: dict[str, Any] = {}
        if request.param == "postgres":
            from tests.contract.pg_backend import fresh_schema

            over = {"state.backend": "postgres", "state.postgres_dsn": stack.enter_context(fresh_schema())}
        ctx = Context(vw_settings(tmp_path_factory.mktemp("contract"), **over))
        yield ctx, DeviceStateProjector(ctx), build_engine(ctx)
        ctx.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(_event_text())
def test_every_stage_processes_what_the_collector_accepts(stages: Any, generated: tuple[str, bytes]) -> None:
    ctx, projector, engine = stages
    _type, body = generated
    try:
        parsed = parse(body)
    except BodyError:
        return  # the whole body is refused with a 400: nothing reaches a stage
    out = Validator(IngestSettings()).validate(parsed, "VM-1", "SITE-1", _NOW)
    if not out.accepted:
        return
    [pending] = out.accepted
    rec = Record(EVENTS, 0, 1, "VM-1", pending.value, 0)

    # device state: folded and written
    with ctx.state.db.transaction() as tx:
        projector.apply(tx, [rec])
    assert ctx.state.get_device_state("VM-1") is not None

    # detector: the role's decoders, the default rule pack, the state its checkpoint stores
    e = _lean.decode(rec.value)
    data = _data.decode(e.data)
    engine.process(e.event_id, e.device_id, e.site_id, e.type, e.occurred_at.timestamp(), data, 0)
    engine.advance(e.occurred_at.timestamp() + 86_400)
    for sig in engine.drain():
        msgspec.json.encode(sig)
    for dev in list(engine.devices.values()):
        engine.encode_device(dev)

    # lake writer: the raw table's rows
    cols = EventColumns()
    assert cols.add_many([rec]) == 1
    assert cols.to_arrow().num_rows == 1

    # router: the envelope of the record, encoded as the outbox stores it
    msgspec.json.encode(from_record(rec.value, EVENTS, 0, 1))


@pytest.mark.parametrize("value", ["1e400", "-1e400", "9" * 400, "[" + "9" * 20 + "]", '{"a":' + "1" * 30 + "}"])
def test_numbers_no_stage_can_hold_are_refused_by_the_collector(value: str) -> None:
    body = (f'{{"events":[{{"event_id":"e1","device_id":"VM-1","type":"telemetry",'
            f'"occurred_at":"{_NOW.isoformat()}","data":{{"cpu_pct":1,"x":{value}}}}}]}}').encode()
    out = Validator(IngestSettings()).validate(parse(body), "VM-1", "SITE-1", _NOW)
    assert not out.accepted
    assert out.rejected[0]["code"] == "schema" and "out of range" in out.rejected[0]["reason"]


def test_stored_events_keep_unknown_fields(tmp_path: Path) -> None:
    body = (f'{{"events":[{{"event_id":"e1","device_id":"VM-1","type":"telemetry",'
            f'"occurred_at":"{_NOW.isoformat()}","data":{{"cpu_pct":1,"x_new":{{"a":[1,2.5,"z"]}}}}}}]}}').encode()
    [p] = Validator(IngestSettings()).validate(parse(body), "VM-1", "SITE-1", _NOW).accepted
    assert msgspec.json.decode(bytes(ev.decode_stored(p.value).data))["x_new"] == {"a": [1, 2.5, "z"]}
