"""``vendwatch etl run``: raw zone -> analytics zone, incremental and idempotent.

Incremental: every analytics table remembers, in its snapshot summary
(``vendwatch.etl.raw-snapshot``), the raw.events snapshot it was built from. A run
pins the current raw snapshot, finds the data files added since the remembered one,
and recomputes only the days those files touch (a day is recomputed whole, from all
of raw, so late and duplicate events land correctly). Idempotent: a table already
built from the current raw snapshot is skipped, and whole-table outputs (incidents,
dimensions, stock-outs) are committed only when their content hash changed, so a
second run commits nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, In
from pyiceberg.table import Table

from vendwatch.config import Settings
from vendwatch.lake import metrics, schemas, transforms
from vendwatch.lake.catalog import ensure_table, newest_property, open_catalog
from vendwatch.lake.query import LakeSQL
from vendwatch.runtime import load

log = logging.getLogger("vendwatch.lake.etl")

RAW_SNAPSHOT_PROP = "vendwatch.etl.raw-snapshot"
HASH_PROP = "vendwatch.etl.content-hash"
INCIDENT_ROWS = "vendwatch.incidents.export:incident_rows"

# day-partitioned tables recomputed per affected day, in dependency order
DAILY: dict[str, str] = {
    "analytics.transactions": transforms.TRANSACTIONS,
    "analytics.telemetry_hourly": transforms.TELEMETRY_HOURLY,
    "analytics.inventory": transforms.INVENTORY,
    "analytics.faults": transforms.FAULTS,
    "analytics.security_events": transforms.SECURITY_EVENTS,
    "analytics.device_daily": transforms.DEVICE_DAILY,
    "analytics.device_logs": transforms.DEVICE_LOGS,
}


@dataclass
class EtlReport:
    raw_snapshot: int | None = None
    days: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)  # table -> "updated N rows" / "unchanged"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"raw_snapshot": self.raw_snapshot, "days": self.days, "tables": self.tables,
                "seconds": round(self.seconds, 3)}


def content_hash(t: pa.Table) -> str:
    """Order-independent digest of a table's rows."""
    if t.num_rows == 0:
        return "empty"
    t = t.sort_by([(c, "ascending") for c in t.column_names if not pa.types.is_floating(t.schema.field(c).type)])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _conform(t: pa.Table, table: Table) -> pa.Table:
    """Cast a query result to the Iceberg table's Arrow schema (names, types, nullability)."""
    target = table.schema().as_arrow()
    cols = []
    for f in target:
        col = t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=target)


class Etl:
    def __init__(self, settings: Settings, catalog: Catalog | None = None, state: Any = None) -> None:
        self.settings = settings
        self.catalog = catalog or open_catalog(settings)
        self.state = state
        self.sql = LakeSQL(settings, self.catalog)

    def _tables(self) -> dict[str, Table]:
        out = {}
        for name in schemas.ANALYTICS:
            out[name] = ensure_table(self.catalog, name)  # evolves the schema when the definition grew
        return out

    # -- which days changed ------------------------------------------------------
    def _affected_days(self, raw: Table, since: int | None, full: bool) -> list[date]:
        snap = raw.current_snapshot()
        assert snap is not None
        now_files = {t.file.file_path for t in raw.scan(snapshot_id=snap.snapshot_id).plan_files()}
        if since is not None and not full and raw.snapshot_by_id(since) is not None:
            old = {t.file.file_path for t in raw.scan(snapshot_id=since).plan_files()}
            new = sorted(now_files - old)
        else:
            new = sorted(now_files)  # first run, forced, or history expired: everything
        if not new:
            return []
        con = duckdb.connect(":memory:")
        try:
            files = [p[len("file://"):] if p.startswith("file://") else p for p in new]
            if self.sql.warehouse is None:
                # remote storage: read the new files through pyiceberg's FileIO
                import pyarrow.dataset as ds

                fs = raw.io.fs_by_scheme(*_scheme_netloc(new[0]))  # type: ignore[attr-defined]
                con.register("newf", ds.dataset([_strip_scheme(p) for p in new], filesystem=fs, format="parquet"))
                src = "newf"
            else:
                src = "read_parquet([" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "])"
            rows = con.execute(
                f"SELECT DISTINCT event_date FROM {src} UNION SELECT DISTINCT CAST(received_at AS DATE) FROM {src}"
            ).fetchall()
        finally:
            con.close()
        return sorted({r[0] for r in rows if r[0] is not None})

    # -- the run ---------------------------------------------------------------------
    def run(self, full: bool = False) -> EtlReport:
        started = time.perf_counter()
        rep = EtlReport()
        raw = ensure_table(self.catalog, "raw.events")
        tables = self._tables()
        snap = raw.current_snapshot()
        rep.raw_snapshot = snap.snapshot_id if snap else None
        if snap is not None:
            self._run_daily(raw, snap.snapshot_id, tables, full, rep)
        self._run_whole(raw, rep.raw_snapshot, tables, rep)
        rep.seconds = time.perf_counter() - started
        metrics.ETL_RUNS.labels("ok").inc()
        return rep

    def _run_daily(self, raw: Table, raw_sid: int, tables: dict[str, Table], full: bool, rep: EtlReport) -> None:
        # tables remembering the same raw snapshot share one pass
        groups: dict[int | None, list[str]] = {}
        for name in DAILY:
            seen = newest_property(tables[name], RAW_SNAPSHOT_PROP)
            last = int(seen) if seen else None
            if last == raw_sid and not full:
                rep.tables[name] = "unchanged"
                continue
            groups.setdefault(last, []).append(name)
        for last, names in groups.items():
            days = self._affected_days(raw, last, full)
            rep.days = sorted({*rep.days, *(d.isoformat() for d in days)})
            self._build_days(raw_sid, days, names, tables, rep)

    def _build_days(self, raw_sid: int, days: list[date], names: list[str], tables: dict[str, Table], rep: EtlReport) -> None:
        con, _ = self.sql.connect(["raw.events"], lock=False, pins={"raw.events": raw_sid})
        props = {RAW_SNAPSHOT_PROP: str(raw_sid)}
        try:
            con.register("affected_arrow", pa.table({"d": pa.array(days, pa.date32())}))
            con.execute("CREATE TEMP TABLE affected AS SELECT d FROM affected_arrow")
            con.execute(transforms.ev_view(self.settings.lake.max_clock_skew_s))
            # transactions feed device_daily: compute them once even if only device_daily is stale
            tx = con.sql(transforms.TRANSACTIONS).to_arrow_table()
            con.register("tx_new", tx)
            for name in names:
                out = tx if name == "analytics.transactions" else con.sql(DAILY[name]).to_arrow_table()
                table = tables[name]
                data = _conform(out, table)
                day_filter = In("event_date", days) if days else AlwaysTrue()
                if days:
                    with warnings.catch_warnings():
                        # a day with no rows yet is the normal case for an incremental overwrite
                        warnings.simplefilter("ignore", UserWarning)
                        table.overwrite(data, overwrite_filter=day_filter, snapshot_properties=props)
                else:
                    # nothing new but the raw snapshot moved (maintenance): just remember it
                    table.append(data.slice(0, 0), snapshot_properties=props)
                rep.tables[name] = f"{data.num_rows} rows over {len(days)} day(s)"
        finally:
            con.close()

    def _run_whole(self, raw: Table, raw_sid: int | None, tables: dict[str, Table], rep: EtlReport) -> None:
        """Outputs recomputed whole and committed only when their content changed."""
        outs: dict[str, pa.Table] = {"analytics.incidents": self._incidents()}
        names = ["raw.events", "analytics.inventory", "analytics.transactions"]
        con, _ = self.sql.connect(names, lock=False, pins={"raw.events": raw_sid})
        try:
            outs["analytics.stockouts"] = con.sql(transforms.STOCKOUTS).to_arrow_table()
            seen = con.sql(transforms.DEVICE_SEEN).to_arrow_table()
            outs["analytics.dim_devices"] = self._devices(seen)
            con.register("dim_devices", outs["analytics.dim_devices"])
            outs["analytics.dim_sites"] = con.sql(
                "SELECT site_id, count(*) AS devices, min(first_seen_at) AS first_seen_at,"
                " max(last_seen_at) AS last_seen_at FROM dim_devices WHERE site_id IS NOT NULL GROUP BY 1"
            ).to_arrow_table()
            outs["analytics.dim_products"] = con.sql(transforms.DIM_PRODUCTS).to_arrow_table()
        finally:
            con.close()
        for name, out in outs.items():
            table = tables[name]
            data = _conform(out, table)
            digest = content_hash(data)
            if newest_property(table, HASH_PROP) == digest:
                rep.tables[name] = "unchanged"
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                table.overwrite(data, snapshot_properties={HASH_PROP: digest})
            rep.tables[name] = f"{data.num_rows} rows"

    def _incidents(self) -> pa.Table:
        fn = load(INCIDENT_ROWS)
        rows: list[dict[str, Any]] = []
        if fn is not None and self.state is not None:
            rows = list(fn(self.state))
        cols = [f.name for f in schemas.INCIDENTS.schema.fields]
        out: dict[str, list[Any]] = {c: [] for c in cols}
        for r in rows:
            opened, acked, resolved = (_ts(r.get(k)) for k in ("opened_at", "acknowledged_at", "resolved_at"))
            rec = {c: r.get(c) for c in cols}
            rec.update(opened_at=opened, acknowledged_at=acked, resolved_at=resolved)
            rec["time_to_ack_s"] = (acked - opened).total_seconds() if acked and opened else None
            rec["time_to_resolve_s"] = (resolved - opened).total_seconds() if resolved and opened else None
            for c in cols:
                out[c].append(rec[c])
        return pa.Table.from_pydict(out, schema=schemas.INCIDENTS.arrow_schema())

    def _devices(self, seen: pa.Table) -> pa.Table:
        """The device registry (when there is one) joined with what the lake saw."""
        reg: dict[str, Any] = {}
        if self.state is not None:
            after = ""
            while True:
                page = self.state.list_devices(limit=1000, after=after)
                if not page:
                    break
                reg.update({d.device_id: d for d in page})
                after = page[-1].device_id
        seen_rows = {r["device_id"]: r for r in seen.to_pylist()}
        ids = sorted(set(reg) | set(seen_rows))
        rows = []
        for i in ids:
            d, s = reg.get(i), seen_rows.get(i, {})
            rows.append({
                "device_id": i,
                "site_id": (getattr(d, "site_id", None) or s.get("site_id")),
                "status": getattr(d, "status", None), "model": getattr(d, "model", None),
                "serial": getattr(d, "serial", None), "location": getattr(d, "location", None),
                "firmware_version": s.get("firmware_version"),
                "first_seen_at": s.get("first_seen_at"), "last_seen_at": s.get("last_seen_at"),
                "events": s.get("events", 0),
            })
        return pa.Table.from_pylist(rows, schema=schemas.DIM_DEVICES.arrow_schema())


def _ts(v: Any) -> datetime | None:
    """Incident timestamps may come as epoch seconds, ISO strings or datetimes."""
    if v is None:
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=UTC)
    if isinstance(v, (int, float)):
        return datetime.fromtimestamp(v, UTC)
    return datetime.fromisoformat(str(v).replace("Z", "+00:00"))


def _scheme_netloc(uri: str) -> tuple[str, str]:
    scheme, _, rest = uri.partition("://")
    return scheme, rest.split("/", 1)[0]


def _strip_scheme(uri: str) -> str:
    return uri.partition("://")[2] if "://" in uri else uri


def run_etl(settings: Settings, state: Any = None, full: bool = False) -> EtlReport:
    """Run the ETL once (``vendwatch etl run``)."""
    return Etl(settings, state=state).run(full=full)

