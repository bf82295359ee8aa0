"""The fast (whole-batch) and slow (event-by-event) validation paths give the same answer."""

from __future__ import annotations

import gc
from datetime import datetime
from typing import Annotated

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ingest_support import ago, event

from vendwatch import events as ev
from vendwatch.config import load_settings
from vendwatch.ingest.validate import Parsed, Validator, parse

_V = Validator(load_settings(environ={}).ingest)


def _now() -> datetime:
    # at call time: a module-level "now" goes stale (events made later look "future")
    # once the suite has run longer than ingest.max_future_skew_s before reaching here
    return ev.utcnow()


_good = st.builds(lambda i: event("VM-1", "telemetry", {"cabinet_temp_c": 4.0, "x_vendor": i}, seq=i),
                  st.integers(0, 10**6))
_bad = st.sampled_from([
    event("VM-2"),
    event("VM-1", "telemetry", {"cabinet_temp_c": 900}),
    event("VM-1", occurred_at=ago(days=-1)),
    event("VM-1", occurred_at=ago(days=90)),
    {"event_id": "no-type", "device_id": "VM-1"},
    "not an object",
])


def _both(body: bytes) -> tuple[object, object]:
    now = _now()
    fast = _V.validate(parse(body), "VM-1", "S1", now)
    slow = _V.validate(Parsed(body, None, None), "VM-1", "S1", now)
    return fast, slow


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(_good, _good, _bad), max_size=12), st.booleans())
def test_paths_agree(events: list, repeat_first: bool) -> None:
    if repeat_first and events:
        events = [*events, events[0]]
    body = msgspec.json.encode({"events": events})
    fast, slow = _both(body)
    assert fast == slow


def test_all_good_batch_takes_the_fast_path() -> None:
    body = msgspec.json.encode({"events": [event("VM-1") for _ in range(3)]})
    parsed = parse(body)
    assert parsed.typed is not None and parsed.raw is None
    out = _V.validate(parsed, "VM-1", "S1", _now())
    assert len(out.accepted) == 3 and parsed.raw is None


def test_function_api_for_other_front_doors() -> None:
    from vendwatch.ingest.validate import quarantine_record, validate_batch
    from vendwatch.state.store import Device

    raws = [msgspec.Raw(msgspec.json.encode(e)) for e in (event("VM-1"), event("VM-2"), event("VM-1"))]
    v = validate_batch(raws, Device("VM-1", "S1", "active"), load_settings(environ={}).ingest, _now())
    assert v.accepted_index == [0, 2] and [r["index"] for r in v.rejected] == [1]
    rec = msgspec.json.decode(quarantine_record("VM-1", _now(), "bad topic", b"\xff not json"))
    assert rec["reason"] == "bad topic" and isinstance(rec["raw"], str)
    assert msgspec.json.decode(quarantine_record(None, _now(), "x", b'{"a": 1}'))["raw"] == {"a": 1}


def test_a_nul_character_in_device_text_is_refused_with_its_field() -> None:
    """PostgreSQL text (incident keys, state documents, dead letters) cannot hold U+0000: a
    device that sends one must get a clear rejection at the door, not dead letters or a
    stuck stage downstream on the scale-out backend."""
    bad = [
        event("VM-1", "fault", {"code": "sensor_malfunction", "component": "coin\u0000sensor"}),
        event("VM-1", "log", {"kind": "application", "message": "a\u0000b"}),
        event("VM-1", event_id="e-\u0000-1"),
    ]
    good = event("VM-1", "fault", {"code": "sensor_malfunction", "component": "coin sensor\t(left)"})
    body = msgspec.json.encode({"events": [*bad, good]})
    fast, slow = _both(body)
    assert fast == slow
    assert len(fast.accepted) == 1
    assert [r["index"] for r in fast.rejected] == [0, 1, 2]
    assert all("NUL (U+0000)" in r["reason"] for r in fast.rejected), fast.rejected


_NUL_IN_TEXT = [  # (type, data, where the reason points): the shapes device text takes in the payloads
    ("fault", {"code": "motor_jam", "component": "a\u0000"}, "`$.component`"),
    ("inventory", {"slots": [{"slot": "A1", "count": 1}, {"slot": "A\u00002", "count": 1}]}, "`$.slots[1].slot`"),
    ("refill", {"slots": [{"slot": "A\u00001"}]}, "`$.slots[0].slot`"),
    ("config", {"feature_flags": {"ok": True, "b\u0000": False}}, "`key` in `$.feature_flags`"),
    ("log", {"kind": "crash", "crash_dump": "x\u0000"}, "`$.crash_dump`"),
    ("dex_sales", {"read_id": "r\u0000", "slot": "A1", "period_start": "2026-01-01T00:00:00Z",
                   "period_end": "2026-01-02T00:00:00Z", "units": 1, "value_minor": 1}, "`$.read_id`"),
]


@pytest.mark.parametrize(("type_", "data", "where"), _NUL_IN_TEXT, ids=[c[0] for c in _NUL_IN_TEXT])
def test_a_nul_anywhere_in_device_text_is_refused_by_every_path(type_: str, data: dict, where: str) -> None:
    """Nested slots, map keys and optional fields too; the whole-batch path, the event-by-event
    path and the MQTT bridge's function API give the same reason, naming the field."""
    from vendwatch.ingest.validate import validate_batch
    from vendwatch.state.store import Device

    e = event("VM-1", type_, data)
    fast, slow = _both(msgspec.json.encode({"events": [e, event("VM-1")]}))
    bridge = validate_batch([msgspec.Raw(msgspec.json.encode(x)) for x in (e, event("VM-1"))],
                            Device("VM-1", "S1", "active"), load_settings(environ={}).ingest, _now())
    for out in (fast, slow, bridge):
        assert out.accepted_index == [1] and [r["index"] for r in out.rejected] == [0]
        assert out.rejected[0]["reason"] == (f"Expected text without NUL (U+0000) characters - at {where}"
                                             f" (in `data` of a `{type_}` event)")
    with pytest.raises(msgspec.ValidationError, match="NUL"):
        ev.decode_device_event(msgspec.json.encode(e))


def test_a_nul_outside_device_text_is_kept_as_sent() -> None:
    """Unknown fields are stored as sent (only typed device text is checked), and the six
    characters of an escaped backslash followed by ``u0000`` are no NUL."""
    body = msgspec.json.encode({"events": [event("VM-1", "telemetry", {"x_vendor": "a\u0000b", "k\u0000": 1}),
                                           event("VM-1", "log", {"kind": "crash", "message": "a\\u0000"})]})
    fast, slow = _both(body)
    assert fast == slow and len(fast.accepted) == 2 and not fast.rejected
    assert ev.decode_stored(fast.accepted[1].value).data == msgspec.Raw(b'{"kind":"crash","message":"a\\\\u0000"}')


@pytest.mark.parametrize("device_id", ["VM 1", "-VM", "x" * 129, "VM-1\u0000"])
def test_events_of_a_device_whose_id_breaks_the_id_rule_are_refused_on_both_paths(device_id: str) -> None:
    """The fast path checks the authenticated device's id once per request instead of a
    pattern per event: the answer must stay the event-by-event path's (schema refusal)."""
    body = msgspec.json.encode({"events": [event(device_id), event(device_id)]})
    now = _now()
    fast = _V.validate(parse(body), device_id, "S1", now)
    slow = _V.validate(Parsed(body, None, None), device_id, "S1", now)
    assert fast == slow and not fast.accepted
    assert [r["code"] for r in fast.rejected] == ["schema", "schema"] and "device_id" in fast.rejected[0]["reason"]


def test_events_waiting_for_their_commit_are_not_tracked_by_the_garbage_collector() -> None:
    # a request's events wait for the group commit; a tracked object per event made the
    # server's full collections (50-100 ms each) run about once a second under load
    body = msgspec.json.encode({"events": [event("VM-1", seq=i) for i in range(5)]})
    parsed = parse(body)
    out = _V.validate(parsed, "VM-1", "S1", _now())
    assert parsed.typed is not None and len(out.accepted) == 5
    assert not any(gc.is_tracked(e) for e in parsed.typed)
    assert not any(gc.is_tracked(p) for p in out.accepted)


# A valid payload of every type, then fields replaced by values that break or keep their
# rules (patterns, lengths, ranges, literals, required fields, nesting, types).
_VALID: dict[str, dict] = {
    "heartbeat": {"uptime_s": 5, "firmware_version": "4.2.1", "interval_s": 60},
    "telemetry": {"cabinet_temp_c": 4.0, "door_open": False, "motor_status": "idle", "cpu_pct": 20},
    "transaction": {"transaction_id": "t-1", "product_id": "p-1", "slot": "A1", "price_minor": 150, "currency": "EUR",
                    "payment_method": "card", "payment_status": "success", "vend_status": "success"},
    "refund": {"refund_id": "r-1", "transaction_id": "t-1", "amount_minor": 150, "currency": "EUR"},
    "inventory": {"slots": [{"slot": "A1", "product_id": "p-1", "count": 3, "capacity": 10}, {"slot": "A2", "count": 0}]},
    "stock_alert": {"slot": "A1", "product_id": "p-1", "level": "low", "count": 1},
    "refill": {"visit_id": "v-1", "technician_id": "tech@x", "slots": [{"slot": "A1", "product_id": "p-1", "added": 3}]},
    "fault": {"code": "motor_jam", "state": "raised", "component": "vend"},
    "security": {"kind": "shock", "magnitude_g": 2.5},
    "config": {"firmware_version": "4.2.1", "feature_flags": {"a": True}, "last_update_at": "2026-01-01T00:00:00Z"},
    "connectivity": {"location_id": "loc-1", "gps": {"lat": 1.0, "lon": 2.0}, "network": "4g", "signal_dbm": -70},
    "log": {"kind": "application", "level": "info", "message": "hello"},
    "dex_read": {"file_sha256": "a" * 64, "raw": "DXS*1", "currency": "EUR", "flags": ["x"], "units": 3},
    "dex_sales": {"read_id": "d-1", "slot": "A1", "period_start": "2026-01-01T00:00:00Z",
                  "period_end": "2026-01-02T00:00:00Z", "units": 1, "value_minor": 100, "currency": "EUR"},
    "dex_finding": {"kind": "cash_shortfall", "read_id": "d-1", "period_end": "2026-01-02T00:00:00Z", "expected": 5},
}
_ODD = [
    "", "a", "A1", "-a", "a b", "a\n", "p-1\n", "EUR", "EUR\n", "eur", "EURO", "ü", "x" * 128, "x" * 129, "x" * 257,
    "motor_jam", "Motor", "a" * 64, "A" * 64, "a" * 65, 0, -1, 5, 10**10, 1.5, -70.0, 200.0, -61.0, True, None, [], {},
    [{"slot": "A1", "count": 1}], [{"slot": "A1", "product_id": "-p", "count": 1}],
    [{"slot": "A1", "product_id": "p\n", "count": 1}], [{"slot": "A1", "product_id": "x" * 129, "count": 1}],
    [{"slot": "A1", "count": -1}], [{"slot": "A1"}], [{"slot": "A1", "count": 1}] * 513, ["a", "-b"],
    {"lat": 1.0, "lon": 200.0}, {"lat": 1.0}, {"x" * 257: True}, {"a": 1}, "2026-01-01T00:00:00Z",
    2**63 - 1, 2**63, -(2**63) - 1, 1e300, "12345678901234567890",
]
_ODD_VALUES = st.sampled_from(_ODD)


@st.composite
def _payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    type_ = draw(st.sampled_from(sorted(_VALID)))
    data = dict(_VALID[type_])
    keys = sorted({*data, *(f.name for f in msgspec.structs.fields(ev.PAYLOADS[type_]))}) + ["x_vendor"]
    for k in draw(st.lists(st.sampled_from(keys), max_size=3)):
        if draw(st.integers(0, 5)) == 0:
            data.pop(k, None)
        else:
            data[k] = draw(_ODD_VALUES)
    return type_, msgspec.json.encode(data)


def _one_by_one(type_: str, data: bytes) -> bool:
    try:
        ev.decode_payload(type_, data, nul_possible=False, big_numbers_possible=False)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False
    return True


def test_every_valid_sample_payload_is_accepted() -> None:
    assert set(_VALID) == set(ev.PAYLOADS)
    for type_, data in _VALID.items():
        raw = msgspec.json.encode(data)
        assert _one_by_one(type_, raw), type_
        assert ev.payloads_acceptable([type_], [raw]), type_


def test_each_field_replaced_or_left_out_gives_the_answer_of_decoding_alone() -> None:
    """Every field of every payload type, set to each odd value in turn or left out."""
    checked = 0
    for type_, valid in _VALID.items():
        for name in [f.name for f in msgspec.structs.fields(ev.PAYLOADS[type_])] + ["x_vendor"]:
            for value in [*_ODD, _DROP]:
                data = {k: v for k, v in valid.items() if k != name}
                if value is not _DROP:
                    data[name] = value
                raw = msgspec.json.encode(data)
                assert ev.payloads_acceptable([type_], [raw]) == _one_by_one(type_, raw), (type_, name, value)
                checked += 1
    assert checked > 3000


_DROP = object()


@settings(max_examples=600, deadline=None)
@given(st.lists(_payloads(), min_size=1, max_size=4))
def test_a_batch_of_payloads_is_acceptable_exactly_when_each_decodes_alone(payloads: list[tuple[str, bytes]]) -> None:
    """The fast path decodes a request's payloads one decoder call per type, into structs
    without patterns, and checks each distinct patterned value once: it must accept exactly
    what decoding each payload with its own type accepts."""
    want = all(_one_by_one(t, d) for t, d in payloads)
    assert ev.payloads_acceptable([t for t, _ in payloads], [msgspec.Raw(d) for _, d in payloads]) == want


_Pat = Annotated[str, msgspec.Meta(pattern="^a")]


class _InDict(msgspec.Struct):
    m: dict[_Pat, int]


class _InUnion(msgspec.Struct):
    u: _Pat | int | None = None


class _Nested(msgspec.Struct):
    items: list[_InUnion] | None = None
    x: list[_Pat] = []


def test_patterns_the_fast_path_cannot_walk_send_the_payload_one_by_one() -> None:
    assert ev._pattern_paths(mi.type_info(_InDict)) is None
    assert ev._pattern_paths(mi.type_info(_InUnion)) is None
    assert ev._pattern_paths(mi.type_info(_Nested)) is None
    assert ev._pattern_paths(mi.type_info(list[_Pat])) == [("^a", ("[]",))]


@pytest.mark.parametrize("number", ["1e+400", "-2.5E+999", "1e0400", "12345678901234567890", "-9223372036854775809"])
def test_the_byte_scan_sees_every_number_no_stage_can_hold(number: str) -> None:
    """The scan deletes signs before it looks (one search fewer): signed exponents must still be seen."""
    body = msgspec.json.encode({"events": [event("VM-1", "telemetry", {"cpu_pct": 1})]})
    body = body.replace(b'"cpu_pct":1', b'"cpu_pct":1,"x":' + number.encode())
    assert ev.may_break_contract(body)
    fast, slow = _both(body)
    assert fast == slow and not fast.accepted and "out of range" in fast.rejected[0]["reason"]


def test_the_fast_path_stores_the_records_the_event_by_event_path_stores() -> None:
    """The fast path builds records positionally (a twin of ``StoredEvent``): the bytes must
    be the same, defaults omitted the same way (no seq, no site, a late event)."""
    assert [f.name for f in msgspec.structs.fields(ev.StoredEvent)] == [
        "event_id", "device_id", "type", "occurred_at", "received_at", "data", "seq", "site_id", "schema_version", "late"]
    events = [event("VM-1", seq=7), event("VM-1", "telemetry", {"cpu_pct": 3}), event("VM-1", occurred_at=ago(hours=2))]
    body = msgspec.json.encode({"events": events})
    now = _now()
    for site in ("S1", None):
        fast = _V.validate(parse(body), "VM-1", site, now)
        slow = _V.validate(Parsed(body, None, None), "VM-1", site, now)
        assert [p.value for p in fast.accepted] == [p.value for p in slow.accepted]
        stored = [ev.decode_stored(p.value) for p in fast.accepted]
        assert [s.seq for s in stored] == [7, None, None] and [s.late for s in stored] == [False, False, True]
        assert all(s.site_id == site for s in stored)
