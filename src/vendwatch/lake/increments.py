"""The ETL's incremental step: fold the raw rows that are new since a table's last build.

Cost follows what is new, not the size of the lake: new rows are read from the raw
files added since the remembered snapshot (filtered by log offset, so files rewritten
by compaction add nothing); earlier data is read only in the partitions the new rows
touch (narrow columns: event ids of the same occurred days, the same days' transaction
ids, the touched days of the two aggregate tables, the touched slots' observations
since the stock-out each was in), and the per-device and per-product counters are
folded, not recounted.

Exactly what a rebuild from raw gives (``tests/lake/test_etl_increments.py``):

* a new copy of an event already in raw changes nothing, unless it was received
  before the copy that counted (then the event's days are rebuilt whole);
* a transaction id already counted that day keeps its row, unless the new event is
  earlier (then the day is rebuilt whole);
* the aggregate tables keep the sums and counts they merge with (``*_samples``,
  ``active_buckets``); their averages equal a rebuild's up to floating-point rounding;
* the newest day's uptime counts up to the newest receipt, so the days between the
  old and the new horizon are re-derived from their stored buckets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import BooleanExpression, GreaterThanOrEqual, In, IsNull, Or
from pyiceberg.table import Table

from vendwatch.config import Settings
from vendwatch.lake import transforms
from vendwatch.lake.query import _duck_type, _local_path

if TYPE_CHECKING:
    from vendwatch.lake.etl import Position

_EPOCH = date(1970, 1, 1)


def files_view(con: duckdb.DuckDBPyConnection, name: str, table: Table, paths: list[str], remote: bool) -> None:
    """A temp view ``name`` over some data files of ``table``, with the table's current
    columns (a column no file has yet reads as NULL)."""
    fields = table.schema().fields
    if not paths:
        cols = ", ".join(f'CAST(NULL AS {_duck_type(f.field_type)}) AS "{f.name}"' for f in fields)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols} WHERE false")
        return
    if remote:
        # object storage: read through pyiceberg's FileIO
        import pyarrow.dataset as ds

        scheme, _, rest = paths[0].partition("://")
        fs = table.io.fs_by_scheme(scheme, rest.split("/", 1)[0])  # type: ignore[attr-defined]
        con.register(f"{name}_src", ds.dataset([p.partition("://")[2] for p in paths], filesystem=fs, format="parquet"))
        src = f"{name}_src"
    else:
        src = "read_parquet([" + ", ".join("'" + _local_path(p).replace("'", "''") + "'" for p in paths) + "], union_by_name=true)"
    present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    cols = ", ".join(
        f'CAST("{f.name}" AS {_duck_type(f.field_type)}) AS "{f.name}"' if f.name in present
        else f'CAST(NULL AS {_duck_type(f.field_type)}) AS "{f.name}"'
        for f in fields
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols} FROM {src}")


def horizon_of(table: Table) -> int | None:
    """The newest raw receipt (epoch µs) ``table`` was built with."""
    from vendwatch.lake.catalog import newest_property
    from vendwatch.lake.etl import HORIZON_PROP

    v = newest_property(table, HORIZON_PROP)
    return int(v) if v else None


def _day(us: int) -> date:
    return datetime.fromtimestamp(us / 1e6, UTC).date()


class Session:
    """One run's DuckDB connection over one pinned raw snapshot, with the new rows read once per position."""

    def __init__(self, settings: Settings, raw: Table, now: Position, remote: bool) -> None:
        self.settings = settings
        self.raw = raw
        self.now = now
        self.remote = remote
        self.skew_s = settings.lake.max_clock_skew_s
        self.con = self.connect()
        self._tasks: list[Any] | None = None
        self._new: dict[Position, str] = {}
        self._horizon: int | None = None

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection configured as the lake's SQL sessions are (threads, memory, UTC)."""
        cfg = self.settings.lake
        con = duckdb.connect(":memory:", config={
            "threads": cfg.sql_threads, "memory_limit": cfg.sql_memory_limit,
            "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        })
        con.execute("SET TimeZone='UTC'")
        return con

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.con.close()

    # -- raw files -------------------------------------------------------------------
    def raw_tasks(self) -> list[Any]:
        if self._tasks is None:
            self._tasks = [] if self.now.snapshot_id is None else list(
                self.raw.scan(snapshot_id=self.now.snapshot_id).plan_files())
        return self._tasks

    def new_rows(self, since: Position) -> str:
        """A temp table of the raw rows past ``since``'s offsets (every copy, as in raw)."""
        if since in self._new:
            return self._new[since]
        name = f"new_rows_{len(self._new)}"
        paths = [t.file.file_path for t in self.raw_tasks()]
        if since.snapshot_id is not None and self.raw.snapshot_by_id(since.snapshot_id) is not None:
            old = {t.file.file_path for t in self.raw.scan(snapshot_id=since.snapshot_id).plan_files()}
            paths = [p for p in paths if p not in old]
        files_view(self.con, f"{name}_files", self.raw, paths, self.remote)
        self._offsets_table(f"{name}_seen", since)
        self.con.execute(f"""CREATE TEMP TABLE {name} AS SELECT f.* FROM {name}_files f
            LEFT JOIN {name}_seen s ON s.p = f.log_partition WHERE f.log_offset >= coalesce(s.o, 0)""")
        self._new[since] = name
        return name

    def _offsets_table(self, name: str, pos: Position) -> None:
        offs = pos.offsets or {}
        self.con.register(f"{name}_arrow", pa.table({"p": pa.array(list(offs), pa.int32()),
                                                     "o": pa.array(list(offs.values()), pa.int64())}))
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")

    def raw_days_view(self, name: str, days: Iterable[date], con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Raw files of the given occurred days (raw is partitioned by them)."""
        want = {(d - _EPOCH).days for d in days}
        paths = [t.file.file_path for t in self.raw_tasks() if _part_day(t) in want or _part_day(t) is None]
        files_view(con or self.con, name, self.raw, paths, self.remote)

    def moved_days(self, con: duckdb.DuckDBPyConnection, first: date) -> dict[date, set[date]]:
        """Receipt day -> the later occurred days of events received that day (device clocks far
        ahead: their event time becomes the receipt), for receipts from ``first`` on."""
        start = (first - _EPOCH).days
        paths = [t.file.file_path for t in self.raw_tasks() if (_part_day(t) or start + 1) > start]
        files_view(con, "raw_later", self.raw, paths, self.remote)
        out: dict[date, set[date]] = {}
        for rd, ed in con.execute("""SELECT DISTINCT CAST(received_at AS DATE) AS rd, event_date FROM raw_later
                                     WHERE event_date > CAST(received_at AS DATE)""").fetchall():
            out.setdefault(rd, set()).add(ed)
        return out

    def table_days_view(self, name: str, table: Table, days: set[date]) -> None:
        """Data files of a day-partitioned analytics table holding ``days``."""
        self.table_view(name, table, In("event_date", sorted(days)) if days else None)

    def table_view(self, name: str, table: Table, row_filter: BooleanExpression | None) -> None:
        """Data files of ``table`` that may hold rows matching ``row_filter`` (None: no file)."""
        snap = table.current_snapshot()
        paths = [] if snap is None or row_filter is None else [
            t.file.file_path for t in table.scan(snapshot_id=snap.snapshot_id, row_filter=row_filter).plan_files()]
        files_view(self.con, name, table, paths, self.remote)

    def day_chunks(self, days: list[date], max_rows: int) -> list[list[date]]:
        """Consecutive days grouped so that each group's raw rows (by occurred day) stay near ``max_rows``."""
        rows: dict[int, int] = {}
        for t in self.raw_tasks():
            d = _part_day(t)
            if d is not None:
                rows[d] = rows.get(d, 0) + t.file.record_count
        chunks: list[list[date]] = []
        n = 0
        for d in sorted(days):
            size = rows.get((d - _EPOCH).days, 0)
            if chunks and n + size <= max_rows:
                chunks[-1].append(d)
                n += size
            else:
                chunks.append([d])
                n = size
        return chunks

    # -- the newest receipt ------------------------------------------------------------
    def horizon_us(self) -> int:
        if self._horizon is None:
            files_view(self.con, "raw_all", self.raw, [t.file.file_path for t in self.raw_tasks()], self.remote)
            v = self.con.execute("SELECT max(received_at) FROM raw_all").fetchone()
            self._horizon = _us(v[0]) if v and v[0] is not None else 0
        return self._horizon

    def fold_horizon(self, old_us: int, new_rows: str) -> None:
        v = self.con.execute(f"SELECT max(received_at) FROM {new_rows}").fetchone()
        self._horizon = max(old_us, _us(v[0]) if v and v[0] is not None else 0)

    def horizon_table(self) -> pa.Table:
        h = self.horizon_us()
        return pa.table({"newest": pa.array([h or None], pa.timestamp("us", tz="UTC"))})

    def days_since(self, old_us: int) -> set[date]:
        """Days whose uptime denominator moved with the horizon (old horizon's day to the new one's)."""
        new = self.horizon_us()
        if new <= old_us:
            return set()
        start, end = _day(old_us), _day(new)
        return {start + timedelta(days=i) for i in range((end - start).days + 1)}


def _part_day(task: Any) -> int | None:
    try:
        v = task.file.partition[0]
    except (IndexError, TypeError):
        return None
    return v if isinstance(v, int) else None


def _us(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000) if ts.tzinfo else int(ts.replace(tzinfo=UTC).timestamp() * 1_000_000)


@dataclass
class Delta:
    new_rows: int = 0
    days: set[date] = field(default_factory=set)  # days of the new events
    dirty: set[date] = field(default_factory=set)  # days to rebuild whole from raw
    outputs: dict[str, tuple[pa.Table, set[date]]] = field(default_factory=dict)  # rows, partitions they replace


def daily_delta(session: Session, since: Position, tables: dict[str, Table]) -> Delta:
    """The day-partitioned tables' changes for the raw rows past ``since``."""
    con, skew = session.con, session.skew_s
    new = session.new_rows(since)
    (count,) = con.execute(f"SELECT count(*) FROM {new}").fetchone()  # type: ignore[misc]
    delta = Delta(new_rows=count)
    daily = tables["analytics.device_daily"]
    old_horizon = horizon_of(daily) or 0
    session.fold_horizon(old_horizon, new)
    if count == 0:
        return delta
    key, first = transforms.EVENT_KEY, transforms.FIRST_COPY
    # Which new rows count: the first copy of each event, unless an earlier run already
    # counted a copy. Few events have a second copy, so the copies are found by hashing
    # the keys (no sort of the new rows, no copy of their payloads): only the keys seen
    # more than once are ordered.
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ndup AS SELECT {key} FROM {new} GROUP BY ALL HAVING count(*) > 1""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE nlater AS SELECT rid FROM (
        SELECT n.rowid AS rid, row_number() OVER (PARTITION BY {key} ORDER BY {first}) AS k
        FROM {new} n SEMI JOIN ndup USING ({key})) WHERE k > 1""")
    dates = [r[0] for r in con.execute(f"SELECT DISTINCT event_date FROM {new}").fetchall()]
    session.raw_days_view("raw_days", dates)
    session._offsets_table("since_offsets", since)
    # the first earlier copy of each new event (the narrow columns of the new rows' days); the
    # constant bound lets DuckDB skip the row groups of new rows without reading them
    below = max((since.offsets or {0: 0}).values(), default=0)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE oldbest AS
        SELECT r.device_id, r.event_id, r.event_date, r.occurred_at, r.received_at, r.log_partition, r.log_offset
        FROM raw_days r LEFT JOIN since_offsets s ON s.p = r.log_partition
        SEMI JOIN {new} n ON n.device_id = r.device_id AND n.event_id = r.event_id AND n.event_date = r.event_date
        WHERE r.log_offset < coalesce(s.o, 0) AND r.log_offset < {below}
        QUALIFY row_number() OVER (PARTITION BY r.device_id, r.event_id, r.event_date
                                   ORDER BY r.received_at, r.log_partition, r.log_offset) = 1""")
    ahead = f"INTERVAL {float(skew)} SECOND"
    # an earlier copy counted, and a new one was received before it: both days are rebuilt
    # (every new copy received before it is compared: the first of them is among them, and
    # rebuilding one day more changes nothing)
    for (d_new, d_old) in con.execute(f"""
        SELECT DISTINCT
               CAST(CASE WHEN n.occurred_at > n.received_at + {ahead} THEN n.received_at ELSE n.occurred_at END AS DATE),
               CAST(CASE WHEN o.occurred_at > o.received_at + {ahead} THEN o.received_at ELSE o.occurred_at END AS DATE)
        FROM {new} n JOIN oldbest o USING (device_id, event_id, event_date)
        WHERE (n.received_at, n.log_partition, n.log_offset) < (o.received_at, o.log_partition, o.log_offset)
    """).fetchall():
        delta.dirty |= {d_new, d_old}
    # the new rows that do not count: later copies, and copies of events counted before
    con.execute(f"""CREATE OR REPLACE TEMP TABLE nskip AS SELECT rid FROM nlater
        UNION ALL SELECT n.rowid FROM {new} n SEMI JOIN oldbest o USING (device_id, event_id, event_date)""")
    (skipped,) = con.execute("SELECT count(*) FROM nskip").fetchone()  # type: ignore[misc]
    # a view, not a copy of the payloads: each transform reads its own event types from it
    con.execute(f"""CREATE OR REPLACE TEMP VIEW added AS SELECT *, {transforms.skew_columns(skew)} FROM {new}
        {"WHERE rowid NOT IN (SELECT rid FROM nskip)" if skipped else ""}""")
    days = {r[0] for r in con.execute("SELECT DISTINCT day FROM added").fetchall()}
    delta.days = days
    horizon_days = session.days_since(old_horizon) if old_horizon else set()
    tele, dd = tables["analytics.telemetry_hourly"], daily
    session.table_days_view("old_tele", tele, days)
    session.table_days_view("old_daily", dd, days | horizon_days)
    # rows of an older release lack the counts a merge needs: rebuild those days
    delta.dirty |= {r[0] for r in con.execute(
        "SELECT DISTINCT event_date FROM old_tele WHERE cabinet_temp_samples IS NULL"
        " UNION SELECT DISTINCT event_date FROM old_daily WHERE active_buckets IS NULL").fetchall()}

    def set_affected() -> None:
        con.register("affected_arrow", pa.table({"d": pa.array(sorted(days - delta.dirty), pa.date32())}))
        con.execute("CREATE OR REPLACE TEMP TABLE affected AS SELECT d FROM affected_arrow")

    set_affected()
    con.execute("CREATE OR REPLACE TEMP VIEW ev AS SELECT * FROM added WHERE day IN (SELECT d FROM affected)")
    # transactions: a transaction id already counted that day keeps its row unless the new event is earlier
    con.execute(f"CREATE OR REPLACE TEMP TABLE tx_cand AS {transforms.TRANSACTIONS}")
    tx_days = {r[0] for r in con.execute("SELECT DISTINCT event_date FROM tx_cand").fetchall()}
    session.table_days_view("old_tx_days", tables["analytics.transactions"], tx_days)
    same = "o.device_id = c.device_id AND o.transaction_id = c.transaction_id AND o.event_date = c.event_date"
    # the day's stored transactions are read once, for the candidates' keys only
    con.execute(f"""CREATE OR REPLACE TEMP TABLE old_tx AS
        SELECT o.device_id, o.transaction_id, o.event_date, o.event_time, o.event_id FROM old_tx_days o
        SEMI JOIN tx_cand c ON {same}""")
    lost = {r[0] for r in con.execute(f"""SELECT DISTINCT c.event_date FROM tx_cand c JOIN old_tx o ON {same}
        WHERE (c.event_time, c.event_id) < (o.event_time, o.event_id)""").fetchall()}
    if lost:
        delta.dirty |= lost
        set_affected()
    con.execute(f"""CREATE OR REPLACE TEMP TABLE tx_new AS SELECT c.* FROM tx_cand c ANTI JOIN old_tx o ON {same}
        WHERE c.event_date IN (SELECT d FROM affected)""")

    out = delta.outputs
    out["analytics.transactions"] = (con.sql("SELECT * FROM tx_new").to_arrow_table(), set())
    for name, sql in (("analytics.inventory", transforms.INVENTORY), ("analytics.faults", transforms.FAULTS),
                      ("analytics.security_events", transforms.SECURITY_EVENTS),
                      ("analytics.device_logs", transforms.DEVICE_LOGS)):
        out[name] = (con.sql(sql).to_arrow_table(), set())
    # telemetry: the touched device-hours re-merged; the rest of their days kept as stored
    con.execute(f"CREATE OR REPLACE TEMP TABLE parts AS {transforms.TELEMETRY_PARTS}")
    t_days = {r[0] for r in con.execute("SELECT DISTINCT event_date FROM parts").fetchall()} - delta.dirty
    con.execute("CREATE OR REPLACE TEMP VIEW old AS SELECT * FROM old_tele WHERE event_date IN (SELECT event_date FROM parts)")
    out["analytics.telemetry_hourly"] = (con.sql(transforms.TELEMETRY_MERGE).to_arrow_table(), t_days)
    # device_daily: touched days re-merged, and the days whose uptime moved with the horizon
    con.register("horizon_arrow", session.horizon_table())
    con.execute("CREATE OR REPLACE TEMP TABLE horizon AS SELECT newest FROM horizon_arrow")
    con.execute(f"CREATE OR REPLACE TEMP TABLE parts AS {transforms.DEVICE_DAILY_PARTS}")
    d_days = ({r[0] for r in con.execute("SELECT DISTINCT event_date FROM parts").fetchall()} | horizon_days) - delta.dirty
    con.register("d_days_arrow", pa.table({"d": pa.array(sorted(d_days), pa.date32())}))
    con.execute("CREATE OR REPLACE TEMP VIEW old AS SELECT * FROM old_daily WHERE event_date IN (SELECT d FROM d_days_arrow)")
    out["analytics.device_daily"] = (con.sql(transforms.DEVICE_DAILY_MERGE).to_arrow_table(), d_days)
    return delta


def seen_of(dim: Table) -> pa.Table:
    """The lake's device counters as analytics.dim_devices holds them."""
    rows = dim.scan(selected_fields=("device_id", "reported_site_id", "first_seen_at", "last_seen_at", "events",
                                     "firmware_version", "firmware_reported_at")).to_arrow()
    rows = rows.filter(pc.greater(rows["events"], 0))
    return rows.rename_columns(["site_id" if c == "reported_site_id" else c for c in rows.column_names])


def seen_fold(session: Session, since: Position, dim: Table) -> pa.Table:
    """analytics.dim_devices' counters with the raw rows past ``since`` folded in."""
    new = session.new_rows(since)
    session.con.execute(f"CREATE OR REPLACE TEMP VIEW new_rows AS SELECT * FROM {new}")
    prev = dim.scan().to_arrow()
    session.con.register("prev", prev)
    try:
        return session.con.sql(transforms.DEVICE_SEEN_FOLD).to_arrow_table()
    finally:
        session.con.unregister("prev")


def stockouts_delta(session: Session, stockouts: Table, inventory: Table,
                    new_inv: pa.Table) -> tuple[pa.Table, set[date]] | None:
    """The stock-out partitions that the observations just added to analytics.inventory
    change, with their rows; None when nothing is touched.

    For each touched slot, intervals that ended before its earliest new observation stay
    as stored. The slot is re-derived from the start of the interval it was in at that
    moment (if it was out of stock then), else from the new observation itself."""
    con = session.con
    if new_inv.num_rows == 0:
        return None
    con.register("new_inv", new_inv.select(["device_id", "slot", "observed_at"]))
    con.execute("CREATE OR REPLACE TEMP TABLE touched AS"
                " SELECT device_id, slot, min(observed_at) AS t_new FROM new_inv GROUP BY 1, 2")
    con.unregister("new_inv")
    (t_min,) = con.execute("SELECT min(t_new) FROM touched").fetchone()  # type: ignore[misc]
    session.table_view("so_open", stockouts, Or(IsNull("ended_at"), GreaterThanOrEqual("ended_at", t_min.isoformat())))
    con.execute("""CREATE OR REPLACE TEMP TABLE cuts AS
        SELECT t.device_id, t.slot, coalesce(max(s.started_at) FILTER (
                   WHERE s.started_at < t.t_new AND (s.ended_at IS NULL OR s.ended_at >= t.t_new)), t.t_new) AS cut
        FROM touched t LEFT JOIN so_open s ON s.device_id = t.device_id AND s.slot = t.slot
        GROUP BY t.device_id, t.slot, t.t_new""")
    (cut,) = con.execute("SELECT min(cut) FROM cuts").fetchone()  # type: ignore[misc]
    first_day = cut.date() if cut.tzinfo is None else cut.astimezone(UTC).date()
    session.table_view("inv_window", inventory, GreaterThanOrEqual("observed_at", cut.isoformat()))
    con.execute("""CREATE OR REPLACE TEMP VIEW obs AS SELECT i.* FROM inv_window i
        JOIN cuts c ON c.device_id = i.device_id AND c.slot = i.slot WHERE i.observed_at >= c.cut""")
    session.table_view("so_days", stockouts, GreaterThanOrEqual("event_date", first_day.isoformat()))
    con.execute(f"CREATE OR REPLACE TEMP TABLE so_new AS SELECT * FROM ({transforms.stockouts('obs')})")
    # the partitions that change: those of replaced intervals and of re-derived ones
    con.execute("""CREATE OR REPLACE TEMP TABLE so_changed AS
        SELECT DISTINCT s.event_date AS d FROM so_days s JOIN cuts c ON c.device_id = s.device_id AND c.slot = s.slot
        WHERE s.started_at >= c.cut
        UNION SELECT DISTINCT event_date FROM so_new""")
    days = {r[0] for r in con.execute("SELECT d FROM so_changed").fetchall()}
    rows = con.sql("""
        SELECT s.* FROM so_days s LEFT JOIN cuts c ON c.device_id = s.device_id AND c.slot = s.slot
        WHERE s.event_date IN (SELECT d FROM so_changed) AND (c.cut IS NULL OR s.started_at < c.cut)
        UNION ALL BY NAME SELECT * FROM so_new
    """).to_arrow_table()
    return rows, days


def product_devices_fold(session: Session, table: Table, new_tx: pa.Table, new_inv: pa.Table) -> pa.Table:
    """analytics.product_devices with this run's new transactions and slot observations folded in."""
    con = session.con
    con.register("prev", table.scan().to_arrow())
    con.register("new_tx", new_tx)
    con.register("new_inv", new_inv)
    try:
        return con.sql(transforms.PRODUCT_DEVICES_FOLD).to_arrow_table()
    finally:
        for n in ("prev", "new_tx", "new_inv"):
            con.unregister(n)
