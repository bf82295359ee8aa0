"""Device protocol v1: the one definition of the event envelope and every payload type.

The collector, simulator, detector, lake and docs all use these definitions. The
envelope is decoded with ``data`` kept as raw JSON: the typed payload struct
validates it, but the raw bytes are what is stored, so fields a newer firmware sends
that this version does not know are preserved, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from itertools import chain
from operator import attrgetter, is_not
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
import msgspec.inspect as mi
from msgspec import Meta, Raw, Struct

SCHEMA_VERSION = 1

# --- constrained scalar types -------------------------------------------------
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=ID_PATTERN)]
# No U+0000 in device text: PostgreSQL text and jsonb (the scale-out state store) cannot
# hold it, and no firmware means it; refused at the door with the field's name. Not a
# msgspec ``pattern``: a regex per text field made each one ~4x dearer to decode, for a
# character JSON can only carry as the escape ``\u0000``. The types are marked instead
# (``no_nul``); ``nul_field`` walks a decoded payload for the marked fields, and only
# when its bytes hold that escape (``may_hold_nul``). The JSON Schema keeps the pattern.
_NO_NUL = r"^[^\x00]*$"


def _no_nul(**constraints: Any) -> Meta:
    return Meta(**constraints, extra_json_schema={"pattern": _NO_NUL}, extra={"no_nul": True})


EventId = Annotated[str, _no_nul(min_length=1, max_length=128)]
ShortText = Annotated[str, _no_nul(max_length=256)]
Text = Annotated[str, _no_nul(max_length=8192)]
Celsius = Annotated[float, Meta(ge=-60, le=150)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Volts = Annotated[float, Meta(ge=0, le=1000)]
Minor = Annotated[int, Meta(ge=0, le=10_000_000_00)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Count = Annotated[int, Meta(ge=0, le=100_000)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
SensorHealth = Literal["ok", "degraded", "failed"]


class _Payload(Struct, kw_only=True, omit_defaults=True):
    """Base for payloads; unknown fields are ignored by validation (and kept in storage)."""


# --- 1. machine health ---------------------------------------------------------
class Heartbeat(_Payload, kw_only=True):
    uptime_s: Annotated[int, Meta(ge=0)] | None = None
    firmware_version: ShortText | None = None
    interval_s: Annotated[int, Meta(ge=1, le=86_400)] | None = None


class Telemetry(_Payload, kw_only=True):
    cabinet_temp_c: Celsius | None = None
    refrigeration_temp_c: Celsius | None = None
    power_on: bool | None = None
    voltage_v: Volts | None = None
    door_open: bool | None = None
    motor_status: Literal["idle", "running", "jammed"] | None = None
    coin_sensor: SensorHealth | None = None
    bill_validator: SensorHealth | None = None
    product_sensor: SensorHealth | None = None
    cpu_pct: Percent | None = None
    mem_pct: Percent | None = None
    disk_pct: Percent | None = None


# --- 2. transactions -----------------------------------------------------------
class Transaction(_Payload, kw_only=True):
    transaction_id: Id
    product_id: Id
    slot: ShortText
    price_minor: Minor
    currency: Currency
    payment_method: Literal["cash", "card", "qr", "mobile"]
    payment_status: Literal["success", "failure"]
    vend_status: Literal["success", "failure", "not_attempted"]
    failure_reason: ShortText | None = None


class Refund(_Payload, kw_only=True):
    refund_id: Id
    transaction_id: Id
    amount_minor: Minor
    currency: Currency
    reason: ShortText | None = None


# --- 3. inventory --------------------------------------------------------------
class SlotState(Struct, kw_only=True, omit_defaults=True):
    slot: ShortText
    product_id: Id | None = None
    count: Count
    capacity: Count | None = None
    low_threshold: Count | None = None
    price_minor: Minor | None = None


class Inventory(_Payload, kw_only=True):
    slots: Annotated[list[SlotState], Meta(max_length=512)]


class StockAlert(_Payload, kw_only=True):
    slot: ShortText
    product_id: Id | None = None
    level: Literal["low", "out", "ok"]
    count: Count | None = None


class RefillSlot(Struct, kw_only=True, omit_defaults=True):
    slot: ShortText
    product_id: Id | None = None
    added: Count = 0
    count_after: Count | None = None


class Refill(_Payload, kw_only=True):
    visit_id: Id | None = None
    phase: Literal["started", "completed"] = "completed"
    technician_id: Id | None = None
    slots: Annotated[list[RefillSlot], Meta(max_length=512)] = []
    cash_collected_minor: Minor | None = None  # emptied from the cash box at this visit (cash accountability)


# --- 4. faults -----------------------------------------------------------------
class Fault(_Payload, kw_only=True):
    # known codes: motor_jam, payment_device_failure, cooling_failure, sensor_malfunction,
    # coin_mech_failure, bill_validator_failure, display_failure, power_supply_failure
    code: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9_.]+$")]
    state: Literal["raised", "cleared"] = "raised"
    component: ShortText | None = None
    slot: ShortText | None = None
    detail: Text | None = None


# --- 5. security ---------------------------------------------------------------
class Security(_Payload, kw_only=True):
    kind: Literal[
        "door_unauthorized",
        "door_forced",
        "shock",
        "vibration",
        "power_cut",
        "firmware_integrity_failed",
        "payment_attempts_failed",
    ]
    magnitude_g: Annotated[float, Meta(ge=0, le=1000)] | None = None
    attempts: Count | None = None
    detail: Text | None = None


# --- 6. configuration and firmware ---------------------------------------------
class Config(_Payload, kw_only=True):
    firmware_version: ShortText | None = None
    config_version: ShortText | None = None
    feature_flags: Annotated[dict[ShortText, bool], Meta(max_length=256)] | None = None
    last_update_at: datetime | None = None
    update_status: Literal["started", "success", "failure"] | None = None
    target_version: ShortText | None = None
    error: Text | None = None


# --- 7. location and connectivity ----------------------------------------------
class Gps(Struct, kw_only=True):
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]


class Connectivity(_Payload, kw_only=True):
    location_id: Id | None = None
    gps: Gps | None = None
    network: Literal["3g", "4g", "5g", "ethernet", "wifi", "lora", "other"] | None = None
    signal_dbm: Annotated[float, Meta(ge=-200, le=0)] | None = None
    latency_ms: Annotated[float, Meta(ge=0, le=600_000)] | None = None


# --- 8. logs and diagnostics ---------------------------------------------------
class Log(_Payload, kw_only=True):
    kind: Literal["application", "system", "crash", "startup", "shutdown"]
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    message: Text = ""
    crash_dump: Annotated[str, _no_nul(max_length=65_536)] | None = None


# --- 9. EVA-DTS (DEX) audit reads (written by the collector from ``POST /v1/dex``) ---
DexCode = Annotated[str, Meta(max_length=64)]


class DexRead(_Payload, kw_only=True):
    """One audit read: the file (for audit), the machine, and totals of the period since the previous read."""

    file_sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
    raw: Annotated[str, Meta(max_length=100_000)]
    read_at: datetime | None = None  # the machine's clock (ID5/EA3), taken as UTC
    period_start: datetime | None = None  # the previous read's time; None for a baseline
    machine_serial: ShortText | None = None
    board_serial: ShortText | None = None
    currency: Currency | None = None
    flags: Annotated[list[DexCode], Meta(max_length=32)] = []  # lf_line_ends, crc_byte_swapped
    findings: Annotated[list[DexCode], Meta(max_length=32)] = []  # first_read, board_replaced, counter_reset, missed_reads
    missed_reads: Annotated[int, Meta(ge=0)] = 0
    units: Annotated[int, Meta(ge=0)] = 0  # paid vends in the period (VA1)
    value_minor: Annotated[int, Meta(ge=0)] = 0
    cash_value_minor: Annotated[int, Meta(ge=0)] = 0  # CA2
    cashless_value_minor: Annotated[int, Meta(ge=0)] = 0  # DA2
    cash_in_minor: Annotated[int, Meta(ge=0)] = 0  # CA3 coins and bills taken
    cash_to_box_minor: Annotated[int, Meta(ge=0)] = 0  # CA3 what the cash box should hold more
    cash_dispensed_minor: Annotated[int, Meta(ge=0)] = 0  # CA4 change paid out
    cabinet_temp_c: Celsius | None = None  # MA5 TEMP


class DexSales(_Payload, kw_only=True):
    """Sales of one slot between two audit reads (differences of the DEX counters)."""

    read_id: EventId  # event_id of the dex_read that produced it
    slot: ShortText
    product_id: ShortText | None = None
    period_start: datetime
    period_end: datetime
    units: Annotated[int, Meta(ge=0)]
    value_minor: Annotated[int, Meta(ge=0)]
    currency: Currency | None = None
    cash_units: Annotated[int, Meta(ge=0)] | None = None
    cash_value_minor: Annotated[int, Meta(ge=0)] | None = None
    card_units: Annotated[int, Meta(ge=0)] | None = None
    card_value_minor: Annotated[int, Meta(ge=0)] | None = None
    counter_reset: bool = False


class DexFinding(_Payload, kw_only=True):
    """A discrepancy between an audit read and telemetry or cash collection (``vendwatch dex reconcile``)."""

    kind: Literal["sales_exceed_telemetry", "telemetry_exceeds_sales", "cash_shortfall"]
    read_id: EventId
    period_end: datetime
    period_start: datetime | None = None
    slot: ShortText | None = None
    expected: Annotated[int, Meta(ge=0)] = 0  # what the audit says: units, or minor units of cash
    actual: Annotated[int, Meta(ge=0)] = 0  # what telemetry reported / what was collected
    detail: Text = ""


PAYLOADS: dict[str, type[_Payload]] = {
    "heartbeat": Heartbeat,
    "telemetry": Telemetry,
    "transaction": Transaction,
    "refund": Refund,
    "inventory": Inventory,
    "stock_alert": StockAlert,
    "refill": Refill,
    "fault": Fault,
    "security": Security,
    "config": Config,
    "connectivity": Connectivity,
    "log": Log,
    "dex_read": DexRead,
    "dex_sales": DexSales,
    "dex_finding": DexFinding,
}
EventType = Literal[
    "heartbeat", "telemetry", "transaction", "refund", "inventory", "stock_alert",
    "refill", "fault", "security", "config", "connectivity", "log", "dex_read", "dex_sales",
    "dex_finding",
]  # fmt: skip

CATEGORY: dict[str, str] = {
    "heartbeat": "health",
    "telemetry": "health",
    "transaction": "sales",
    "refund": "sales",
    "inventory": "inventory",
    "stock_alert": "inventory",
    "refill": "inventory",
    "fault": "fault",
    "security": "security",
    "config": "config",
    "connectivity": "connectivity",
    "log": "log",
    "dex_read": "sales",
    "dex_sales": "sales",
    "dex_finding": "sales",
}


# --- envelopes -----------------------------------------------------------------
class DeviceEvent(Struct, kw_only=True):
    """What a device sends: one element of ``{"events": [...]}``."""

    event_id: EventId
    device_id: Id
    type: EventType
    occurred_at: datetime
    seq: Seq | None = None
    data: Raw = Raw(b"{}")


class Batch(Struct):
    """A request body; elements are validated one by one so one bad event rejects only itself."""

    events: list[Raw]


class StoredEvent(Struct, kw_only=True, omit_defaults=True):
    """An accepted event as written to the log (topic ``events``) and the raw lake zone."""

    event_id: str
    device_id: str
    type: str
    occurred_at: datetime
    received_at: datetime
    data: Raw
    seq: int | None = None
    site_id: str | None = None
    schema_version: int = SCHEMA_VERSION
    late: bool = False


class RejectedEvent(Struct, kw_only=True, omit_defaults=True):
    """A refused event kept for audit (topic ``rejected``)."""

    received_at: datetime
    reason: str
    code: str | None = None  # machine-readable reason: schema, device_mismatch, future, too_old, too_large
    device_id: str | None = None
    event_id: str | None = None
    index: int | None = None
    raw: Raw | None = None


_payload_decoders = {t: msgspec.json.Decoder(cls) for t, cls in PAYLOADS.items()}
_device_event_decoder = msgspec.json.Decoder(DeviceEvent)
_stored_decoder = msgspec.json.Decoder(StoredEvent)
_encoder = msgspec.json.Encoder()


def decode_device_event(raw: bytes | Raw) -> DeviceEvent:
    """Decode and validate one device event, payload included. Raises msgspec.ValidationError."""
    ev = _device_event_decoder.decode(raw)
    if ev.occurred_at.tzinfo is None:
        raise msgspec.ValidationError("`occurred_at` must carry a UTC offset (RFC 3339) - at `$.occurred_at`")
    if "\x00" in ev.event_id:
        raise msgspec.ValidationError(f"{NUL_REFUSED} - at `$.event_id`")
    try:
        check_no_nul(ev.type, _payload_decoders[ev.type].decode(ev.data))
    except msgspec.ValidationError as e:
        raise msgspec.ValidationError(f"{e} (in `data` of a `{ev.type}` event)") from None
    return ev


# The decoding contract: what the collector accepts, every stage can decode. The typed
# payload decoders skip unknown fields without reading their numbers, so numbers are
# checked too: a float must be finite in 64 bits and an integer must fit a signed
# 64-bit integer (a state store column, an Arrow column and a float comparison in a
# rule all rely on it). Reading every payload twice would cost as much as the typed
# decode, so a byte scan first looks for what such a number needs: 19 digits in a row
# or an exponent of 3 digits. Only payloads with one (rare, and then often a long id in
# a string) are read in full.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_plain = msgspec.json.Decoder()
_SHAPE = bytearray(b" " * 256)
for _c in b"0123456789":
    _SHAPE[_c] = ord("9")
for _c in b"eE":
    _SHAPE[_c] = ord("e")
_SHAPE_TABLE = bytes(_SHAPE)
_LONG_DIGITS = b"9" * 19


def _may_break_contract(data: bytes) -> bool:
    # signs are deleted, not mapped: "9e+999" and "9e-999" both become "9e999" (one search
    # fewer, and a shorter text); joining the digits around a '-' (dates, ids) only adds
    # false alarms, which cost the exact check, never a miss
    shape = data.translate(_SHAPE_TABLE, b"+-")
    return _LONG_DIGITS in shape or b"9e999" in shape  # exponents follow a digit


def _big_int_at(value: Any, path: str) -> str | None:
    if type(value) is int:
        return path if not _INT_MIN <= value <= _INT_MAX else None
    if type(value) is dict:
        for k, v in value.items():
            if (hit := _big_int_at(v, f"{path}.{k}")) is not None:
                return hit
    elif type(value) is list:
        for i, v in enumerate(value):
            if (hit := _big_int_at(v, f"{path}[{i}]")) is not None:
                return hit
    return None


def check_contract(data: bytes | Raw) -> None:
    """Raise ``msgspec.ValidationError`` unless every stage can decode ``data``.

    Numbers must be finite 64-bit floats or integers within the signed 64-bit range."""
    if not _may_break_contract(bytes(data)):
        return
    try:
        doc = _plain.decode(data)
    except msgspec.ValidationError as e:
        raise msgspec.ValidationError(f"{e}: numbers must fit a 64-bit float") from None
    if (path := _big_int_at(doc, "$")) is not None:
        raise msgspec.ValidationError(f"Integer out of range (must fit a signed 64-bit integer) - at `{path}`")


# --- no NUL in device text (see ``_no_nul``) -------------------------------------
NUL_REFUSED = "Expected text without NUL (U+0000) characters"
_Check = Callable[[Any, str], "str | None"]


def may_hold_nul(data: bytes) -> bool:
    """Whether JSON text ``data`` may carry a U+0000 (its escape; a raw NUL byte is not JSON)."""
    # a backslash first (one memchr): most bodies have none, and the 6-byte search costs ~10x more
    return (b"\\" in data and b"\\u0000" in data) or b"\x00" in data


def _str_check(v: Any, path: str) -> str | None:
    return f"`{path}`" if type(v) is str and "\x00" in v else None


def _nul_check(t: Any) -> _Check | None:
    """A function giving where (msgspec's ``at`` wording) a value of type ``t`` holds a
    NUL in a text marked ``no_nul``, or None when ``t`` has no such text."""
    if isinstance(t, mi.Metadata):
        if (t.extra or {}).get("no_nul"):
            return _str_check
        return _nul_check(t.type)
    if isinstance(t, mi.UnionType):  # `X | None`: each check ignores values not of its type
        alts = [c for c in map(_nul_check, t.types) if c is not None]
        if not alts:
            return None
        return lambda v, path: next((hit for c in alts if (hit := c(v, path)) is not None), None)
    if isinstance(t, mi.ListType):
        item = _nul_check(t.item_type)
        if item is None:
            return None
        return lambda v, path: next((hit for i, x in enumerate(v) if (hit := item(x, f"{path}[{i}]")) is not None),
                                    None) if type(v) is list else None
    if isinstance(t, mi.DictType):
        key, val = _nul_check(t.key_type), _nul_check(t.value_type)
        if key is None and val is None:
            return None

        def in_dict(v: Any, path: str) -> str | None:
            if type(v) is not dict:
                return None
            for k, x in v.items():
                if key is not None and type(k) is str and "\x00" in k:
                    return f"`key` in `{path}`"
                if val is not None and (hit := val(x, f"{path}[...]")) is not None:
                    return hit
            return None

        return in_dict
    if isinstance(t, mi.StructType):
        fields = [(f.name, f.encode_name, c) for f in t.fields if (c := _nul_check(f.type)) is not None]
        if not fields:
            return None
        cls = t.cls
        return lambda v, path: next((hit for name, enc, c in fields
                                     if (hit := c(getattr(v, name), f"{path}.{enc}")) is not None),
                                    None) if isinstance(v, cls) else None
    return None


_NUL_CHECKS = {t: _nul_check(mi.type_info(cls)) for t, cls in PAYLOADS.items()}


def check_no_nul(type_: str, payload: Any) -> None:
    """Raise ``msgspec.ValidationError`` naming the field when a decoded payload holds a NUL
    in device text (the check the types do not make: see ``_no_nul``)."""
    check = _NUL_CHECKS[type_]
    if check is not None and (where := check(payload, "$")) is not None:
        raise msgspec.ValidationError(f"{NUL_REFUSED} - at {where}")


def may_break_contract(data: bytes) -> bool:
    """Whether JSON text ``data`` may hold a number ``check_contract`` refuses (cheap byte scan)."""
    return _may_break_contract(data)


def decode_payload(type_: str, data: bytes | Raw, *, nul_possible: bool | None = None,
                   big_numbers_possible: bool | None = None) -> Any:
    """Typed payload of an event, checked against the decoding contract (``check_contract``)
    and for NUL in device text (``check_no_nul``). ``nul_possible=False`` /
    ``big_numbers_possible=False`` say the caller has already scanned bytes holding ``data``
    with ``may_hold_nul`` / ``may_break_contract`` and found nothing (one scan of a whole
    request body costs less than one per event).

    Raises ``msgspec.ValidationError`` (or ``msgspec.DecodeError``/``RecursionError`` for
    unreadable JSON)."""
    typed = _payload_decoders[type_].decode(data)
    if nul_possible is False and big_numbers_possible is False:
        return typed
    raw = bytes(data)
    if nul_possible is not False and may_hold_nul(raw):
        check_no_nul(type_, typed)
    if big_numbers_possible is not False and _may_break_contract(raw):
        check_contract(raw)
    return typed


# --- the collector's fast path: a request's payloads, one decoder call per type -------
# msgspec checks a ``pattern`` by calling Python's regex per string (~0.8 µs each on the
# reference machine: a transaction has three, an inventory report seven), and each decode
# call has its own fixed cost. ``payloads_acceptable`` decodes a request's payloads in one
# call per event type into twins of the payload structs that have no patterns, then
# checks each distinct patterned value once with the same pattern (msgspec applies one
# with ``re.search``). It accepts exactly what ``decode_payload`` accepts when the bytes
# hold no NUL escape and no contract-breaking number (tests/test_ingest_validate.py).
_META_KEYS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz")


def _unpatterned(tp: Any, twins: dict[type, type]) -> Any:
    """``tp`` with every ``pattern`` constraint dropped (other constraints kept) and every
    struct replaced by its unpatterned twin."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        metas = [Meta(**{k: v for k in _META_KEYS if (v := getattr(m, k)) is not None}) if isinstance(m, Meta) else m
                 for m in tp.__metadata__]
        return Annotated[(_unpatterned(args[0], twins), *metas)]  # type: ignore[valid-type]
    if isinstance(tp, type) and issubclass(tp, Struct):
        return _twin(tp, twins)
    if origin in (Union, UnionType):
        return Union[tuple(_unpatterned(a, twins) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is list:
        return list[_unpatterned(args[0], twins)]  # type: ignore[misc]
    if origin is dict:
        return dict[_unpatterned(args[0], twins), _unpatterned(args[1], twins)]  # type: ignore[misc]
    return tp


def _twin(cls: type[Struct], twins: dict[type, type]) -> type:
    if cls not in twins:
        hints = get_type_hints(cls, include_extras=True)
        fields = [(f.name, _unpatterned(hints[f.name], twins)) if f.required
                  else (f.name, _unpatterned(hints[f.name], twins), None)
                  for f in msgspec.structs.fields(cls)]
        cfg = cls.__struct_config__
        twins[cls] = msgspec.defstruct(f"_Unpatterned{cls.__name__}", fields, kw_only=True, gc=False,
                                       forbid_unknown_fields=cfg.forbid_unknown_fields)
    return twins[cls]


_ITEMS = "[]"  # a step into each item of a list
_not_none = partial(is_not, None)


def _pattern_paths(t: Any, path: tuple[str, ...] = ()) -> list[tuple[str, tuple[str, ...]]] | None:
    """Where type ``t`` holds strings with a pattern: (pattern, steps: field names and
    ``_ITEMS``), or None for a shape the fast path does not walk (a pattern in a dict, or in
    a union of several types besides None): such payloads are decoded one by one."""
    if isinstance(t, mi.Metadata):
        return _pattern_paths(t.type, path)
    if isinstance(t, mi.StrType):
        return [(t.pattern, path)] if t.pattern is not None else []
    if isinstance(t, mi.UnionType):
        alts = [a for a in t.types if not isinstance(a, mi.NoneType)]
        found = [_pattern_paths(a, path) for a in alts]
        if any(f is None for f in found) or (len(alts) > 1 and any(found)):
            return None
        return found[0] if found else []
    if isinstance(t, mi.ListType):
        return _pattern_paths(t.item_type, (*path, _ITEMS))
    if isinstance(t, mi.DictType):
        inner = [_pattern_paths(t.key_type), _pattern_paths(t.value_type)]
        return [] if inner == [[], []] else None
    if isinstance(t, mi.StructType):
        out: list[tuple[str, tuple[str, ...]]] = []
        for f in t.fields:
            found = _pattern_paths(f.type, (*path, f.name))
            if found is None:
                return None
            out += found
        return out
    return []


def _values(objs: list[Any], steps: tuple[str, ...]) -> Iterable[Any]:
    """The values at ``steps`` in every decoded object (None where an optional one is absent), in C."""
    vals: Iterable[Any] = objs
    for step in steps:
        vals = filter(_not_none, vals)
        vals = chain.from_iterable(vals) if step is _ITEMS else map(attrgetter(step), vals)
    return vals


_TWINS: dict[type, type] = {}
_unpatterned_lists = {t: msgspec.json.Decoder(list[_twin(cls, _TWINS)]) for t, cls in PAYLOADS.items()}  # type: ignore[misc]
_pattern_plan = {t: _pattern_paths(mi.type_info(cls)) for t, cls in PAYLOADS.items()}
_patterns: dict[str, re.Pattern[str]] = {}
_FAST_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def payloads_acceptable(types: Sequence[str], datas: Sequence[bytes | Raw]) -> bool:
    """Whether ``decode_payload(types[i], datas[i], nul_possible=False,
    big_numbers_possible=False)`` would succeed for every i: one decoder call per event
    type (``datas`` must be JSON values, e.g. the ``data`` of decoded envelopes). False
    says that some payload may fail: decode them one by one to find out which and why."""
    by_type: dict[str, list[bytes | Raw]] = {}
    for t, d in zip(types, datas, strict=True):
        group = by_type.get(t)
        if group is None:
            group = by_type[t] = []
        group.append(d)
    wanted: dict[str, set[Any]] = {}
    for t, group in by_type.items():
        decoder, plan = _unpatterned_lists.get(t), _pattern_plan.get(t)
        if decoder is None or plan is None:
            return False
        try:
            typed = decoder.decode(b"[" + b",".join(group) + b"]")
        except _FAST_ERRORS:
            return False
        for pattern, steps in plan:
            vals = wanted.get(pattern)
            if vals is None:
                vals = wanted[pattern] = set()
            vals.update(_values(typed, steps))
    for pattern, values in wanted.items():
        rx = _patterns.get(pattern)
        if rx is None:
            rx = _patterns[pattern] = re.compile(pattern)
        values.discard(None)
        for v in values:
            if rx.search(v) is None:
                return False
    return True


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_stored(value: bytes) -> StoredEvent:
    return _stored_decoder.decode(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


class _EnvelopeDoc(Struct, kw_only=True, forbid_unknown_fields=True):
    """Schema-only twin of DeviceEvent (msgspec cannot describe Raw)."""

    event_id: EventId
    device_id: Id
    type: EventType
    occurred_at: datetime
    seq: Seq | None = None
    data: dict[str, Any] = {}


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a request body, with the payload of each type bound by ``type``."""
    _, defs = msgspec.json.schema_components([_EnvelopeDoc, *PAYLOADS.values()], ref_template="#/$defs/{name}")
    env = defs.pop("_EnvelopeDoc")
    env["title"] = "DeviceEvent"
    env["allOf"] = [
        {
            "if": {"properties": {"type": {"const": t}}},
            "then": {"properties": {"data": {"$ref": f"#/$defs/{cls.__name__}"}}},
        }
        for t, cls in PAYLOADS.items()
    ]
    defs["DeviceEvent"] = env
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vendwatch.dev/schema/device-protocol/v{SCHEMA_VERSION}.json",
        "title": f"vendwatch device protocol v{SCHEMA_VERSION}: POST /v1/events body",
        "type": "object",
        "required": ["events"],
        "properties": {"events": {"type": "array", "items": {"$ref": "#/$defs/DeviceEvent"}}},
        "$defs": defs,
    }
