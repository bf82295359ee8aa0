"""Definitions of every lake table: Iceberg schema, partition spec, properties.

Field ids are assigned in declaration order; a column added later (schema evolution)
gets the next id from Iceberg itself, so existing data files stay readable by every
engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform, Transform
from pyiceberg.types import (
    BooleanType,
    DateType,
    DoubleType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

S, L, INT, D, B = StringType(), LongType(), IntegerType(), DoubleType(), BooleanType()
TS, DATE = TimestamptzType(), DateType()

# Properties for every table: zstd Parquet, merge-on-read off (pyiceberg writes copy-on-write)
_BASE_PROPS = {
    "write.parquet.compression-codec": "zstd",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
    # merge small manifests (one per commit) as Java engines do by default: with pyiceberg's
    # fast append, a writer committing every 30 s adds 2,880 a day, and every commit and every
    # scan planning reads them all (docs/benchmarks.md, "Snapshots and commit cost")
    "commit.manifest-merge.enabled": "true",
}
# Raw tables: the writer re-checks its offsets itself on a conflicting commit, so
# pyiceberg must not retry behind its back with a stale offsets summary.
_RAW_PROPS = {**_BASE_PROPS, "commit.retry.num-retries": "0"}


@dataclass(frozen=True)
class TableDef:
    name: str
    schema: Schema
    partition_spec: PartitionSpec
    properties: dict[str, str] = field(default_factory=dict)
    doc: str = ""

    def arrow_schema(self) -> pa.Schema:
        return self.schema.as_arrow()


def _table(
    name: str,
    cols: list[tuple[str, IcebergType, bool]],
    partition: list[tuple[str, Transform[object, object], str]],
    props: dict[str, str],
    doc: str,
) -> TableDef:
    fields = [NestedField(i + 1, n, t, required=req) for i, (n, t, req) in enumerate(cols)]
    schema = Schema(*fields)
    pfields = [
        PartitionField(source_id=schema.find_field(src).field_id, field_id=1000 + i, transform=tr, name=pname)
        for i, (src, tr, pname) in enumerate(partition)
    ]
    return TableDef(name, schema, PartitionSpec(*pfields), props, doc)


RAW_EVENTS = _table(
    "raw.events",
    [
        ("event_id", S, True),
        ("device_id", S, True),
        ("site_id", S, False),
        ("type", S, True),
        ("category", S, True),
        ("occurred_at", TS, True),  # device clock, as sent
        ("received_at", TS, True),  # collector clock
        ("event_date", DATE, True),  # UTC date of occurred_at
        ("seq", L, False),
        ("schema_version", INT, True),
        ("late", B, True),
        ("payload", S, True),  # the event's `data`, byte for byte (unknown fields included)
        ("log_partition", INT, True),
        ("log_offset", L, True),
    ],
    [("occurred_at", DayTransform(), "occurred_day"), ("type", IdentityTransform(), "type")],
    _RAW_PROPS,
    "every accepted event, append-only (system of record for audit and replay)",
)

RAW_REJECTED = _table(
    "raw.rejected",
    [
        ("received_at", TS, True),
        ("reason", S, True),
        ("device_id", S, False),
        ("event_id", S, False),
        ("batch_index", INT, False),
        ("raw", S, False),  # the refused element as received
        ("log_partition", INT, True),
        ("log_offset", L, True),
    ],
    [("received_at", DayTransform(), "received_day")],
    _RAW_PROPS,
    "refused events with the reason (quarantine, for audit)",
)

_DAY = [("event_date", IdentityTransform(), "event_date")]

TRANSACTIONS = _table(
    "analytics.transactions",
    [
        ("event_id", S, True),
        ("transaction_id", S, True),
        ("device_id", S, True),
        ("site_id", S, False),
        ("event_time", TS, True),  # occurred_at, or received_at when the device clock was off
        ("event_date", DATE, True),
        ("received_at", TS, True),
        ("clock_skewed", B, True),
        ("product_id", S, False),
        ("slot", S, False),
        ("price_minor", L, False),
        ("amount", D, False),  # major currency units
        ("currency", S, False),
        ("payment_method", S, False),
        ("payment_status", S, False),
        ("vend_status", S, False),
        ("failure_reason", S, False),
        ("sold", B, True),  # paid and vended
    ],
    _DAY,
    _BASE_PROPS,
    "one row per transaction (deduplicated by event id and transaction id)",
)

TELEMETRY_HOURLY = _table(
    "analytics.telemetry_hourly",
    [
        ("device_id", S, True),
        ("site_id", S, False),
        ("hour", TS, True),
        ("event_date", DATE, True),
        ("samples", L, True),
        ("cabinet_temp_min", D, False),
        ("cabinet_temp_max", D, False),
        ("cabinet_temp_avg", D, False),
        ("refrigeration_temp_min", D, False),
        ("refrigeration_temp_max", D, False),
        ("refrigeration_temp_avg", D, False),
        ("voltage_min", D, False),
        ("voltage_max", D, False),
        ("voltage_avg", D, False),
        ("door_open_minutes", D, False),
        ("power_off_samples", L, True),
        ("rejected_values", L, True),  # impossible readings nulled by cleansing
        # valid readings behind each average (weights to roll hours up; the ETL merges with them)
        ("cabinet_temp_samples", L, False),
        ("refrigeration_temp_samples", L, False),
        ("voltage_samples", L, False),
        ("door_samples", L, False),
    ],
    _DAY,
    _BASE_PROPS,
    "telemetry per device-hour",
)

INVENTORY = _table(
    "analytics.inventory",
    [
        ("device_id", S, True),
        ("site_id", S, False),
        ("slot", S, True),
        ("product_id", S, False),
        ("observed_at", TS, True),
        ("event_date", DATE, True),
        ("count", L, True),
        ("capacity", L, False),
        ("source", S, True),  # inventory | stock_alert | refill
        ("event_id", S, True),
    ],
    _DAY,
    _BASE_PROPS,
    "stock per slot over time",
)

STOCKOUTS = _table(
    "analytics.stockouts",
    [
        ("device_id", S, True),
        ("site_id", S, False),
        ("slot", S, True),
        ("product_id", S, False),
        ("started_at", TS, True),
        ("ended_at", TS, False),  # null: still out of stock
        ("duration_s", D, False),
        ("event_date", DATE, True),
    ],
    _DAY,
    _BASE_PROPS,
    "stock-out intervals per slot",
)

FAULTS = _table(
    "analytics.faults",
    [
        ("event_id", S, True),
        ("device_id", S, True),
        ("site_id", S, False),
        ("event_time", TS, True),
        ("event_date", DATE, True),
        ("code", S, True),
        ("state", S, True),
        ("component", S, False),
        ("slot", S, False),
        ("detail", S, False),
    ],
    _DAY,
    _BASE_PROPS,
    "fault raised/cleared events",
)

SECURITY_EVENTS = _table(
    "analytics.security_events",
    [
        ("event_id", S, True),
        ("device_id", S, True),
        ("site_id", S, False),
        ("event_time", TS, True),
        ("event_date", DATE, True),
        ("kind", S, True),
        ("magnitude_g", D, False),
        ("attempts", L, False),
        ("detail", S, False),
    ],
    _DAY,
    _BASE_PROPS,
    "security events",
)

INCIDENTS = _table(
    "analytics.incidents",
    [
        ("incident_id", S, True),
        ("dedupe_key", S, False),
        ("rule_id", S, False),
        ("severity", S, False),
        ("status", S, False),
        ("device_id", S, False),
        ("site_id", S, False),
        ("opened_at", TS, False),
        ("acknowledged_at", TS, False),
        ("resolved_at", TS, False),
        ("occurrences", L, False),
        ("external_ref", S, False),
        ("time_to_ack_s", D, False),
        ("time_to_resolve_s", D, False),
    ],
    [],
    _BASE_PROPS,
    "incident lifecycle and durations (from the incident store)",
)

DEVICE_DAILY = _table(
    "analytics.device_daily",
    [
        ("device_id", S, True),
        ("site_id", S, False),
        ("event_date", DATE, True),
        ("events", L, True),
        ("heartbeats", L, True),
        ("transactions", L, True),
        ("sales", L, True),
        ("revenue_minor", L, True),
        ("failed_vends", L, True),
        ("failed_payments", L, True),
        ("faults", L, True),
        ("security_events", L, True),
        ("uptime_pct", D, True),
        ("first_event_at", TS, True),
        ("last_event_at", TS, True),
        # 288 characters, one per 5-minute bucket of the day from 00:00 UTC: 1 = the device sent something
        ("active_buckets", S, False),
    ],
    _DAY,
    _BASE_PROPS,
    "one row per device and day",
)

DIM_DEVICES = _table(
    "analytics.dim_devices",
    [
        ("device_id", S, True),
        ("site_id", S, False),
        ("status", S, False),
        ("model", S, False),
        ("serial", S, False),
        ("location", S, False),
        ("firmware_version", S, False),
        ("first_seen_at", TS, False),
        ("last_seen_at", TS, False),
        ("events", L, True),
        ("reported_site_id", S, False),  # the site its events carried (site_id: the registry's, else this)
        ("firmware_reported_at", TS, False),  # device time of the report firmware_version comes from
    ],
    [],
    _BASE_PROPS,
    "devices (registry joined with what the lake saw)",
)

DIM_SITES = _table(
    "analytics.dim_sites",
    [
        ("site_id", S, True),
        ("devices", L, True),
        ("first_seen_at", TS, False),
        ("last_seen_at", TS, False),
    ],
    [],
    _BASE_PROPS,
    "sites",
)

DIM_PRODUCTS = _table(
    "analytics.dim_products",
    [
        ("product_id", S, True),
        ("last_price_minor", L, False),
        ("currency", S, False),
        ("devices", L, True),
        ("transactions", L, True),
        ("first_seen_at", TS, False),
        ("last_seen_at", TS, False),
    ],
    [],
    _BASE_PROPS,
    "products seen in sales and inventory",
)

PRODUCT_DEVICES = _table(
    "analytics.product_devices",
    [
        ("product_id", S, True),
        ("device_id", S, True),
        ("transactions", L, True),
        ("first_sold_at", TS, False),
        ("last_sold_at", TS, False),
        # the latest sale with a valid price (by event time)
        ("last_price_at", TS, False),
        ("last_price_minor", L, False),
        ("last_currency", S, False),
        ("stock_observations", L, True),  # slot observations naming the product
        ("first_stocked_at", TS, False),
        ("last_stocked_at", TS, False),
    ],
    [],
    _BASE_PROPS,
    "which device sold or stocked which product, and when (dim_products sums it up)",
)

TABLES: dict[str, TableDef] = {
    t.name: t
    for t in (
        RAW_EVENTS,
        RAW_REJECTED,
        TRANSACTIONS,
        TELEMETRY_HOURLY,
        INVENTORY,
        STOCKOUTS,
        FAULTS,
        SECURITY_EVENTS,
        INCIDENTS,
        DEVICE_DAILY,
        DIM_DEVICES,
        DIM_SITES,
        DIM_PRODUCTS,
        PRODUCT_DEVICES,
    )
}
ANALYTICS = [n for n in TABLES if n.startswith("analytics.")]


# -- logs: the platform's own (raw.system_logs) and the machines' (analytics.device_logs) ----------
RAW_SYSTEM_LOGS = _table(
    "raw.system_logs",
    [
        ("ts", TS, True),
        ("level", S, True),
        ("logger", S, True),
        ("role", S, False),
        ("replica", S, False),
        ("msg", S, True),
        ("device_id", S, False),
        ("event_id", S, False),
        ("signal_id", S, False),
        ("incident_id", S, False),
        ("ticket", S, False),
        ("exc", S, False),  # the traceback, in full
        ("extra", S, False),  # every other field of the JSON line, as JSON
        ("log_partition", INT, True),
        ("log_offset", L, True),
    ],
    [("ts", DayTransform(), "log_day")],
    _RAW_PROPS,
    "the platform's own log lines (every role and replica), from the system_logs topic",
)

DEVICE_LOGS = _table(
    "analytics.device_logs",
    [
        ("event_id", S, True),
        ("device_id", S, True),
        ("site_id", S, False),
        ("event_time", TS, True),
        ("event_date", DATE, True),
        ("received_at", TS, True),
        ("kind", S, True),  # application, system, crash, startup, shutdown
        ("level", S, True),
        ("message", S, False),
        ("crash_dump", S, False),  # in full (up to 64 KiB)
    ],
    _DAY,
    _BASE_PROPS,
    "machines' log events (application/system/crash/startup/shutdown) with crash dumps",
)

TABLES.update({t.name: t for t in (RAW_SYSTEM_LOGS, DEVICE_LOGS)})
ANALYTICS.append(DEVICE_LOGS.name)
