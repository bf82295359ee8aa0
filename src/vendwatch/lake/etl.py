"""``vendwatch etl run``: raw zone -> analytics zone, incremental and idempotent.

Incremental: every analytics table remembers, in its snapshot summary, the raw.events
snapshot it was built from (``vendwatch.etl.raw-snapshot``) and the raw writer's log
offsets of that snapshot (``vendwatch.etl.raw-offsets``). A raw row is new when its log
offset is past the remembered one of its partition, wherever it lives now (maintenance
compaction moves rows into new files; offsets do not move). A run reads only the new
rows and folds them into the tables (``lake/increments.py``): row tables get the new
events' rows, aggregate tables get the partitions the new events touch re-merged, the
device dimension and the product-device table fold the new rows into their counters,
stock-outs re-derive the slots the new observations touch. A day is rebuilt whole from raw only when a new row changes
what an earlier row meant (a copy of an event received before the copy that counted, a
retry of a transaction earlier than the one counted that day), for tables an
interrupted run left behind, on the first run, and with ``--full``.

Crash-safe: every table's data and its remembered position land in one Iceberg
commit; a run killed between two tables leaves each table consistent with what it
remembers, and the next run rebuilds the lagging tables' days.

Idempotent: a table already built from the current raw snapshot is skipped, and the
other whole-table outputs (incidents, sites, products) are committed only when their
content hash changed, so a second run commits nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import In
from pyiceberg.table import Table

from vendwatch.config import Settings
from vendwatch.lake import increments, metrics, schemas, transforms
from vendwatch.lake.catalog import ensure_table, newest_property, open_catalog
from vendwatch.lake.query import LakeSQL
from vendwatch.lake.writer import OFFSETS_PROP, decode_offsets
from vendwatch.runtime import load

log = logging.getLogger("vendwatch.lake.etl")

RAW_SNAPSHOT_PROP = "vendwatch.etl.raw-snapshot"
RAW_OFFSETS_PROP = "vendwatch.etl.raw-offsets"  # {"partition": next offset} of the raw snapshot built from
HORIZON_PROP = "vendwatch.etl.horizon"  # newest received_at in raw (epoch µs): the newest day's uptime
HASH_PROP = "vendwatch.etl.content-hash"
_CHUNK_ROWS = 500_000  # raw rows per chunk of days rebuilt together (a few hundred MB in DuckDB)
INCIDENT_ROWS = "vendwatch.incidents.export:incident_rows"

# day-partitioned tables built per day, in dependency order
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
    days: list[str] = field(default_factory=list)  # days whose rows changed
    rebuilt: list[str] = field(default_factory=list)  # days of them rebuilt whole from raw
    tables: dict[str, str] = field(default_factory=dict)  # table -> "updated N rows" / "unchanged"
    new_events: int | None = None  # raw rows read as new by an incremental run
    seconds: float = 0.0
    # CPU seconds of the process (every DuckDB thread) by step: where a run's cost goes
    cpu_s: dict[str, float] = field(default_factory=dict)
    _inner: list[float] = field(default_factory=list, repr=False)  # CPU of the steps nested in the open ones

    def to_dict(self) -> dict[str, Any]:
        return {"raw_snapshot": self.raw_snapshot, "days": self.days, "rebuilt": self.rebuilt, "tables": self.tables,
                "new_events": self.new_events, "seconds": round(self.seconds, 3), "cpu_s": self.cpu_s}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Add the CPU time spent inside, less that of the steps nested in it, to ``cpu_s[name]``."""
        c0 = time.process_time()
        self._inner.append(0.0)
        try:
            yield
        finally:
            spent = time.process_time() - c0
            inner = self._inner.pop()
            if self._inner:
                self._inner[-1] += spent
            self.cpu_s[name] = round(self.cpu_s.get(name, 0.0) + spent - inner, 3)


def content_hash(t: pa.Table) -> str:
    """Order-independent digest of a table's rows."""
    if t.num_rows == 0:
        return "empty"
    t = t.sort_by([(c, "ascending") for c in t.column_names if not pa.types.is_floating(t.schema.field(c).type)])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def conform(t: pa.Table, table: Table) -> pa.Table:
    """Cast a query result to the Iceberg table's Arrow schema (names, types, nullability)."""
    target = table.schema().as_arrow()
    cols = []
    for f in target:
        col = t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
        cols.append(col.cast(f.type))
    return pa.Table.from_arrays(cols, schema=target)


@dataclass(frozen=True)
class Position:
    """Where a table's build stands in raw.events: a snapshot and the writer offsets it holds."""

    snapshot_id: int | None
    offsets: dict[int, int] | None  # log partition -> next offset; None: unknown (older release, no writer)

    @staticmethod
    def of(table: Table) -> Position:
        sid = newest_property(table, RAW_SNAPSHOT_PROP)
        offs = newest_property(table, RAW_OFFSETS_PROP)
        return Position(int(sid) if sid else None,
                        {int(k): int(v) for k, v in msgspec.json.decode(offs).items()} if offs else None)

    def props(self) -> dict[str, str]:
        if self.snapshot_id is None:
            return {}  # nothing in raw yet
        out = {RAW_SNAPSHOT_PROP: str(self.snapshot_id)}
        if self.offsets is not None:
            out[RAW_OFFSETS_PROP] = msgspec.json.encode({str(k): v for k, v in sorted(self.offsets.items())}).decode()
        return out

    def __hash__(self) -> int:
        return hash((self.snapshot_id, None if self.offsets is None else tuple(sorted(self.offsets.items()))))

    def follows(self, older: Position) -> bool:
        """Whether rows past ``older``'s offsets are exactly what this position added (no log reset)."""
        if self.offsets is None or older.offsets is None:
            return False
        return all(self.offsets.get(p, -1) >= o for p, o in older.offsets.items())


def raw_position(raw: Table) -> Position:
    """The current raw snapshot and the writer offsets its rows reach."""
    snap = raw.current_snapshot()
    text = newest_property(raw, OFFSETS_PROP)
    offsets = None
    if text:
        by_topic = decode_offsets(text)
        offsets = {}
        for (_topic, p), o in by_topic.items():
            offsets[p] = max(o, offsets.get(p, 0))
    return Position(snap.snapshot_id if snap else None, offsets)


class Etl:
    def __init__(self, settings: Settings, catalog: Catalog | None = None, state: Any = None) -> None:
        self.settings = settings
        self.catalog = catalog or open_catalog(settings)
        self.state = state
        self.sql = LakeSQL(settings, self.catalog)
        # the rows this run added incrementally (per table), and the raw position they follow
        self._added: tuple[Position, dict[str, pa.Table]] | None = None

    def _tables(self) -> dict[str, Table]:
        out = {}
        for name in schemas.ANALYTICS:
            out[name] = ensure_table(self.catalog, name)  # evolves the schema when the definition grew
        return out

    # -- which days changed (first run, --full, or a table behind the others) ---------------
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
            increments.files_view(con, "newf", raw, new, self.sql.warehouse is None)
            rows = con.execute(
                "SELECT DISTINCT event_date FROM newf UNION SELECT DISTINCT CAST(received_at AS DATE) FROM newf"
            ).fetchall()
        finally:
            con.close()
        return sorted({r[0] for r in rows if r[0] is not None})

    # -- the run ---------------------------------------------------------------------
    def run(self, full: bool = False) -> EtlReport:
        started = time.perf_counter()
        rep = EtlReport()
        self._added = None
        with rep.step("plan"):
            raw = ensure_table(self.catalog, "raw.events")
            tables = self._tables()
            now = raw_position(raw)
        rep.raw_snapshot = now.snapshot_id
        with increments.Session(self.settings, raw, now, self.sql.warehouse is None) as session:
            if now.snapshot_id is not None:
                self._run_daily(session, tables, full, rep)
            with rep.step("whole tables"):
                self._run_whole(session, tables, full, rep)
        rep.seconds = time.perf_counter() - started
        metrics.ETL_RUNS.labels("ok").inc()
        return rep

    def _run_daily(self, session: increments.Session, tables: dict[str, Table], full: bool, rep: EtlReport) -> None:
        now = session.now
        # tables remembering the same raw position share one pass
        groups: dict[Position, list[str]] = {}
        for name in DAILY:
            pos = Position.of(tables[name])
            if pos.snapshot_id == now.snapshot_id and not full:
                rep.tables[name] = "unchanged"
                continue
            groups.setdefault(pos, []).append(name)
        for since, names in groups.items():
            if not full and len(names) == len(DAILY) and now.follows(since):
                with rep.step("new rows"):
                    delta = increments.daily_delta(session, since, tables)
                rep.new_events = delta.new_rows
                rep.days = sorted({*rep.days, *(d.isoformat() for d in delta.days | delta.dirty)})
                rep.rebuilt = sorted({*rep.rebuilt, *(d.isoformat() for d in delta.dirty)})
                built: dict[str, pa.Table] = {}
                if delta.dirty:
                    with rep.step("days rebuilt"):
                        built = self._build_days(session, sorted(delta.dirty), names)
                if not delta.dirty:
                    self._added = (since, {n: conform(delta.outputs[n][0] if n in delta.outputs else pa.table({}),
                                                      tables[n])
                                           for n in ("analytics.inventory", "analytics.transactions")})
                for name in names:
                    data, replace = delta.outputs.get(name, (None, set()))
                    with rep.step("commits"):
                        self._commit(tables[name], built.get(name), data, replace | delta.dirty, session, rep)
                continue
            # a table behind the others, the first run, --full, or raw written without offsets
            with rep.step("days rebuilt"):
                days = set(self._affected_days(session.raw, since.snapshot_id, full))
                old_horizon = increments.horizon_of(tables["analytics.device_daily"])
                if old_horizon is not None and not full:
                    days |= session.days_since(old_horizon)  # their uptime counts up to the new horizon
                rep.days = sorted({*rep.days, *(d.isoformat() for d in days)})
                rep.rebuilt = sorted({*rep.rebuilt, *(d.isoformat() for d in days)})
                built = self._build_days(session, sorted(days), names)
            for name in names:
                with rep.step("commits"):
                    self._commit(tables[name], built.get(name), None, days, session, rep)

    def _build_days(self, session: increments.Session, days: list[date], names: list[str]) -> dict[str, pa.Table]:
        """The rows of ``days`` for tables ``names``, recomputed from all of raw.

        Days are built a few at a time (about ``_CHUNK_ROWS`` raw rows), each chunk from
        the raw files of its occurred days (and of the later days whose events a clock far
        ahead moves onto it); a chunk's deduplicated events are computed once for all tables."""
        if not days:
            return {}
        con = session.connect()
        out: dict[str, list[pa.Table]] = {name: [] for name in names}
        try:
            con.register("horizon_arrow", session.horizon_table())
            con.execute("CREATE TEMP TABLE horizon AS SELECT newest FROM horizon_arrow")
            moved = session.moved_days(con, min(days))
            for chunk in session.day_chunks(days, _CHUNK_ROWS):
                session.raw_days_view("raw_chunk", set(chunk).union(*(moved.get(d, set()) for d in chunk)), con)
                con.register("affected_arrow", pa.table({"d": pa.array(chunk, pa.date32())}))
                con.execute("CREATE OR REPLACE TEMP TABLE affected AS SELECT d FROM affected_arrow")
                con.execute(transforms.ev_view(self.settings.lake.max_clock_skew_s, materialize=True, src="raw_chunk"))
                # transactions feed device_daily: compute them once even if only device_daily is stale
                tx = con.sql(transforms.TRANSACTIONS).to_arrow_table()
                con.register("tx_new", tx)
                for name in names:
                    out[name].append(tx if name == "analytics.transactions" else con.sql(DAILY[name]).to_arrow_table())
                con.unregister("tx_new")
        finally:
            con.close()
        return {name: pa.concat_tables(parts) for name, parts in out.items()}

    def _commit(self, table: Table, rebuilt: pa.Table | None, delta: pa.Table | None, replace: set[date],
                session: increments.Session, rep: EtlReport) -> None:
        """One commit: the days in ``replace`` are replaced, rows are added, the raw position is remembered."""
        parts = [conform(t, table) for t in (rebuilt, delta) if t is not None]
        data = pa.concat_tables(parts) if parts else conform(pa.table({}), table)
        props = {**session.now.props(), HORIZON_PROP: str(session.horizon_us())}
        if replace:
            with warnings.catch_warnings():
                # a day with no rows yet is the normal case for an incremental overwrite
                warnings.simplefilter("ignore", UserWarning)
                table.overwrite(data, overwrite_filter=In("event_date", sorted(replace)), snapshot_properties=props)
        else:
            # rows added, or nothing new but the raw snapshot moved (maintenance): remember it
            table.append(data, snapshot_properties=props)
        name = ".".join(table.name()[-2:])
        rep.tables[name] = f"{data.num_rows} rows" + (f" over {len(replace)} day(s)" if replace else " added")

    def _run_whole(self, session: increments.Session, tables: dict[str, Table], full: bool, rep: EtlReport) -> None:
        """Whole-table outputs: the device counters and stock-outs fold what is new when they
        can; the rest is recomputed and committed only when its content changed."""
        now = session.now
        outs: dict[str, pa.Table] = {"analytics.incidents": self._incidents()}
        names: list[str] = []
        dim, so = tables["analytics.dim_devices"], tables["analytics.stockouts"]
        dim_pos, so_pos = Position.of(dim), Position.of(so)
        if full or (dim_pos.snapshot_id != now.snapshot_id and not now.follows(dim_pos)):
            names.append("raw.events")  # counted whole: first run, --full, or an older release's table
        added = self._added
        so_fold = not full and added is not None and added[0] == so_pos
        pd_table = tables["analytics.product_devices"]
        pd_pos = Position.of(pd_table)
        pd_fold = not full and added is not None and added[0] == pd_pos
        so_current = not full and so_pos.snapshot_id == now.snapshot_id and now.snapshot_id is not None
        pd_current = not full and pd_pos.snapshot_id == now.snapshot_id and now.snapshot_id is not None
        if not (so_fold or so_current) or not (pd_fold or pd_current):
            names += ["analytics.inventory", "analytics.transactions"]  # recomputed over all of them
        con, _ = self.sql.connect(names, lock=False, pins={"raw.events": now.snapshot_id})
        try:
            if not (so_fold or so_current):
                outs["analytics.stockouts"] = con.sql(transforms.STOCKOUTS).to_arrow_table()
            if "raw.events" in names:
                seen = con.sql(transforms.DEVICE_SEEN).to_arrow_table()
            elif dim_pos.snapshot_id == now.snapshot_id:
                seen = increments.seen_of(dim)  # raw unchanged: the registry may still have changed
            else:
                seen = increments.seen_fold(session, dim_pos, dim)
            outs["analytics.dim_devices"] = self._devices(seen)
            con.register("dim_devices", outs["analytics.dim_devices"])
            outs["analytics.dim_sites"] = con.sql(
                "SELECT site_id, count(*) AS devices, min(first_seen_at) AS first_seen_at,"
                " max(last_seen_at) AS last_seen_at FROM dim_devices WHERE site_id IS NOT NULL GROUP BY 1"
            ).to_arrow_table()
            if pd_current:
                outs["analytics.product_devices"] = pd_table.scan().to_arrow()
            elif pd_fold:
                assert added is not None
                outs["analytics.product_devices"] = increments.product_devices_fold(
                    session, pd_table, added[1]["analytics.transactions"], added[1]["analytics.inventory"])
            else:
                outs["analytics.product_devices"] = con.sql(transforms.PRODUCT_DEVICES).to_arrow_table()
            con.register("product_devices", outs["analytics.product_devices"])
            outs["analytics.dim_products"] = con.sql(transforms.DIM_PRODUCTS).to_arrow_table()
        finally:
            con.close()
        if so_current:
            rep.tables["analytics.stockouts"] = "unchanged"
        elif so_fold:
            assert added is not None
            with rep.step("stock-outs"):
                self._fold_stockouts(session, so, tables["analytics.inventory"], added[1]["analytics.inventory"], rep)
        with rep.step("commits"):
            self._commit_whole(outs, tables, now, rep)

    def _commit_whole(self, outs: dict[str, pa.Table], tables: dict[str, Table], now: Position,
                      rep: EtlReport) -> None:
        """Commit each whole-table output whose content changed (and the raw position of those that fold)."""
        # they fold from a raw position
        positioned = {"analytics.dim_devices", "analytics.stockouts", "analytics.product_devices"}
        for name, out in outs.items():
            table = tables[name]
            data = conform(out, table)
            digest = content_hash(data)
            props = {HASH_PROP: digest, **(now.props() if name in positioned else {})}
            if newest_property(table, HASH_PROP) == digest:
                if name in positioned and Position.of(table) != now and props.keys() - {HASH_PROP}:
                    table.append(data.slice(0, 0), snapshot_properties=props)  # same rows, newer position
                rep.tables[name] = "unchanged"
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                table.overwrite(data, snapshot_properties=props)
            rep.tables[name] = f"{data.num_rows} rows"

    def _fold_stockouts(self, session: increments.Session, so: Table, inventory: Table, new_inv: pa.Table,
                        rep: EtlReport) -> None:
        # no content hash: the next whole recompute must not mistake an older hash for this content
        props = {HASH_PROP: "folded", **session.now.props()}
        res = increments.stockouts_delta(session, so, inventory, new_inv)
        if res is None:
            so.append(conform(pa.table({}), so), snapshot_properties=props)
            rep.tables["analytics.stockouts"] = "0 rows added"
            return
        rows, days = res
        if not days:
            so.append(conform(pa.table({}), so), snapshot_properties=props)
            rep.tables["analytics.stockouts"] = "unchanged rows"
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            so.overwrite(conform(rows, so), overwrite_filter=In("event_date", sorted(days)), snapshot_properties=props)
        rep.tables["analytics.stockouts"] = f"{rows.num_rows} rows over {len(days)} day(s)"

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
                "reported_site_id": s.get("site_id"), "firmware_reported_at": s.get("firmware_reported_at"),
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


def run_etl(settings: Settings, state: Any = None, full: bool = False) -> EtlReport:
    """Run the ETL once (``vendwatch etl run``)."""
    return Etl(settings, state=state).run(full=full)
