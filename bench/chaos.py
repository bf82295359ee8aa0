"""Kill storm: SIGKILL ``vendwatch serve`` again and again under simulated fleet load,
then check what vendwatch promises.

    PYTHONPATH=src python bench/chaos.py --kills 100 [--devices 200] [--speed 60] [--json out.json]

A simulated fleet (``vendwatch.simulate``, faults included, so the detector fires and
the orchestrator opens incidents) posts batches to the collector like real machines:
every batch is retried with the same event ids until it is answered. Meanwhile
``vendwatch serve`` (all roles, one process, embedded SQLite log and state, local
Iceberg lake) is killed with SIGKILL every ``--min-gap``..``--max-gap`` seconds and
started again on the same data directory. After the last kill the load stops, the
pipeline drains, and the harness checks:

* acked = log: every event the collector acknowledged is in the log, exactly once;
* log = lake: the raw zone holds every logged event exactly once;
* no signal id twice on the ``signals`` topic;
* at most one open (or acknowledged) incident per dedupe key;
* device state: each machine's event count equals its events in the log;
* no stage dead letters (the simulated fleet sends nothing hostile).

With ``--kafka BOOTSTRAP --postgres DSN`` the same storm runs on the scale-out
backends: one process per role (``vendwatch run ROLE``: two collectors, two
device-state, two detector replicas, router, orchestrator, lake writer) on Kafka and
PostgreSQL, and each kill SIGKILLs one of them at random and starts it again; the fleet
fails over between the two collectors. The checks are the same.

    PYTHONPATH=src python bench/chaos.py --kills 50 --kafka 127.0.0.1:9092 \
        --postgres postgresql://vendwatch:vendwatch@127.0.0.1:5432/vendwatch

Exit status 0 when every check holds, 1 otherwise; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import msgspec

from vendwatch.bus.base import EVENTS, SIGNALS
from vendwatch.config import Settings, load_settings
from vendwatch.demo import stage_lag
from vendwatch.runtime import Context
from vendwatch.simulate.clock import SimClock
from vendwatch.simulate.faults import FaultPlan
from vendwatch.simulate.fleet import Fleet, encode_event
from vendwatch.simulate.provision import provision_fleet

SIGNAL_STAGES = ("router", "orchestrator")  # checkpointed stages reading the signals topic


@dataclass
class Options:
    kills: int = 10
    devices: int = 100
    speed: float = 60.0
    backlog_s: float = 86_400.0  # the fleet starts this far in the past, so --speed can run ahead
    min_gap_s: float = 2.0
    max_gap_s: float = 6.0
    seed: int = 7
    concurrency: int = 8
    batch_max: int = 100
    drain_timeout_s: float = 300.0
    data_dir: Path | None = None
    kafka: str | None = None  # with postgres: the scale-out backends, one process per role
    postgres: str | None = None


@dataclass
class Report:
    kills: int = 0
    kills_by_role: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    events_acked: int = 0
    events_rejected: int = 0
    requests: int = 0
    retries: int = 0
    http_statuses: dict[str, int] = field(default_factory=dict)
    events_in_log: int = 0
    duplicate_events_in_log: int = 0
    acked_missing_from_log: int = 0
    logged_not_acked: int = 0  # stored, answer lost and the retry not answered before the end
    lake_rows: int = 0
    duplicate_events_in_lake: int = 0
    log_events_missing_from_lake: int = 0
    signals: int = 0
    duplicate_signal_ids: int = 0
    duplicate_signals_by_rule: dict[str, int] = field(default_factory=dict)
    incidents: int = 0
    keys_with_several_open_incidents: int = 0
    device_state_mismatches: int = 0
    stage_dead_letters: int = 0
    # scale-out: dedupe claims an attempt left unconfirmed (its collector died, or its
    # append failed and released them), for the retry to take over (each event must
    # still be in the log once)
    claims_taken_over: int = 0
    drained: bool = False
    failures: list[str] = field(default_factory=list)

    def check(self) -> list[str]:
        f = []
        if self.acked_missing_from_log:
            f.append(f"{self.acked_missing_from_log} acked events missing from the log")
        if self.duplicate_events_in_log:
            f.append(f"{self.duplicate_events_in_log} events twice in the log")
        if self.log_events_missing_from_lake or self.duplicate_events_in_lake:
            f.append(f"lake: {self.log_events_missing_from_lake} missing, {self.duplicate_events_in_lake} doubled")
        if self.duplicate_signal_ids:
            f.append(f"{self.duplicate_signal_ids} signal ids twice on the signals topic")
        if self.keys_with_several_open_incidents:
            f.append(f"{self.keys_with_several_open_incidents} dedupe keys with several open incidents")
        if self.device_state_mismatches:
            f.append(f"{self.device_state_mismatches} devices whose state count differs from the log")
        if self.stage_dead_letters:
            f.append(f"{self.stage_dead_letters} stage dead letters")
        if not self.drained:
            f.append("the pipeline did not drain")
        self.failures = f
        return f


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SCALEOUT: dict[str, str] = {}  # environment selecting Kafka + PostgreSQL (scale-out runs)


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "VENDWATCH_DATA_DIR": str(data_dir), "VENDWATCH_LAKE__BATCH_MAX_WAIT_S": "2",
            "VENDWATCH_LOG_LEVEL": "warning", **_SCALEOUT}


def _settings(data_dir: Path) -> Settings:
    return load_settings(overrides={"data_dir": str(data_dir), "lake.batch_max_wait_s": 2.0}, environ=_SCALEOUT)


def _scaleout_env(opts: Options, data_dir: Path) -> dict[str, str]:
    """Kafka topics and a PostgreSQL schema of this run's own, an Iceberg catalog on PostgreSQL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when loaded by path
    from scaleout import run_schema

    assert opts.postgres is not None and opts.kafka is not None
    run, dsn = run_schema(opts.postgres, "chaos", opts.kafka)
    return {
        "VENDWATCH_BUS__BACKEND": "kafka",
        "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": opts.kafka,
        "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": f"{run}.",
        "VENDWATCH_BUS__KAFKA__PARTITIONS": "4",
        "VENDWATCH_BUS__KAFKA__SESSION_TIMEOUT_MS": "6000",
        "VENDWATCH_STATE__BACKEND": "postgres",
        "VENDWATCH_STATE__POSTGRES_DSN": dsn,
        "VENDWATCH_LAKE__CATALOG__URI": "postgresql+psycopg://" + dsn.split("://", 1)[1],
        "VENDWATCH_LAKE__CATALOG__NAME": run,
        "VENDWATCH_LAKE__CATALOG__WAREHOUSE": f"file://{data_dir / 'warehouse'}",
        "VENDWATCH_LAKE__BATCH_MAX_WAIT_S": "2",
    }


class Server:
    """A ``vendwatch serve`` (or ``vendwatch run ROLE``) child process that can be killed and
    started again."""

    def __init__(self, data_dir: Path, port: int | None, log_path: Path, role: str = "serve") -> None:
        self.data_dir, self.port, self.log_path, self.role = data_dir, port, log_path, role
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["serve"] if self.role == "serve" else ["run", self.role]
        args += ["--data-dir", str(self.data_dir)] + (["--port", str(self.port)] if self.port else [])
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vendwatch", *args], env=_env(self.data_dir),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.port is None:
            return  # a stage process: nothing to wait for, it joins its consumer group
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vendwatch {self.role} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2)  # any answer: it is up
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"vendwatch {self.role} did not start within 60 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# the scale-out run: one process per role, stages with two replicas where they scale out
SCALEOUT_ROLES = ("collector", "collector", "device-state", "device-state", "detector", "detector", "router",
                  "orchestrator", "lake-writer")


class Load:
    """The fleet, posting in simulated time; records which event ids were acknowledged."""

    def __init__(self, urls: list[str], tokens: dict[str, str], fleet: Fleet, clock: SimClock, opts: Options) -> None:
        self.urls, self.tokens, self.fleet, self.clock, self.opts = urls, tokens, fleet, clock, opts
        self.acked: set[str] = set()
        self.rejected: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.requests = self.retries = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(opts.concurrency)
        self._futures: list[Future[None]] = []
        self._client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=opts.concurrency * 2))
        self._thread = threading.Thread(target=self._generate, name="chaos-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _generate(self) -> None:
        while not self._stop.is_set():
            by_device: dict[str, list[bytes]] = {}
            ids: dict[str, list[str]] = {}
            for e in self.fleet.advance(self.clock.now()):
                by_device.setdefault(e.device_id, []).append(encode_event(e))
                ids.setdefault(e.device_id, []).append(e.event_id)
            for dev, bodies in by_device.items():
                for i in range(0, len(bodies), self.opts.batch_max):
                    self._futures.append(self._pool.submit(self._post, dev, bodies[i : i + self.opts.batch_max],
                                                           ids[dev][i : i + self.opts.batch_max]))
            self._stop.wait(0.5)

    def _post(self, device: str, bodies: list[bytes], ids: list[str]) -> None:
        body = b'{"events":[' + b",".join(bodies) + b"]}"
        headers = {"authorization": f"Bearer {self.tokens[device]}", "content-type": "application/json"}
        attempt = 0
        while True:
            url = self.urls[(hash(device) + attempt) % len(self.urls)]  # a retry may go to another collector
            try:
                r = self._client.post(f"{url}/v1/events", content=body, headers=headers)
                status = r.status_code
            except httpx.HTTPError:
                status = 0  # connection refused or reset: the server is being killed
            with self._lock:
                self.requests += 1
                self.statuses[status] += 1
                self.retries += attempt > 0
            if status == 200:
                refused = {x["index"] for x in r.json().get("rejected", [])}
                with self._lock:
                    self.acked.update(i for k, i in enumerate(ids) if k not in refused)
                    self.rejected.update(i for k, i in enumerate(ids) if k in refused)
                return
            if status and status not in (429, 500, 502, 503, 504):
                with self._lock:
                    self.rejected.update(ids)
                return
            attempt += 1
            time.sleep(random.uniform(0, min(2.0, 0.1 * 2**attempt)))  # full jitter, like a device

    def stop(self) -> None:
        """Stop generating; batches already being sent are answered, queued ones are dropped.

        Dropped batches were never sent, so never acknowledged: the checks stay exact. A
        fleet generating faster than a restarting server takes events would otherwise keep
        the harness sending its backlog for a long time after the last kill."""
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def _drained(ctx: Context) -> bool:
    if any(stage_lag(ctx, ["device-state", "detector", "lake-writer"]).values()):
        return False
    ends = ctx.log.end_offsets(SIGNALS)
    for stage in SIGNAL_STAGES:
        for p, end in ends.items():
            raw = ctx.state.load_checkpoint(f"offsets:vendwatch-{stage}:{SIGNALS}/{p}")
            if end and (raw is None or int(raw) < end):
                return False
    return True


class _Ids(msgspec.Struct):
    event_id: str = ""
    device_id: str = ""
    signal_id: str = ""
    rule_id: str = ""


def _read_topic(ctx: Context, topic: str) -> list[_Ids]:
    dec = msgspec.json.Decoder(_Ids)
    out: list[_Ids] = []
    begins = ctx.log.begin_offsets(topic)
    for p, end in ctx.log.end_offsets(topic).items():
        off = begins.get(p, 0)
        while off < end:
            recs = ctx.log.read(topic, p, off, 5000)
            if not recs:
                break
            out.extend(dec.decode(r.value) for r in recs)
            off = recs[-1].offset + 1
    return out


def _lake_ids(settings: Settings) -> list[str]:
    from vendwatch.lake.query import LakeSQL

    sql = LakeSQL(settings)
    return [r["event_id"] for r in sql.run("SELECT event_id FROM raw.events", limit=10_000_000).rows()]


def verify(data_dir: Path, load: Load, report: Report, drain_timeout_s: float) -> None:
    ctx = Context(_settings(data_dir))
    try:
        deadline = time.monotonic() + drain_timeout_s
        while not _drained(ctx) and time.monotonic() < deadline:
            time.sleep(1)
        report.drained = _drained(ctx)
        events = _read_topic(ctx, EVENTS)
        logged = Counter(e.event_id for e in events)
        report.events_in_log = len(events)
        report.duplicate_events_in_log = sum(n - 1 for n in logged.values() if n > 1)
        report.acked_missing_from_log = len(load.acked - logged.keys())
        report.logged_not_acked = len(logged.keys() - load.acked)

        # the lake writer commits every couple of seconds: wait for the last commit
        lake: Counter[str] = Counter()
        while time.monotonic() < deadline + 60:
            lake = Counter(_lake_ids(ctx.settings))
            if lake.keys() >= logged.keys():
                break
            time.sleep(2)
        report.lake_rows = sum(lake.values())
        report.duplicate_events_in_lake = sum(n - 1 for n in lake.values() if n > 1)
        report.log_events_missing_from_lake = len(logged.keys() - lake.keys())

        sigs = _read_topic(ctx, SIGNALS)
        by_id = Counter(s.signal_id for s in sigs)
        report.signals = len(sigs)
        report.duplicate_signal_ids = sum(n - 1 for n in by_id.values() if n > 1)
        dup_rules: Counter[str] = Counter()
        seen: set[str] = set()
        for s in sigs:
            if s.signal_id in seen:
                dup_rules[s.rule_id] += 1
            seen.add(s.signal_id)
        report.duplicate_signals_by_rule = dict(dup_rules.most_common())

        db = ctx.state.db
        report.incidents = int((db.one("SELECT count(*) FROM incidents") or (0,))[0])
        report.keys_with_several_open_incidents = len(db.query(
            "SELECT dedupe_key FROM incidents WHERE status IN ('open','acknowledged')"
            " GROUP BY dedupe_key HAVING count(*) > 1"))
        per_device = Counter(e.device_id for e in events)
        state = dict(db.query("SELECT device_id, events FROM device_state"))
        report.device_state_mismatches = sum(1 for d in per_device.keys() | state.keys()
                                             if per_device.get(d, 0) != state.get(d, 0))
        report.stage_dead_letters = int((db.one("SELECT count(*) FROM stage_dead_letters") or (0,))[0])
        if ctx.settings.bus.backend == "kafka":
            for (table,) in db.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                                     " AND tablename LIKE 'ingest\\_seen\\_%'"):
                report.claims_taken_over += int(
                    (db.one(f"SELECT count(*) FROM {table} WHERE first_at IS NOT NULL") or (0,))[0])
    finally:
        ctx.close()


def run(opts: Options) -> Report:
    data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="vendwatch-chaos-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if opts.kafka:
        _SCALEOUT.update(_scaleout_env(opts, data_dir))
        init = subprocess.run([sys.executable, "-m", "vendwatch", "bus", "init"], env=_env(data_dir),
                              capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise RuntimeError(f"vendwatch bus init failed: {init.stderr[-2000:]}")
    ctx = Context(_settings(data_dir))
    devices, tokens, _ = provision_fleet(ctx.state, data_dir, opts.devices, None, opts.seed)
    ctx.close()
    if opts.kafka:
        procs = [Server(data_dir, _free_port() if role == "collector" else None, data_dir / f"{role}-{i}.log", role)
                 for i, role in enumerate(SCALEOUT_ROLES)]
    else:
        procs = [Server(data_dir, _free_port(), data_dir / "serve.log")]
    report = Report()
    started = time.monotonic()
    for p in procs:
        p.start()
    # the simulated clock never passes the wall clock (the collector refuses future events):
    # starting in the past is what lets the fleet send faster than real time
    clock = SimClock(opts.speed, opts.kills * (opts.max_gap_s + 5), max_backlog_s=opts.backlog_s)
    fleet = Fleet(opts.seed, devices=devices, start=clock.sim_start, faults=FaultPlan.all(scale=20.0),
                  run_id=str(int(clock.sim_start)))
    load = Load([f"http://127.0.0.1:{p.port}" for p in procs if p.port], tokens, fleet, clock, opts)
    load.start()
    rnd = random.Random(opts.seed)
    killed: Counter[str] = Counter()
    try:
        for k in range(opts.kills):
            time.sleep(rnd.uniform(opts.min_gap_s, opts.max_gap_s))
            victim = rnd.choice(procs)
            victim.kill()
            report.kills += 1
            killed[victim.role] += 1
            print(f"kill {k + 1}/{opts.kills} ({victim.role}): {len(load.acked):,} events acked", file=sys.stderr,
                  flush=True)
            victim.start()
        time.sleep(opts.min_gap_s)
        load.stop()
        verify(data_dir, load, report, opts.drain_timeout_s)
    finally:
        for p in procs:
            p.stop()
    report.kills_by_role = dict(killed.most_common())
    report.wall_s = round(time.monotonic() - started, 1)
    report.events_acked = len(load.acked)
    report.events_rejected = len(load.rejected)
    report.requests, report.retries = load.requests, load.retries
    report.http_statuses = {str(k): v for k, v in sorted(load.statuses.items())}
    report.check()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=Options.kills)
    ap.add_argument("--devices", type=int, default=Options.devices)
    ap.add_argument("--speed", type=float, default=Options.speed, help="simulated seconds per wall second")
    ap.add_argument("--backlog", type=float, default=Options.backlog_s,
                    help="seconds of simulated history before now the fleet starts at (older events are late)")
    ap.add_argument("--min-gap", type=float, default=Options.min_gap_s, help="least seconds between kills")
    ap.add_argument("--max-gap", type=float, default=Options.max_gap_s, help="most seconds between kills")
    ap.add_argument("--seed", type=int, default=Options.seed)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--json", type=Path, default=None, help="write the report here")
    ap.add_argument("--kafka", default=None, help="Kafka bootstrap servers: run the scale-out backends (with --postgres)")
    ap.add_argument("--postgres", default=None, help="PostgreSQL DSN for the state store and the Iceberg catalog")
    a = ap.parse_args(argv)
    if bool(a.kafka) != bool(a.postgres):
        ap.error("--kafka and --postgres go together")
    opts = Options(kills=a.kills, devices=a.devices, speed=a.speed, backlog_s=a.backlog, min_gap_s=a.min_gap,
                   max_gap_s=a.max_gap, seed=a.seed, data_dir=a.data_dir, kafka=a.kafka, postgres=a.postgres)
    report = run(opts)
    doc = {"machine": f"{platform.machine()}, {os.cpu_count()} cpu, {platform.system()} {platform.release()}",
           "load_avg": os.getloadavg(), "options": {k: str(v) for k, v in asdict(opts).items()}, **asdict(report)}
    text = json.dumps(doc, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
