"""Lake benchmark: raw-writer throughput, ETL time and report times, beside PostgreSQL.

    PYTHONPATH=src python bench/lake.py --events 10000000          # the recorded run
    PYTHONPATH=src python bench/lake.py --events 200000 --log-events 50000   # quick

What it does, in one data directory under /tmp:
1. generates realistic fleet events straight into Arrow (vectorised, no Python loop per event);
2. writer throughput, two ways: (a) the lake-writer role end to end on ``--log-events``
   events pre-loaded into the embedded SQLite log (decode, Arrow, Parquet, catalog commit),
   (b) the raw-zone commit path (`commit_batch`) for all ``--events`` in 1M-event batches;
3. `vendwatch etl run` over everything;
4. each report (median of 3) with DuckDB over the lake;
5. the same report SQL on the same data in PostgreSQL (a throwaway cluster on a loopback
   port, loaded with COPY, indexed and analysed as a small team would), and the ratios.
Prints a JSON summary and a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vendwatch.bus import EVENTS
from vendwatch.config import load_settings
from vendwatch.lake.catalog import ensure_table, open_catalog
from vendwatch.lake.etl import run_etl
from vendwatch.lake.query import LakeSQL
from vendwatch.lake.reports import REPORTS, report_sql, run_report
from vendwatch.lake.role import LakeWriter
from vendwatch.lake.schemas import RAW_EVENTS
from vendwatch.lake.writer import commit_batch, committed_offsets
from vendwatch.runtime import Context

START = datetime(2026, 10, 1, tzinfo=UTC)
TYPES = ["heartbeat", "telemetry", "transaction", "inventory", "stock_alert", "refill",
         "fault", "security", "config", "connectivity", "log"]
SHARE = [0.33, 0.33, 0.22, 0.03, 0.01, 0.01, 0.02, 0.005, 0.005, 0.01, 0.035]
CATEGORY = {"heartbeat": "health", "telemetry": "health", "transaction": "sales", "inventory": "inventory",
            "stock_alert": "inventory", "refill": "inventory", "fault": "fault", "security": "security",
            "config": "config", "connectivity": "connectivity", "log": "log"}
SCHEMA = RAW_EVENTS.arrow_schema()


def _s(a: np.ndarray | pa.Array) -> pa.Array:
    return pc.cast(pa.array(a), pa.string())


def _pick(rng: np.random.Generator, options: list[str], n: int, p: list[float] | None = None) -> pa.Array:
    return pa.array(np.array(options)[rng.choice(len(options), n, p=p)])


def _join(*parts: object) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def payloads(t: str, n: int, rng: np.random.Generator) -> pa.Array:
    """JSON payloads of one type, built column-wise."""
    if t == "heartbeat":
        return _join('{"uptime_s":', _s(rng.integers(0, 10**7, n)), ',"firmware_version":"', _pick(rng, ["1.4.2", "1.5.0"], n), '"}')
    if t == "telemetry":
        temp = np.round(rng.normal(5, 1.5, n), 2)
        temp[rng.random(n) < 0.0005] = 999.0  # impossible readings for the cleansing to catch
        return _join('{"cabinet_temp_c":', _s(temp), ',"refrigeration_temp_c":', _s(np.round(temp - 2, 2)),
                     ',"voltage_v":', _s(np.round(rng.normal(230, 3, n), 1)),
                     ',"door_open":', _pick(rng, ["false", "true"], n, [0.98, 0.02]),
                     ',"power_on":', _pick(rng, ["true", "false"], n, [0.995, 0.005]), "}")
    if t == "transaction":
        prod = rng.integers(0, 40, n)
        paid = rng.random(n) > 0.03
        vend = np.where(paid, np.where(rng.random(n) > 0.02, "success", "failure"), "not_attempted")
        return _join('{"transaction_id":"tx', _s(rng.integers(0, 2**62, n)), '","product_id":"p', _s(prod),
                     '","slot":"A', _s(prod % 10), '","price_minor":', _s(100 + prod * 10),
                     ',"currency":"EUR","payment_method":"', _pick(rng, ["card", "cash", "qr", "mobile"], n, [0.5, 0.3, 0.1, 0.1]),
                     '","payment_status":"', pa.array(np.where(paid, "success", "failure")),
                     '","vend_status":"', pa.array(vend), '"}')
    if t in ("inventory", "refill"):
        segs = []
        for s in range(10):
            if t == "inventory":
                cnt = np.clip(rng.integers(-2, 11, n), 0, 10)
                segs.append(_join('{"slot":"A', str(s), '","product_id":"p', _s(rng.integers(0, 4, n) * 10 + s),
                                  '","count":', _s(cnt), ',"capacity":10}'))
            else:
                segs.append(pa.array([f'{{"slot":"A{s}","added":5,"count_after":10}}'] * n))
        body = pc.binary_join_element_wise(*segs, ",")
        return _join('{"slots":[', body, "]}")
    if t == "stock_alert":
        return _join('{"slot":"A', _s(rng.integers(0, 10, n)), '","level":"out","count":0}')
    if t == "fault":
        return _join('{"code":"', _pick(rng, ["motor_jam", "cooling_failure", "payment_device_failure"], n),
                     '","state":"', _pick(rng, ["raised", "cleared"], n), '"}')
    if t == "security":
        return _join('{"kind":"', _pick(rng, ["door_forced", "shock", "vibration"], n), '","magnitude_g":',
                     _s(np.round(rng.random(n) * 5, 2)), "}")
    if t == "config":
        return pa.array(['{"firmware_version":"1.5.0","update_status":"success"}'] * n)
    if t == "connectivity":
        return _join('{"network":"4g","signal_dbm":', _s(-rng.integers(50, 110, n)), "}")
    return _join('{"kind":"application","level":"info","message":"tick ', _s(rng.integers(0, 1000, n)), '"}')


def generate_chunk(k: int, n: int, span_s: float, devices: int, sites: int, seed: int, log_base: int) -> pa.Table:
    """n events of the k-th time slice, all types, as a raw.events Arrow table."""
    rng = np.random.default_rng(seed + k)
    counts = rng.multinomial(n, SHARE)
    parts = []
    t0 = START.timestamp() + k * span_s
    off = log_base
    for t, m in zip(TYPES, counts, strict=True):
        if m == 0:
            continue
        dev = rng.integers(0, devices, m)
        occ = ((t0 + np.sort(rng.random(m)) * span_s) * 1e6).astype("int64")
        rec = occ + rng.integers(200_000, 3_000_000, m)
        ids = _join("e", _s(np.full(m, k)), "-", _s(np.arange(off, off + m)))
        parts.append(pa.table({
            "event_id": ids,
            "device_id": _join("vm-", _s(dev)),
            "site_id": _join("site-", _s(dev % sites)),
            "type": pa.array([t] * m),
            "category": pa.array([CATEGORY[t]] * m),
            "occurred_at": pa.array(occ, pa.timestamp("us", tz="UTC")),
            "received_at": pa.array(rec, pa.timestamp("us", tz="UTC")),
            "event_date": pc.cast(pa.array(occ, pa.timestamp("us", tz="UTC")), pa.date32()),
            "seq": pa.array(np.arange(off, off + m)),
            "schema_version": pa.array(np.ones(m, dtype="int32")),
            "late": pa.array(np.zeros(m, dtype=bool)),
            "payload": payloads(t, m, rng),
            "log_partition": pa.array(np.zeros(m, dtype="int32")),
            "log_offset": pa.array(np.arange(off, off + m)),
        }))
        off += m
    return pa.concat_tables(parts).cast(SCHEMA)


def stored_json(t: pa.Table) -> list[tuple[str, bytes]]:
    """StoredEvent JSON records (what the collector puts on the log) for a generated table."""
    t = pa.table({c: (pc.cast(t[c], pa.string()) if pa.types.is_large_string(t[c].type) else t[c]) for c in t.column_names})
    ts = lambda c: _join(pc.strftime(t[c], format="%Y-%m-%dT%H:%M:%S"), "Z")  # noqa: E731
    js = _join('{"event_id":"', t["event_id"], '","device_id":"', t["device_id"], '","type":"', t["type"],
               '","occurred_at":"', ts("occurred_at"), '","received_at":"', ts("received_at"),
               '","data":', t["payload"], ',"seq":', _s(t["seq"]), ',"site_id":"', t["site_id"], '"}')
    return list(zip(t["device_id"].to_pylist(), (s.encode() for s in js.to_pylist()), strict=True))


def write_incidents(settings, devices: int, sites: int, days: float, seed: int, n: int = 20_000) -> int:  # type: ignore[no-untyped-def]
    """Synthetic incident lifecycle rows (as the incidents helper's export would give)."""
    from vendwatch.lake.schemas import INCIDENTS

    rng = np.random.default_rng(seed)
    opened = (START.timestamp() + rng.random(n) * days * 86400) * 1e6
    ack = opened + rng.exponential(600, n) * 1e6
    res = ack + rng.exponential(3600, n) * 1e6
    open_ = rng.random(n) < 0.05
    dev = rng.integers(0, devices, n)
    ts = pa.timestamp("us", tz="UTC")
    t = pa.table({
        "incident_id": _join("inc-", _s(np.arange(n))),
        "dedupe_key": _join("k-", _s(np.arange(n))),
        "rule_id": _pick(rng, ["cooling_failure", "offline", "payment_failures", "door_forced", "stockout"], n),
        "severity": _pick(rng, ["critical", "high", "medium", "low"], n),
        "status": pa.array(np.where(open_, "open", "resolved")),
        "device_id": _join("vm-", _s(dev)),
        "site_id": _join("site-", _s(dev % sites)),
        "opened_at": pa.array(opened.astype("int64"), ts),
        "acknowledged_at": pa.array(ack.astype("int64"), ts),
        "resolved_at": pa.array(np.where(open_, np.nan, res)).cast(pa.int64(), safe=False).cast(ts),
        "occurrences": pa.array(rng.integers(1, 20, n)),
        "external_ref": pa.nulls(n, pa.string()),
        "time_to_ack_s": pa.array((ack - opened) / 1e6),
        "time_to_resolve_s": pa.array(np.where(open_, np.nan, (res - opened) / 1e6)),
    })
    t = t.set_column(t.schema.get_field_index("resolved_at"), "resolved_at",
                     pc.if_else(pa.array(open_), pa.nulls(n, ts), t["resolved_at"]))
    t = t.set_column(t.schema.get_field_index("time_to_resolve_s"), "time_to_resolve_s",
                     pc.if_else(pa.array(open_), pa.nulls(n, pa.float64()), t["time_to_resolve_s"]))
    table = open_catalog(settings).load_table("analytics.incidents")
    table.overwrite(t.cast(INCIDENTS.arrow_schema()))
    return n


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


# -- PostgreSQL -------------------------------------------------------------------------
_PG_TYPES = {pa.string(): "TEXT", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE PRECISION",
             pa.bool_(): "BOOLEAN", pa.date32(): "DATE"}


def _pg_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    return _PG_TYPES.get(t, "TEXT")


class Postgres:
    def __init__(self, root: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL not installed (apt-get install -y postgresql)")
        self.bin = Path(bins[-1])
        self.dir = root / "pg"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb refuses root: run as the postgres system user
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def start(self) -> str:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir.parent, "postgres")
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                "-c shared_buffers=2GB -c work_mem=256MB -c max_parallel_workers_per_gather=2 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c maintenance_work_mem=1GB")
        self._run("pg_ctl", "-D", str(self.dir), "-o", opts, "-w", "-l", str(self.dir / "log.txt"), "start")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.dir), "-m", "immediate", "stop")


def load_postgres(dsn: str, settings, tables: list[str]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Copy the lake tables into PostgreSQL with COPY; index what the reports filter and group on."""
    import psycopg

    sql = LakeSQL(settings)
    times: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as pg:
        pg.execute("CREATE SCHEMA IF NOT EXISTS raw")
        pg.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        for name in tables:
            con, _ = sql.connect([name], lock=False)
            schema = con.sql(f"SELECT * FROM {name} LIMIT 0").to_arrow_table().schema
            cols = ", ".join(f'"{f.name}" {_pg_type(f.type)}' for f in schema)
            pg.execute(f"DROP TABLE IF EXISTS {name}")
            pg.execute(f"CREATE TABLE {name} ({cols})")
            started = time.perf_counter()
            with tempfile.NamedTemporaryFile(suffix=".csv", dir="/tmp") as tmp:
                con.execute(f"COPY (SELECT * FROM {name}) TO '{tmp.name}' (HEADER false, DELIMITER ',')")
                with pg.cursor() as cur, cur.copy(f"COPY {name} FROM STDIN WITH (FORMAT csv)") as cp, open(tmp.name, "rb") as f:
                    while chunk := f.read(8 << 20):
                        cp.write(chunk)
            con.close()
            times[name] = time.perf_counter() - started
        idx = {
            "raw.events": ["device_id", "event_date"],
            "analytics.transactions": ["event_date", "device_id"],
            "analytics.inventory": ["device_id, slot, observed_at"],
            "analytics.device_daily": ["event_date"],
            "analytics.stockouts": ["event_date"],
        }
        for name, cols_ in idx.items():
            if name in tables:
                for c in cols_:
                    pg.execute(f"CREATE INDEX ON {name} ({c})")
        for name in tables:
            pg.execute(f"ANALYZE {name}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--log-events", type=int, default=1_000_000, help="events run through the lake-writer role")
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--writer-only", action="store_true", help="measure only the lake-writer role (step 2a)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="vw-bench-lake-"))
    out: dict[str, object] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "events": args.events,
    }
    pgsrv = None
    try:
        # 1+2a. the lake-writer role end to end, from the embedded log
        s_role = load_settings(overrides={"data_dir": str(root / "role"), "bus.partitions": 4, "lake.batch_max_wait_s": 1.0})
        ctx = Context(s_role)
        ctx.log.create_topic(EVENTS)
        t = generate_chunk(0, args.log_events, 3600.0, args.devices, args.sites, args.seed + 1000, 0)
        recs = stored_json(t)
        del t
        for i in range(0, len(recs), 20_000):
            ctx.log.append(EVENTS, recs[i:i + 20_000])
        end = sum(ctx.log.end_offsets(EVENTS).values())
        del recs
        w = LakeWriter(ctx)
        stop = threading.Event()
        started = time.perf_counter()
        th = threading.Thread(target=w.run, args=(stop,), daemon=True)
        th.start()
        tbl = None
        first: tuple[float, int] | None = None
        while True:
            time.sleep(0.05)
            if w.sinks:
                tbl = w.sinks[EVENTS].table
                tbl.refresh()
                got = sum(committed_offsets(tbl).values())
                if first is None and got > 0:
                    first = (time.perf_counter(), got)
                if got >= end:
                    break
        role_s = time.perf_counter() - started
        assert first is not None
        # steady state: from the first commit to the last (start-up and the first batch excluded)
        if got > first[1]:
            out["writer_role_sustained_events_per_s"] = round((got - first[1]) / (time.perf_counter() - first[0]))
        stop.set()
        th.join()
        out["writer_role_events"] = args.log_events
        out["writer_role_events_per_s"] = round(args.log_events / role_s)
        print(f"lake-writer role: {args.log_events} events in {role_s:.1f}s = {args.log_events / role_s:,.0f}/s"
              f" (sustained, first to last commit: {out.get('writer_role_sustained_events_per_s', 0):,}/s)", flush=True)
        ctx.close()
        shutil.rmtree(root / "role", ignore_errors=True)
        if args.writer_only:
            _emit(out, args.json_out)
            return

        # 2b. raw-zone commit path for all events
        settings = load_settings(overrides={"data_dir": str(root / "lake"), "lake.sql_memory_limit": "6GB"})
        cat = open_catalog(settings)
        raw = ensure_table(cat, "raw.events")
        nchunks = (args.events + args.chunk - 1) // args.chunk
        span = args.days * 86400 / nchunks
        gen_s = write_s = 0.0
        done = 0
        for k in range(nchunks):
            n = min(args.chunk, args.events - done)
            t0 = time.perf_counter()
            chunk = generate_chunk(k, n, span, args.devices, args.sites, args.seed, done)
            t1 = time.perf_counter()
            commit_batch(raw, chunk, {("events", 0): done}, {("events", 0): done + n}, "bench")
            t2 = time.perf_counter()
            gen_s += t1 - t0
            write_s += t2 - t1
            done += n
            print(f"  chunk {k + 1}/{nchunks}: generate {t1 - t0:.1f}s, commit {t2 - t1:.1f}s", flush=True)
        out["generate_events_per_s"] = round(args.events / gen_s)
        out["raw_commit_events_per_s"] = round(args.events / write_s)
        print(f"raw commit path: {args.events / write_s:,.0f} events/s (generation {args.events / gen_s:,.0f}/s)", flush=True)

        # 3. ETL
        t0 = time.perf_counter()
        rep = run_etl(settings)
        out["etl_s"] = round(time.perf_counter() - t0, 2)
        out["etl_tables"] = rep.tables
        print(f"etl: {out['etl_s']}s {rep.tables}", flush=True)
        t0 = time.perf_counter()
        rep2 = run_etl(settings)
        out["etl_rerun_s"] = round(time.perf_counter() - t0, 2)
        assert all(v == "unchanged" for v in rep2.tables.values()), rep2.tables
        # no incident store in this benchmark: give analytics.incidents a realistic history
        n_inc = write_incidents(settings, args.devices, args.sites, args.days, args.seed)
        print(f"incidents: {n_inc} synthetic rows", flush=True)

        # 4. reports on DuckDB
        now = START + timedelta(days=args.days + 1)
        engine = LakeSQL(settings)
        lake_times: dict[str, float] = {}
        rows: dict[str, int] = {}
        for name in REPORTS:
            res = run_report(settings, name, now=now, sql=engine)
            rows[name] = res.table.num_rows
            lake_times[name] = timed(lambda n=name: run_report(settings, n, now=now, sql=engine))
            print(f"report {name}: {lake_times[name]:.3f}s ({rows[name]} rows)", flush=True)
        out["report_rows"] = rows
        out["report_s_duckdb"] = {k: round(v, 3) for k, v in lake_times.items()}

        # 5. PostgreSQL
        if not args.no_postgres:
            import psycopg

            pgsrv = Postgres(root)
            dsn = pgsrv.start()
            needed = sorted({t for r in REPORTS.values() for t in r.tables})
            t0 = time.perf_counter()
            out["pg_load_s"] = {k: round(v, 1) for k, v in load_postgres(dsn, settings, needed).items()}
            print(f"postgres load: {time.perf_counter() - t0:.0f}s", flush=True)
            pg_times = {}
            with psycopg.connect(dsn, autocommit=True) as pg:
                pg.execute("SET TIME ZONE 'UTC'")
                for name, r in REPORTS.items():
                    text = report_sql(r, now=now, stale_s=settings.lake.stale_after_s)
                    got = len(pg.execute(text).fetchall())  # also warms the cache like the DuckDB runs
                    if got != rows[name]:
                        raise SystemExit(f"{name}: PostgreSQL returned {got} rows, DuckDB {rows[name]}")
                    pg_times[name] = timed(lambda q=text: pg.execute(q).fetchall())
                    print(f"postgres {name}: {pg_times[name]:.3f}s", flush=True)
            out["report_s_postgres"] = {k: round(v, 3) for k, v in pg_times.items()}
            out["postgres_over_duckdb"] = {k: round(pg_times[k] / lake_times[k], 2) for k in REPORTS}
    finally:
        if pgsrv:
            pgsrv.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    _emit(out, args.json_out)


def _emit(out: dict[str, object], path: str | None) -> None:
    print(json.dumps(out, indent=2))
    if path:
        Path(path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
