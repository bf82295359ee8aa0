"""Stream stages one at a time: CPU per record of device-state, the detector, the
orchestrator and the lake writer on the embedded log, each variant against its alternative in the same run.

    PYTHONPATH=src python bench/stages.py [--events 200000] [--devices 1000] [--rounds 3]

The log holds the mixed load of bench/pipeline.py (requests of 100 events from one of
``--devices`` machines, fixed seed: telemetry 40 %, heartbeats 20 %, sales 20 %,
connectivity 10 %, inventory 5 %, faults 5 %, with occasional hot cabinets, low voltage
and failed vends, so the detector emits signals). Each measurement starts from a copy of
that log with a fresh state store and drains it as the stage's own loop does (poll,
process, group commit; the detector's steps and checkpoints; the orchestrator's steps),
timing the process CPU (``time.process_time``) of the drain only. Variants alternate
within each round; the table shows the median of the rounds (best in brackets):

* device-state, ``--batch-size`` records per poll (one transaction each): record by
  record (``poll``: a ``Record`` and a decode per record) against bulk (the stage's own
  read: ``poll_joined`` in runs of at most its ``read_chunk`` records, one decode per run);
* detector: the same two reads and poll sizes (clock = event time, checkpoints every 5 s;
  polls of 250 are what a live detector reads under load, where its per-poll costs show);
* orchestrator: per signal, over the signals the detector emitted, ``--signal-batch``
  signals per poll (the role is built before the clock starts);
* lake-writer (only with ``--stages lake-writer``): the role's loop (polls of 10,000,
  Arrow columns, Parquet files, Iceberg commits of ``lake.batch_max_events``) until the
  log is drained and committed; its tables are created before the clock starts. Its
  Parquet encoding runs in other threads, which the process CPU includes.

``--profile STAGE`` prints a cProfile of one bulk drain of that stage instead (the main
thread only: for the lake writer, not its commits).

``--count-sql`` adds, per orchestrator case, one more drain (untimed) that counts the
SQL statements (``execute``, ``query``, ``executemany`` calls: one round trip each on
PostgreSQL) and the transactions the stage ran, per signal. ``--postgres DSN`` puts the
orchestrator's state store on PostgreSQL (a schema of its own per drain, dropped after;
the log stays embedded), so its figure includes the client side of each round trip but
not the server's CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vendwatch import events as ev  # noqa: E402
from vendwatch.bus.base import EVENTS, SIGNALS  # noqa: E402
from vendwatch.config import load_settings  # noqa: E402
from vendwatch.detect.role import Detector  # noqa: E402
from vendwatch.runtime import Context  # noqa: E402

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
SETTINGS = {"detect.clock": "event", "detect.tick_interval_s": 0.01, "bus.partitions": 4}


def mixed_payload(rnd: random.Random, k: int, req: int) -> tuple[str, dict[str, Any]]:
    """One event of bench/pipeline.lua's mix."""
    r = rnd.randrange(100)
    if r < 40:
        hot = rnd.randrange(50) == 0
        return "telemetry", {"cabinet_temp_c": 48.5 if hot else round(3 + rnd.random() * 2, 1),
                             "refrigeration_temp_c": round(-1 - rnd.random(), 1), "door_open": rnd.randrange(20) == 0,
                             "motor_status": "idle", "voltage_v": 199.0 if rnd.randrange(60) == 0 else 228 + rnd.random() * 4,
                             "cpu_pct": rnd.randint(5, 60)}
    if r < 60:
        return "heartbeat", {"uptime_s": rnd.randint(1, 10_000_000), "firmware_version": f"4.2.{rnd.randint(0, 3)}",
                             "interval_s": 60}
    if r < 80:
        ok = rnd.randrange(25) != 0
        return "transaction", {"transaction_id": f"t-{req}-{k}", "product_id": f"p-{rnd.randint(1, 40)}",
                               "slot": f"A{rnd.randint(1, 12)}", "price_minor": rnd.randint(100, 400), "currency": "EUR",
                               "payment_method": rnd.choice(["cash", "card", "qr", "mobile"]),
                               "payment_status": "success", "vend_status": "success" if ok else "failure",
                               **({} if ok else {"failure_reason": "motor_jam"})}
    if r < 85:
        return "inventory", {"slots": [{"slot": f"A{s}", "product_id": f"p-{s}", "count": rnd.randint(0, 10),
                                        "capacity": 10, "low_threshold": 2} for s in range(1, 7)]}
    if r < 95:
        return "connectivity", {"network": rnd.choice(["4g", "5g", "wifi", "ethernet"]),
                                "signal_dbm": round(-50 - rnd.random() * 60), "latency_ms": round(20 + rnd.random() * 300)}
    return "fault", {"code": rnd.choice(["coin_jam", "bill_jam", "cooling_failure", "door_sensor"]),
                     "state": rnd.choice(["raised", "cleared"]), "component": "vend"}


def mixed_log(n_events: int, devices: int, seed: int = 42, batch: int = 100) -> list[tuple[str, bytes]]:
    rnd = random.Random(seed)
    enc = msgspec.json.Encoder()
    out: list[tuple[str, bytes]] = []
    for req in range(n_events // batch):
        dev = f"VM-{(req * 7919) % devices:05d}"
        at = T0 + timedelta(seconds=req * 0.01)
        for k in range(batch):
            typ, data = mixed_payload(rnd, k, req)
            e = ev.StoredEvent(event_id=f"r-{req}-{k}", device_id=dev, type=typ, occurred_at=at, received_at=at,
                               data=msgspec.Raw(enc.encode(data)), seq=req * batch + k, site_id=f"S{(req * 7919) % devices // 10:04d}")
            out.append((dev, ev.encode(e)))
    return out


def fresh(template: Path, into: Path, postgres: str | None = None) -> Context:
    """A data directory holding a copy of ``template``'s log and an empty state store
    (on PostgreSQL in a new schema of its own when ``postgres`` is a DSN)."""
    into.mkdir()
    shutil.copy(template / "bus.db", into / "bus.db")
    state: dict[str, Any] = {}
    if postgres:
        import psycopg

        schema = f"bench_stages_{os.getpid()}_{into.name.replace('-', '_')}"
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in postgres else "?"
        state = {"state.backend": "postgres", "state.postgres_dsn": f"{postgres}{sep}options=-csearch_path%3D{schema}"}
        _SCHEMAS[str(into)] = schema
    return Context(load_settings(overrides={"data_dir": str(into), **SETTINGS, **state}, environ={}))


_SCHEMAS: dict[str, str] = {}  # PostgreSQL schemas of the drains, by data directory


def drop_schema(postgres: str | None, into: Path) -> None:
    schema = _SCHEMAS.pop(str(into), None)
    if postgres and schema:
        import psycopg

        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class SqlCounter:
    """Counts the statements and transactions run through a ``Database`` (bench only)."""

    def __init__(self, db: Any) -> None:
        self.statements = self.transactions = 0
        self._depth = 0
        outer, plain_query = db.transaction, db.query
        counter = self

        class _Counted:
            def __init__(self, tx: Any) -> None:
                self.tx = tx

            def execute(self, sql: str, params: Any = ()) -> int:
                counter.statements += 1
                return int(self.tx.execute(sql, params))

            def executemany(self, sql: str, rows: Any) -> None:
                counter.statements += 1
                self.tx.executemany(sql, rows)

            def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
                counter.statements += 1
                return list(self.tx.query(sql, params))

            def one(self, sql: str, params: Any = ()) -> tuple[Any, ...] | None:
                rows = self.query(sql, params)
                return rows[0] if rows else None

        from contextlib import contextmanager

        @contextmanager
        def transaction() -> Any:
            if self._depth == 0:
                self.transactions += 1
            self._depth += 1
            try:
                with outer() as tx:
                    yield _Counted(tx)
            finally:
                self._depth -= 1

        def query(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
            self.statements += 1  # SQLite reads outside a transaction
            return list(plain_query(sql, params))

        db.transaction = transaction
        if db.dialect == "sqlite":  # elsewhere ``query`` opens a (counted) transaction
            db.query = query


def seal(data_dir: Path) -> None:
    """Fold the WAL into the database file so a plain copy is complete."""
    db = sqlite3.connect(data_dir / "bus.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


# -- the stages ----------------------------------------------------------------------------

_OPENED: dict[int, Any] = {}  # stages built before the clock starts, by id of their Context


def drain_device_state(ctx: Context, bulk: bool, batch_size: int) -> int:
    from vendwatch.state.projector import DeviceStateProjector

    proj = DeviceStateProjector(ctx)
    proj.bulk_read, proj.batch_size = bulk, batch_size
    c = proj._consumer = ctx.log.consumer(proj.group, proj.topics, on_assign=proj._on_assign,
                                          on_revoke=proj._on_revoke)
    n = 0
    while recs := (proj.poll(c, 0.0) if bulk else c.poll(batch_size, 0.0)):  # CheckpointedStage.run's loop
        proj.process(recs)
        if hasattr(proj, "commit_group"):
            proj._group_behind = True
            proj.commit_group(c)
        else:
            c.commit()
        n += len(recs)
    c.close()
    return n


def drain_detector(ctx: Context, bulk: bool, batch: int) -> int:
    det = Detector(ctx)
    det.bulk_read = bulk
    if batch:  # records per poll (detect.batch_size); 0: the setting's default
        det.s = msgspec.structs.replace(det.s, batch_size=batch)
    n = 0
    while k := det.step():
        n += k
    det.checkpoint()
    det._consumer.close()  # type: ignore[union-attr]
    return n


def open_orchestrator(ctx: Context) -> None:
    """Build the role before the clock starts (imports, its HTTP client): a one-off cost."""
    from vendwatch.incidents.role import Orchestrator

    _OPENED[id(ctx)] = Orchestrator(ctx)


def drain_orchestrator(ctx: Context, _bulk: bool, batch: int) -> int:
    orch = _OPENED.pop(id(ctx))
    orch.batch_size = batch
    n = 0
    while k := orch.step(0.0):
        n += k
    orch.close()
    return n




def open_lake_writer(ctx: Context) -> None:
    """Create the raw tables before the clock starts: a one-off cost, not a per-event one."""
    from vendwatch.bus.base import REJECTED
    from vendwatch.lake.role import LakeWriter
    from vendwatch.lake.system_logs import SYSTEM_LOGS

    lw = LakeWriter(ctx)
    lw._open()
    for t in (REJECTED, SYSTEM_LOGS):
        ctx.log.create_topic(t)
    _OPENED[id(ctx)] = lw


def drain_lake_writer(ctx: Context, bulk: bool, _batch: int) -> int:
    """``LakeWriter.run``'s loop until the log is drained, then its final commit: decoding,
    Arrow columns, Parquet files and Iceberg commits (``lake.batch_max_events`` a commit)."""
    import threading

    from vendwatch.bus.base import REJECTED
    from vendwatch.lake.system_logs import SYSTEM_LOGS

    lw = _OPENED.pop(id(ctx))
    c = lw._consumer = ctx.log.consumer("vendwatch-lake-writer", [EVENTS, REJECTED, SYSTEM_LOGS],
                                        on_assign=lw._on_assign, on_revoke=lw._on_revoke)
    lw._committer = threading.Thread(target=lw._commit_loop, daemon=True)
    lw._committer.start()
    n = 0
    try:
        while recs := (c.poll_joined(10_000, 0.0) if bulk else c.poll(10_000, 0.0)):  # type: ignore[attr-defined]
            lw.add_joined(recs) if bulk else lw.add(recs)  # type: ignore[arg-type]
            n += sum(len(j.offsets) for j in recs) if bulk else len(recs)  # type: ignore[union-attr]
            lw.flush_all()
        lw.flush_all(force=True)
    finally:
        lw._jobs.put(None)
        lw._committer.join()
        c.close()
    return n


DRAINS: dict[str, Callable[[Context, bool, int], int]] = {
    "device-state": drain_device_state, "detector": drain_detector, "orchestrator": drain_orchestrator,
    "lake-writer": drain_lake_writer}


def measure(stage: str, template: Path, work: Path, bulk: bool, batch: int, tag: str,
            postgres: str | None = None, count: bool = False) -> tuple[float, int, SqlCounter | None]:
    ctx = fresh(template, work / tag, postgres if stage == "orchestrator" else None)
    try:
        if stage == "lake-writer":
            open_lake_writer(ctx)
        elif stage == "orchestrator":
            open_orchestrator(ctx)
        counter = SqlCounter(ctx.state.db) if count else None
        t0 = time.process_time()
        n = DRAINS[stage](ctx, bulk, batch)
        return time.process_time() - t0, n, counter
    finally:
        ctx.close()
        drop_schema(postgres, work / tag)
        shutil.rmtree(work / tag, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="Events in the log [200000].")
    ap.add_argument("--devices", type=int, default=1000, help="Devices the requests rotate over [1000].")
    ap.add_argument("--rounds", type=int, default=3, help="Rounds; variants alternate within each [3].")
    ap.add_argument("--batch-size", default="2000,250",
                    help="device-state and detector records per poll, comma-separated [2000,250: a backlog, and what arrives in a live poll].")
    ap.add_argument("--signal-batch", default="500,10",
                    help="orchestrator signals per poll [500,10: a backlog, and a live poll's few].")
    ap.add_argument("--stages", default="device-state,detector,orchestrator",
                    help="Which stages [device-state,detector,orchestrator]; lake-writer also exists.")
    ap.add_argument("--variants", default="record,bulk",
                    help="Reads to compare, comma-separated [record,bulk]; 'record' alone runs on code without bulk reads.")
    ap.add_argument("--profile", metavar="STAGE", help="cProfile one bulk drain of STAGE instead.")
    ap.add_argument("--count-sql", action="store_true",
                    help="Also count the orchestrator's SQL statements and transactions per signal (one untimed drain per case).")
    ap.add_argument("--postgres", metavar="DSN",
                    help="Run the orchestrator's state store on PostgreSQL (a schema per drain, dropped after).")
    args = ap.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, SQLite {sqlite3.sqlite_version},"
          f" {os.cpu_count()} CPUs, load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())},"
          f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    with tempfile.TemporaryDirectory(prefix="vw-stages-") as tmp:
        work = Path(tmp)
        template = work / "template"
        t0 = time.process_time()
        ctx = Context(load_settings(overrides={"data_dir": str(template), **SETTINGS}, environ={}))
        ctx.log.create_topic(EVENTS)
        ctx.log.create_topic(SIGNALS)
        records = mixed_log(args.events, args.devices)
        for i in range(0, len(records), 5000):
            ctx.log.append(EVENTS, records[i : i + 5000])
        ctx.close()
        with_signals = work / "with-signals"
        ctx = fresh(template, with_signals)
        drain_detector(ctx, "bulk" in args.variants, 0)  # the orchestrator's input: what the detector emits
        n_signals = sum(ctx.log.end_offsets(SIGNALS).values()) - len(ctx.log.end_offsets(SIGNALS))
        ctx.close()
        seal(template)
        seal(with_signals)
        print(f"log: {len(records):,} events from {args.devices:,} devices, {n_signals:,} signals"
              f" (prepared in {time.process_time() - t0:.1f} s CPU)")
        stages = args.stages.split(",")
        if args.profile:
            import cProfile
            import pstats

            src = with_signals if args.profile == "orchestrator" else template
            ctx = fresh(src, work / "profile", args.postgres if args.profile == "orchestrator" else None)
            if args.profile == "lake-writer":
                open_lake_writer(ctx)
            elif args.profile == "orchestrator":
                open_orchestrator(ctx)
            prof = cProfile.Profile(time.process_time)  # CPU, not waits (fsync)
            prof.enable()
            sizes = args.signal_batch if args.profile == "orchestrator" else args.batch_size
            DRAINS[args.profile](ctx, True, int(sizes.split(",")[-1]))
            prof.disable()
            ctx.close()
            drop_schema(args.postgres, work / "profile")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
            return
        variants = args.variants.split(",")
        cases: list[tuple[str, str, bool, int]] = []
        for stage in stages:
            if stage in ("device-state", "detector"):
                for b in (int(x) for x in args.batch_size.split(",")):
                    cases += [(stage, f"{v}, polls of {b}", v == "bulk", b) for v in variants]
            elif stage == "lake-writer":
                cases += [(stage, v, v == "bulk", 0) for v in variants]
            else:
                cases += [(stage, f"polls of {b}", False, b) for b in (int(x) for x in args.signal_batch.split(","))]
        results: dict[tuple[str, str], list[tuple[float, int]]] = {}
        for rnd in range(args.rounds):
            for i, (stage, label, bulk, batch) in enumerate(cases):
                src = with_signals if stage == "orchestrator" else template
                cpu, n, _ = measure(stage, src, work, bulk, batch, f"r{rnd}-{i}", args.postgres)
                results.setdefault((stage, label), []).append((cpu, n))
        if args.postgres:
            print("\norchestrator state store: PostgreSQL (client CPU only)")
        print("\n| stage | variant | records | µs CPU per record, median (best) | records per CPU-second |")
        print("|---|---|---:|---:|---:|")
        for (stage, label), runs in results.items():
            per = [cpu / max(n, 1) * 1e6 for cpu, n in runs]
            med = statistics.median(per)
            print(f"| {stage} | {label} | {runs[0][1]:,} | {med:.1f} ({min(per):.1f}) | {1e6 / med:,.0f} |")
        if args.count_sql:
            print("\n| orchestrator | SQL statements per signal | transactions per signal |")
            print("|---|---:|---:|")
            for i, (stage, label, bulk, batch) in enumerate(cases):
                if stage != "orchestrator":
                    continue
                _, _, counter = measure(stage, with_signals, work, bulk, batch, f"count-{i}", args.postgres, count=True)
                assert counter is not None
                print(f"| {label} | {counter.statements / max(n_signals, 1):.2f}"
                      f" | {counter.transactions / max(n_signals, 1):.3f} |")
        print(f"\nload average after: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
