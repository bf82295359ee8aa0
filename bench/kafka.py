"""Scale-out benchmark: collector -> Kafka throughput, with the SQLite log as the baseline
measured in the same run (and, with --e2e, event accepted -> incident opened latency).

Needs the services (`scripts/services.sh up`). Run from the repo root:

    PYTHONPATH=src python bench/kafka.py --seconds 15

Parts:
  log      one process appending 1,000-event batches: KafkaLog vs SqliteLog
  ingest   HTTP load (100-event batches, concurrent requests) against
           1 embedded collector (SQLite log + SQLite dedupe: the baseline) and
           1 and 2 collector processes on Kafka + the PostgreSQL dedupe index
  stage    one device-state replica folding events from the log into the state
           store: SQLite log + SQLite state vs Kafka + PostgreSQL
  detector one detector replica evaluating a simulated fleet's events (SQLite vs
           Kafka + PostgreSQL; needs the detection part)
  e2e      event accepted -> incident opened (p50/p99) with 2 collectors, 2 detectors,
           an orchestrator and a lake writer on Kafka + PostgreSQL (needs the
           detection, incident and lake parts)
Prints a JSON document (also written to --out) and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vendwatch import events as ev  # noqa: E402
from vendwatch.bus.kafka import KafkaLog  # noqa: E402
from vendwatch.bus.sqlite import SqliteLog  # noqa: E402
from vendwatch.config import KafkaSettings, Settings, StateSettings  # noqa: E402
from vendwatch.state import open_state  # noqa: E402

KAFKA = os.environ.get("VENDWATCH_TEST_KAFKA", "127.0.0.1:9092")
POSTGRES = os.environ.get("VENDWATCH_TEST_POSTGRES", "postgresql://vendwatch:vendwatch@127.0.0.1:5432/vendwatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored_value(device: str) -> bytes:
    now = datetime.now(UTC)
    return ev.encode(ev.StoredEvent(
        event_id=uuid.uuid4().hex, device_id=device, type="telemetry", occurred_at=now, received_at=now,
        data=msgspec.Raw(b'{"temp_c":4.5,"door_open":false,"power_w":210.0}'), seq=1, site_id="site-1"))


# -- part 1: log append ---------------------------------------------------------------
def bench_log_append(seconds: float, batch: int) -> dict[str, Any]:
    devices = [f"vm-{i:05d}" for i in range(1000)]
    items = [(devices[i % len(devices)], stored_value(devices[i % len(devices)])) for i in range(batch)]
    out: dict[str, Any] = {"batch": batch, "event_bytes": len(items[0][1])}
    tmp = Path(tempfile.mkdtemp(prefix="vw-bench-"))
    logs = {
        "sqlite": SqliteLog(tmp / "bus.db", default_partitions=12),
        "kafka": KafkaLog(KafkaSettings(bootstrap_servers=KAFKA, topic_prefix=f"vwbench.{uuid.uuid4().hex[:6]}.",
                                        partitions=12)),
    }
    for name, log in logs.items():
        log.create_topic("events", 12)
        log.append("events", items)  # warm up (connections, topic metadata)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            log.append("events", items)
            n += len(items)
        dt = time.perf_counter() - t0
        out[name] = {"events": n, "seconds": round(dt, 2), "events_per_s": round(n / dt)}
        log.close()
    shutil.rmtree(tmp, ignore_errors=True)
    out["kafka_vs_sqlite"] = round(out["kafka"]["events_per_s"] / out["sqlite"]["events_per_s"], 2)
    return out


# -- CPU accounting: on a shared 2-core machine, events per CPU-second is the stable figure
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (and their reaped children)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / _TICK  # utime stime cutime cstime
    return total


def service_pids() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"kafka": [], "postgres": []}
    pidfile = ROOT / ".services" / "kafka" / "kafka.pid"
    if pidfile.exists():
        out["kafka"] = [int(pidfile.read_text())]
    r = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True)
    out["postgres"] = [int(x) for x in r.stdout.split()]
    return out


# -- part 2: HTTP ingest --------------------------------------------------------------
class Collector:
    def __init__(self, env: dict[str, str], data_dir: Path, name: str) -> None:
        self.port = free_port()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = (data_dir.parent / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vendwatch", "run", "collector", "--data-dir", str(data_dir), "--port", str(self.port)],
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"collector {name} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


async def load(urls: list[str], tokens: dict[str, str], seconds: float, batch: int, concurrency: int) -> dict[str, Any]:
    devices = list(tokens)
    accepted = 0
    errors = 0
    latencies: list[float] = []
    enc = msgspec.json.Encoder()
    # bodies are made before the clock starts: the load generator shares the 2 cores
    now = datetime.now(UTC).isoformat()
    n_bodies = int(seconds * 60_000 / batch) + concurrency
    bodies = [enc.encode({"events": [
        {"event_id": uuid.uuid4().hex, "device_id": devices[k % len(devices)], "type": "telemetry", "occurred_at": now,
         "data": {"temp_c": 4.5, "door_open": False, "power_w": 210.0}} for _ in range(batch)]}) for k in range(n_bodies)]
    deadline = time.perf_counter() + seconds

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        nonlocal accepted, errors
        k = i
        while time.perf_counter() < deadline and k < n_bodies:
            device = devices[k % len(devices)]
            url = urls[k % len(urls)]
            body = bodies[k]
            k += concurrency
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/events", content=body, headers={
                    "Authorization": f"Bearer {tokens[device]}", "Content-Type": "application/json"})
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if r.status_code == 200:
                accepted += r.json()["accepted"]
            else:
                errors += 1

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(i, client) for i in range(concurrency)))
    dt = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else 0.0

    return {"accepted": accepted, "errors": errors, "seconds": round(dt, 2), "events_per_s": round(accepted / dt),
            "request_ms_p50": pct(0.5), "request_ms_p99": pct(0.99)}


def measured_load(collectors: list[Collector], tokens: dict[str, str], seconds: float, batch: int,
                  concurrency: int) -> dict[str, Any]:
    """Run the load and add CPU seconds of collectors, broker, database and load generator."""
    import resource

    groups = {"collectors": [c.proc.pid for c in collectors], **service_pids()}
    before = {k: cpu_seconds(v) for k, v in groups.items()}
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    res = asyncio.run(load([c.url for c in collectors], tokens, seconds, batch, concurrency))
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {k: round(cpu_seconds(v) - before[k], 2) for k, v in groups.items()}
    cpu["load_generator"] = round(self_after.ru_utime + self_after.ru_stime - self_before.ru_utime - self_before.ru_stime, 2)
    res["cpu_seconds"] = cpu
    if cpu["collectors"] > 0:
        res["events_per_collector_cpu_s"] = round(res["accepted"] / cpu["collectors"])
    return res


def register(settings: Settings, n: int) -> dict[str, str]:
    store = open_state(settings)
    tokens = {}
    with store.db.transaction() as tx:
        for i in range(n):
            d = f"vm-{i:05d}"
            tokens[d] = store.add_device(d, "site-1", tx=tx)
    store.close()
    return tokens


def bench_ingest(seconds: float, batch: int, concurrency: int, devices: int) -> dict[str, Any]:
    import psycopg

    fast = {"VENDWATCH_INGEST__RATE_LIMIT_EVENTS_PER_S": "1000000000", "VENDWATCH_INGEST__RATE_LIMIT_BURST": "1000000000",
            "VENDWATCH_LOG_LEVEL": "warning"}
    out: dict[str, Any] = {"batch": batch, "concurrency": concurrency, "devices": devices}
    tmp = Path(tempfile.mkdtemp(prefix="vw-bench-ingest-"))

    # baseline: one embedded collector (SQLite log + SQLite dedupe in one transaction)
    data = tmp / "sqlite" / "data"
    tokens = register(Settings(data_dir=str(data)), devices)
    c = Collector(fast, data, "sqlite-collector")
    try:
        out["sqlite_1_collector"] = measured_load([c], tokens, seconds, batch, concurrency)
    finally:
        c.stop()

    # scale-out: Kafka log + PostgreSQL dedupe/state, 1 and 2 collector processes
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        tokens = register(Settings(state=StateSettings(backend="postgres", postgres_dsn=dsn)), devices)
        for n in (1, 2):
            env = {**fast, "VENDWATCH_BUS__BACKEND": "kafka", "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": KAFKA,
                   "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": f"vwbench.{uuid.uuid4().hex[:6]}.",
                   "VENDWATCH_STATE__BACKEND": "postgres", "VENDWATCH_STATE__POSTGRES_DSN": dsn}
            cs = [Collector(env, tmp / f"kafka{n}-{i}" / "data", f"kafka-collector-{n}-{i}") for i in range(n)]
            try:
                out[f"kafka_{n}_collector{'s' if n > 1 else ''}"] = measured_load(cs, tokens, seconds, batch, concurrency)
            finally:
                for x in cs:
                    x.stop()
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        shutil.rmtree(tmp, ignore_errors=True)
    base = out["sqlite_1_collector"]["events_per_s"] or 1
    out["kafka_2_vs_sqlite_1"] = round(out["kafka_2_collectors"]["events_per_s"] / base, 2)
    out["kafka_1_vs_sqlite_1"] = round(out["kafka_1_collector"]["events_per_s"] / base, 2)
    return out


# -- part 3b: the detector consuming the log ------------------------------------------
def bench_detector(devices: int, sim_minutes: float, seed: int = 3) -> dict[str, Any]:
    """One detector replica evaluating a simulated fleet's events already in the log."""
    import threading

    import psycopg

    from vendwatch.config import BusSettings
    from vendwatch.detect.role import Detector
    from vendwatch.runtime import Context
    from vendwatch.simulate.faults import FaultPlan
    from vendwatch.simulate.fleet import Fleet

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=sim_minutes + 5)
    fleet = Fleet(seed, devices, start=start, faults=FaultPlan.all(scale=10.0))
    values = [(e.device_id, ev.encode(e)) for e in fleet.stored(fleet.run_for(sim_minutes * 60))]
    out: dict[str, Any] = {"events": len(values), "devices": devices}
    tmp = Path(tempfile.mkdtemp(prefix="vw-bench-det-"))
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    setups = {
        "sqlite": Settings(data_dir=str(tmp / "data")),
        "kafka_postgres": Settings(
            bus=BusSettings(backend="kafka", kafka=KafkaSettings(bootstrap_servers=KAFKA, partitions=8,
                                                                 topic_prefix=f"vwbench.{uuid.uuid4().hex[:6]}.")),
            state=StateSettings(backend="postgres", postgres_dsn=dsn)),
    }
    try:
        for name, settings in setups.items():
            settings = msgspec.structs.replace(settings, detect=msgspec.structs.replace(settings.detect, clock="event"))
            ctx = Context(settings)
            ctx.log.create_topic("events", 8)
            ctx.log.create_topic("signals", 8)
            for i in range(0, len(values), 5000):
                ctx.log.append("events", values[i : i + 5000])
            ends = ctx.log.end_offsets("events")
            det = Detector(ctx)
            stop = threading.Event()
            ctx.state.db.one("SELECT 1")
            cpu0, t0 = time.process_time(), time.perf_counter()
            th = threading.Thread(target=det.run, args=(stop,), daemon=True)
            th.start()
            while time.perf_counter() - t0 < 300 and not all(det.positions.get(p, -1) >= e for p, e in ends.items()):
                time.sleep(0.01)
            dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            stop.set()
            th.join(30)
            signals = sum(ctx.log.end_offsets("signals").values()) - sum(ctx.log.begin_offsets("signals").values())
            out[name] = {"events_per_s": round(len(values) / dt), "seconds": round(dt, 2),
                         "events_per_detector_cpu_s": round(len(values) / max(cpu, 1e-9)), "signals": signals}
            ctx.close()
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        shutil.rmtree(tmp, ignore_errors=True)
    out["kafka_postgres_vs_sqlite"] = round(out["kafka_postgres"]["events_per_s"] / out["sqlite"]["events_per_s"], 2)
    return out


# -- part 4: end to end, event accepted -> incident opened -----------------------------
def bench_e2e(devices: int, sim_minutes: float, seed: int = 5) -> dict[str, Any]:
    """2 collectors, 2 detectors, 1 orchestrator, 1 lake writer on Kafka + PostgreSQL.

    A seeded fleet with faults is replayed in 30-second rounds of event time; for every
    incident opened by an event (not by a timer), latency = the incident's ``opened_at``
    (orchestrator wall clock) - the wall time the collector acknowledged the event that
    fired it (matched through the signal's ``occurred_at``)."""
    import psycopg

    from vendwatch.bus import SIGNALS
    from vendwatch.simulate.faults import FaultPlan
    from vendwatch.simulate.fleet import Fleet, encode_event, layout, profiles_for, showcase_plan
    from vendwatch.simulate.provision import provision_fleet
    from vendwatch.state.postgres import PostgresDatabase

    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    tmp = Path(tempfile.mkdtemp(prefix="vw-bench-e2e-"))
    prefix = f"vwbench.{uuid.uuid4().hex[:6]}."
    env = {"VENDWATCH_BUS__BACKEND": "kafka", "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": KAFKA,
           "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": prefix, "VENDWATCH_BUS__KAFKA__PARTITIONS": "8",
           "VENDWATCH_STATE__BACKEND": "postgres", "VENDWATCH_STATE__POSTGRES_DSN": dsn,
           "VENDWATCH_DETECT__CLOCK": "event", "VENDWATCH_LOG_LEVEL": "warning",
           "VENDWATCH_LAKE__CATALOG__URI": "postgresql+psycopg://" + dsn.split("://", 1)[1],
           "VENDWATCH_LAKE__CATALOG__WAREHOUSE": f"file://{tmp / 'warehouse'}",
           "VENDWATCH_INGEST__RATE_LIMIT_EVENTS_PER_S": "100000", "VENDWATCH_INGEST__RATE_LIMIT_BURST": "100000"}
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    subprocess.run([sys.executable, "-m", "vendwatch", "bus", "init"], env=full, check=True, capture_output=True)
    settings = Settings(state=StateSettings(backend="postgres", postgres_dsn=dsn))
    store = open_state(settings)
    _, tokens, _ = provision_fleet(store, tmp, devices, None, seed)
    store.close()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=sim_minutes + 5)
    lay = layout(devices)
    plan = FaultPlan(rates=FaultPlan.all(scale=40.0).rates,
                     scheduled=showcase_plan(profiles_for(seed, lay), start_offset_s=60, spacing_s=20))
    fleet = Fleet(seed, devices, start=start, faults=plan)
    procs = []
    collectors = [Collector(env, tmp / f"c{i}" / "data", f"collector-{i}") for i in range(2)]
    logs = []
    for role in ("detector", "detector", "orchestrator", "lake-writer"):
        logs.append(tmp / f"{role}-{len(procs)}.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vendwatch", "--log-level", "info", "run", role, "--data-dir", str(tmp / "w")],
            env=full, stdout=logs[-1].open("wb"), stderr=subprocess.STDOUT))
    acked: dict[tuple[str, str], float] = {}  # (device_id, occurred_at iso) -> ack wall time
    order = sorted(tokens)

    async def post(client: httpx.AsyncClient, did: str, evs: list[tuple[str, bytes]]) -> None:
        url = collectors[order.index(did) % 2].url
        body = b'{"events":[' + b",".join(b for _, b in evs) + b"]}"
        while True:
            r = await client.post(url + "/v1/events", content=body,
                                  headers={"Authorization": f"Bearer {tokens[did]}", "Content-Type": "application/json"})
            if r.status_code == 200:
                now = time.time()
                for at, _ in evs:
                    acked.setdefault((did, at), now)
                return
            await asyncio.sleep(0.2)

    async def replay() -> int:
        n = 0
        t = start.timestamp()
        async with httpx.AsyncClient(timeout=60) as client:
            while t < start.timestamp() + sim_minutes * 60:
                t += 30
                per: dict[str, list[tuple[str, bytes]]] = {}
                for e in fleet.advance(t):
                    per.setdefault(e.device_id, []).append((e.occurred_at.isoformat(), encode_event(e)))
                    n += 1
                await asyncio.gather(*(post(client, d, evs) for d, evs in per.items()))
                await asyncio.sleep(0.05)  # pace the rounds like a (fast) live fleet
        return n

    try:
        deadline = time.monotonic() + 60  # measure the steady state: both detectors own partitions
        while time.monotonic() < deadline and not all("assigned events/" in lg.read_text() for lg in logs[:2]):
            time.sleep(0.2)
        t0 = time.perf_counter()
        n_events = asyncio.run(replay())
        send_s = time.perf_counter() - t0
        db = PostgresDatabase(dsn, pool_size=1)
        deadline, last, stable = time.monotonic() + 120, -1, 0.0
        while time.monotonic() < deadline:  # until no new incident for 10 s
            n = int((db.one("SELECT count(*) FROM incidents") or (0,))[0]) if db.one(
                "SELECT to_regclass('incidents')")[0] else 0  # type: ignore[index]
            if n != last:
                last, stable = n, time.monotonic()
            elif time.monotonic() - stable > 10:
                break
            time.sleep(0.5)
        incidents = db.query("SELECT dedupe_key, device_id, opened_at FROM incidents")
        db.close()
        klog = KafkaLog(KafkaSettings(bootstrap_servers=KAFKA, topic_prefix=prefix))
        first_fire: dict[str, str] = {}
        for p in range(klog.partitions(SIGNALS)):
            off = 0
            while True:
                recs = klog.read(SIGNALS, p, off, 5000)
                if not recs:
                    break
                for r in recs:
                    sig = msgspec.json.decode(r.value)
                    if sig.get("status") == "firing":
                        first_fire.setdefault(sig["dedupe_key"], sig["occurred_at"])
                off = recs[-1].offset + 1
        klog.close()
        lat = []
        for key, device, opened_at in incidents:
            at = first_fire.get(key)
            if at is None or device is None:
                continue
            iso = datetime.fromisoformat(at.replace("Z", "+00:00")).isoformat()
            if (device, iso) in acked:  # fired by an event (timers have no matching event)
                lat.append(opened_at - acked[(device, iso)])
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.wait(20)
        for c in collectors:
            c.stop()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        shutil.rmtree(tmp, ignore_errors=True)
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else 0.0

    return {"devices": devices, "events": n_events, "replay_s": round(send_s, 1), "incidents": len(incidents),
            "event_fired_incidents_measured": len(lat), "latency_ms_p50": pct(0.5), "latency_ms_p99": pct(0.99),
            "latency_ms_max": round(lat[-1] * 1000) if lat else 0.0}


def _cpu(r: dict[str, Any]) -> str:
    c = r["cpu_seconds"]
    return (f"{r.get('events_per_collector_cpu_s', 0):,} events per collector CPU-second; CPU s: collectors {c['collectors']},"
            f" kafka {c['kafka']}, postgres {c['postgres']}, load generator {c['load_generator']}")


# -- part 3: a checkpointed stage (device-state) consuming the log --------------------
def bench_stage(n_events: int) -> dict[str, Any]:
    """One device-state replica folding ``n_events`` already in the log into the state store."""
    import threading

    import psycopg

    from vendwatch.config import BusSettings
    from vendwatch.runtime import Context
    from vendwatch.state.projector import DeviceStateProjector

    devices = [f"vm-{i:05d}" for i in range(2000)]
    values = [(devices[i % len(devices)], stored_value(devices[i % len(devices)])) for i in range(n_events)]
    out: dict[str, Any] = {"events": n_events, "devices": len(devices)}
    tmp = Path(tempfile.mkdtemp(prefix="vw-bench-stage-"))
    schema = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    setups = {
        "sqlite": Settings(data_dir=str(tmp / "data")),
        "kafka_postgres": Settings(
            bus=BusSettings(backend="kafka", kafka=KafkaSettings(bootstrap_servers=KAFKA, partitions=8,
                                                                 topic_prefix=f"vwbench.{uuid.uuid4().hex[:6]}.")),
            state=StateSettings(backend="postgres", postgres_dsn=dsn)),
    }
    try:
        for name, settings in setups.items():
            ctx = Context(settings)
            ctx.log.create_topic("events", 8)
            for i in range(0, n_events, 5000):
                ctx.log.append("events", values[i : i + 5000])
            stage = DeviceStateProjector(ctx)
            stop = threading.Event()
            ctx.state.db.one("SELECT 1")  # open the pool first: its server processes are counted
            pids = service_pids()
            before = {k: cpu_seconds(v) for k, v in pids.items()}
            cpu0, t0 = time.process_time(), time.perf_counter()
            th = threading.Thread(target=stage.run, args=(stop,), daemon=True)
            th.start()
            while sum(stage.positions.values()) < n_events and time.perf_counter() - t0 < 300:
                time.sleep(0.01)
            dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            done = sum(stage.positions.values())  # before stopping: a revoke forgets positions
            stop.set()
            th.join(30)
            out[name] = {"events_per_s": round(done / dt), "seconds": round(dt, 2),
                         "events_per_stage_cpu_s": round(done / max(cpu, 1e-9)),
                         "cpu_seconds": {"stage_process": round(cpu, 2),
                                         **{k: round(cpu_seconds(v) - before[k], 2) for k, v in pids.items()}}}
            ctx.close()
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        shutil.rmtree(tmp, ignore_errors=True)
    out["kafka_postgres_vs_sqlite"] = round(out["kafka_postgres"]["events_per_s"] / out["sqlite"]["events_per_s"], 2)
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["| measurement | events/s | ratio to SQLite | notes |", "|---|---:|---:|---|"]
    if "log" in res:
        lg = res["log"]
        lines.append(f"| log append, 1 process, SQLite log ({lg['batch']}-event batches) | {lg['sqlite']['events_per_s']:,} | 1.00 | baseline |")
        lines.append(f"| log append, 1 process, Kafka (acks=all, idempotent) | {lg['kafka']['events_per_s']:,} | {lg['kafka_vs_sqlite']:.2f} | |")
    if "ingest" in res:
        ing = res["ingest"]
        b = ing["sqlite_1_collector"]
        lines.append(f"| HTTP ingest, 1 collector, SQLite log + dedupe | {b['events_per_s']:,} | 1.00 | p50/p99 request {b['request_ms_p50']}/{b['request_ms_p99']} ms; {_cpu(b)} |")
        for key, label in (("kafka_1_collector", "1 collector"), ("kafka_2_collectors", "2 collectors")):
            k = ing[key]
            lines.append(f"| HTTP ingest, {label}, Kafka + PostgreSQL dedupe | {k['events_per_s']:,} | "
                         f"{k['events_per_s'] / max(1, b['events_per_s']):.2f} | p50/p99 request {k['request_ms_p50']}/{k['request_ms_p99']} ms, errors {k['errors']}; {_cpu(k)} |")
    if "stage" in res:
        st = res["stage"]
        for key, label in (("sqlite", "SQLite log + SQLite state"), ("kafka_postgres", "Kafka + PostgreSQL")):
            r = st[key]
            ratio = 1.0 if key == "sqlite" else st["kafka_postgres_vs_sqlite"]
            lines.append(f"| device-state stage, 1 replica, {label} ({st['events']:,} events) | {r['events_per_s']:,} | {ratio:.2f} |"
                         f" {r['events_per_stage_cpu_s']:,} events per stage-process CPU-second; CPU s: {r['cpu_seconds']} |")
    if "detector" in res:
        d = res["detector"]
        for key, label in (("sqlite", "SQLite log + SQLite state"), ("kafka_postgres", "Kafka + PostgreSQL")):
            r = d[key]
            ratio = 1.0 if key == "sqlite" else d["kafka_postgres_vs_sqlite"]
            lines.append(f"| detector, 1 replica, {label} ({d['events']:,} simulated events, {d['devices']} machines) |"
                         f" {r['events_per_s']:,} | {ratio:.2f} | {r['events_per_detector_cpu_s']:,} events per process"
                         f" CPU-second; {r['signals']} signals |")
    if "e2e" in res:
        e = res["e2e"]
        lines.append(f"| end to end: event accepted -> incident opened, 2 collectors + 2 detectors + orchestrator + lake writer,"
                     f" Kafka + PostgreSQL ({e['devices']} machines, {e['events']:,} events, {e['event_fired_incidents_measured']}"
                     f" event-fired incidents) | p50 {e['latency_ms_p50']} ms, p99 {e['latency_ms_p99']} ms | | max {e['latency_ms_max']} ms |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each measurement")
    ap.add_argument("--batch", type=int, default=100, help="events per HTTP request")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent HTTP requests")
    ap.add_argument("--devices", type=int, default=500, help="registered devices the load cycles through")
    ap.add_argument("--parts", default="log,ingest,stage", help="comma-separated: log, ingest, stage, detector, e2e")
    ap.add_argument("--stage-events", type=int, default=100_000, help="events the stage benchmark folds")
    ap.add_argument("--e2e-devices", type=int, default=100, help="fleet size of the end-to-end part")
    ap.add_argument("--e2e-minutes", type=float, default=60.0, help="simulated minutes of the end-to-end part")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "kafka.json"))
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}",
        "load": os.getloadavg()[0],
    }
    if "log" in parts:
        res["log"] = bench_log_append(args.seconds, 1000)
    if "ingest" in parts:
        res["ingest"] = bench_ingest(args.seconds, args.batch, args.concurrency, args.devices)
    if "stage" in parts:
        res["stage"] = bench_stage(args.stage_events)
    if "detector" in parts:
        res["detector"] = bench_detector(args.e2e_devices * 10, args.e2e_minutes)
    if "e2e" in parts:
        res["e2e"] = bench_e2e(args.e2e_devices, args.e2e_minutes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print()
    print(markdown(res))


if __name__ == "__main__":
    main()
