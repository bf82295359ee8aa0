"""Whole-platform benchmark: does `vendwatch serve` keep up with its own collector?

    python bench/pipeline.py                         # 30 s of load, then catch-up, both runs
    python bench/pipeline.py --duration 20 --mode embedded,threads
    python bench/pipeline.py --duration 20 --collector-only   # the collector alone on the mixed load

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). Two runs on loopback, same load:

1. *collector only*: ``vendwatch serve --roles collector`` (the ceiling: what is accepted);
2. *whole platform*, one run per ``--mode`` (comma-separated, run one after the other):
   ``embedded`` (the default) is ``vendwatch serve`` as users run it, the collector and
   console in the server process and each stage in a child process of its own
   (``server.role_processes``); ``threads`` is ``serve`` with every role in its one
   process (``server.role_processes=false``); ``processes`` is the collector plus one
   ``vendwatch run ROLE`` process per stage over the same data directory.

wrk (one thread, ``--connections`` 16) posts batches of ``--batch`` 100 events from
``--devices`` 1,000 registered devices: a fixed-seed mix of telemetry, heartbeats, sales,
inventory, connectivity and faults (bench/pipeline.lua). After ``--duration`` seconds the
load stops and the benchmark waits until every stage has caught up (``--catchup-timeout``).

Printed: events accepted per second during load (counted in the log), catch-up time,
sustained end-to-end rate (events / (load + catch-up)), each stage's lag in records over
time (from the positions stages commit: checkpoints in the state store, the offsets in
the lake's newest snapshot), CPU seconds per process (``serve:ROLE`` for a role process of ``serve``) and per event, and the machine's
load average (the benchmark shares its cores with whatever else runs). ``--json FILE``
keeps every sample. ``--profile DIR`` samples every measured process with py-spy during
load and catch-up (one profile per process, a role process of ``serve`` included) and prints where
the time goes: the functions with the most samples, on CPU (self) and inclusive.

``--kafka HOST:PORT --postgres DSN`` runs the same on the scale-out backends: the log on
Kafka (topics of the run's own), state, dedupe index and Iceberg catalog in a PostgreSQL
schema of the run's own; the broker's and PostgreSQL's CPU are reported beside the
roles' (every process of the PostgreSQL server and of the Kafka broker on this machine).

    python bench/pipeline.py --duration 20 --mode processes --kafka 127.0.0.1:9092 \
        --postgres postgresql://vendwatch:vendwatch@127.0.0.1:5432/vendwatch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import cpu_seconds, env, free_port, parse_wrk, register  # noqa: E402

from vendwatch.config import load_settings  # noqa: E402

# stage -> (topics it reads, where its position is stored)
STAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "device-state": (("events",), "checkpoint"),
    "detector": (("events",), "detector"),
    "router": (("signals", "business"), "checkpoint"),
    "orchestrator": (("signals",), "checkpoint"),
    "lake-writer": (("events", "rejected"), "lake"),
}


class _DetectorCheckpoint(msgspec.Struct):
    offset: int


class Positions:
    """Reads log ends and every stage's committed position from the data directory, read-only."""

    def __init__(self, data_dir: Path, stages: list[str]) -> None:
        self.data_dir = data_dir
        self.stages = stages
        self._lake: dict[str, Any] = {}
        self._lake_at = 0.0
        self._lake_cache: dict[tuple[str, int], int] = {}

    def _db(self, name: str) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data_dir / name}?mode=ro", uri=True, timeout=5)

    def close(self) -> None:
        """Nothing held between samples (each one opens the files read-only)."""

    def ends(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        db = self._db("bus.db")
        try:
            for name, n in db.execute("SELECT name, partitions FROM topics"):
                for p in range(n):
                    (last,) = db.execute(f"SELECT coalesce(max(offset), 0) FROM log_{name}_p{p}").fetchone()
                    out[(name, p)] = last + 1
        finally:
            db.close()
        return out

    def _catalog(self) -> Any:
        from vendwatch.lake.catalog import open_catalog

        return open_catalog(load_settings(overrides={"data_dir": str(self.data_dir)}, environ={}))

    def _checkpoints(self) -> list[tuple[str, bytes]]:
        """(name, data) of the stages' position checkpoints."""
        db = self._db("state.db")
        try:
            return db.execute("SELECT name, data FROM checkpoints WHERE name LIKE 'offsets:%' OR name LIKE 'detect:%'"
                              ).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            db.close()

    def _lake_offsets(self) -> dict[tuple[str, int], int]:
        # a catalog load per sample is not free: at most every 2 s
        if time.monotonic() - self._lake_at < 2:
            return self._lake_cache
        from vendwatch.lake.writer import committed_offsets

        self._lake_at = time.monotonic()
        try:
            if "cat" not in self._lake:
                self._lake["cat"] = self._catalog()
            out: dict[tuple[str, int], int] = {}
            for t in ("raw.events", "raw.rejected"):
                out.update(committed_offsets(self._lake["cat"].load_table(t)))
            self._lake_cache = out
        except Exception:  # the writer has not created its tables yet
            self._lake_cache = {}
        return self._lake_cache

    def positions(self) -> dict[str, dict[tuple[str, int], int]]:
        out: dict[str, dict[tuple[str, int], int]] = {s: {} for s in self.stages}
        for name, data in self._checkpoints():
            if name.startswith("offsets:vendwatch-"):
                stage, _, tp = name[len("offsets:vendwatch-"):].partition(":")
                if stage in out:
                    t, _, p = tp.rpartition("/")
                    out[stage][(t, int(p))] = int(bytes(data))
            elif name.startswith("detect:vendwatch-detector:") and not name.endswith(":sites"):
                t, _, p = name.rsplit(":", 1)[1].rpartition("/")
                out["detector"][(t, int(p))] = msgspec.msgpack.decode(bytes(data), type=_DetectorCheckpoint).offset
        if "lake-writer" in out:
            out["lake-writer"] = self._lake_offsets()
        return out

    def lags(self) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
        ends = self.ends()
        pos = self.positions()
        lag = {}
        for s in self.stages:
            topics, _ = STAGES[s]
            lag[s] = sum(max(0, e - pos[s].get(tp, 1)) for tp, e in ends.items() if tp[0] in topics)
        return ends, lag


class ScaleoutPositions(Positions):
    """``Positions`` of a run on Kafka + PostgreSQL, read through the platform's own ports."""

    def __init__(self, settings: Any, stages: list[str]) -> None:
        super().__init__(Path(settings.data_dir), stages)
        from vendwatch.runtime import Context

        self.settings = settings
        self.ctx = Context(settings)

    def ends(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for topic in ("events", "rejected", "signals", "business"):
            try:
                out.update({(topic, p): e for p, e in self.ctx.log.end_offsets(topic).items()})
            except Exception:  # noqa: BLE001 - not created yet
                continue
        return out

    def close(self) -> None:
        self.ctx.close()  # its Kafka clients and PostgreSQL pool

    def _catalog(self) -> Any:
        from vendwatch.lake.catalog import open_catalog

        return open_catalog(self.settings)

    def _checkpoints(self) -> list[tuple[str, bytes]]:
        try:
            return self.ctx.state.db.query(
                "SELECT name, data FROM checkpoints WHERE name LIKE 'offsets:%' OR name LIKE 'detect:%'")
        except Exception:  # noqa: BLE001 - tables not created yet
            return []


def service_pids() -> dict[str, list[int]]:
    """This machine's PostgreSQL server processes and Kafka broker (their CPU is part of a
    scale-out run's cost)."""
    out: dict[str, list[int]] = {"postgresql": [], "kafka-broker": []}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("postgres", "postmaster"):
            out["postgresql"].append(int(d.name))
        elif cmd and cmd[0].endswith(b"java") and any(b"kafka.Kafka" in c for c in cmd):
            out["kafka-broker"].append(int(d.name))
    return out


def service_cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each service, summed over its processes alive now (a backend that
    exited in between is not counted: the roles keep pooled connections, so few do)."""
    out = {}
    for name, ps in pids.items():
        total = 0.0
        for pid in ps:
            try:
                total += cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        out[name] = total
    return out


def scaleout_env(args: argparse.Namespace, label: str, data_dir: Path, tokens: Path) -> dict[str, str]:
    """Settings of a run on Kafka + PostgreSQL (its own topics and schema), its devices registered there."""
    from scaleout import run_schema

    run, dsn = run_schema(args.postgres, f"pipeline_{label}", args.kafka)
    e = {
        "VENDWATCH_BUS__BACKEND": "kafka",
        "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": args.kafka,
        "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": f"{run}.",
        "VENDWATCH_BUS__KAFKA__PARTITIONS": "4",
        "VENDWATCH_STATE__BACKEND": "postgres",
        "VENDWATCH_STATE__POSTGRES_DSN": dsn,
        "VENDWATCH_LAKE__CATALOG__URI": "postgresql+psycopg://" + dsn.split("://", 1)[1],
        "VENDWATCH_LAKE__CATALOG__NAME": run,
        "VENDWATCH_LAKE__CATALOG__WAREHOUSE": f"file://{data_dir / 'warehouse'}",
    }
    init = subprocess.run([sys.executable, "-m", "vendwatch", "bus", "init", "--data-dir", str(data_dir)],
                          cwd=ROOT, env={**env(), **e}, capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        raise SystemExit(f"vendwatch bus init failed: {init.stderr[-2000:]}")
    register(data_dir, args.devices, tokens, environ=e)
    return e


@dataclass
class Run:
    label: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    """Wait for /healthz (a busy shared machine can take minutes to start Python processes)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            httpx.get(url + "/healthz", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"server did not answer /healthz within {timeout_s:.0f} s")


def start(cmd: list[str], data_dir: Path, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = [sys.executable, "-m", "vendwatch", *cmd, "--data-dir", str(data_dir)]
    return subprocess.Popen(full, cwd=ROOT, env={**env(), **extra_env}, stdout=subprocess.DEVNULL,
                            stderr=log_path.open("wb"))


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def role_processes(pid: int) -> dict[str, int]:
    """The role processes ``serve`` started (``python -m vendwatch.procs ROLE ...``), by role."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"vendwatch.procs" in argv:
            out[argv[argv.index(b"vendwatch.procs") + 1].decode()] = int(entry.name)
    return out


def _tree(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int]:
    out = {}
    for name, p in procs.items():
        out[name] = p.pid
        for role, pid in role_processes(p.pid).items():
            out[f"{name}:{role}"] = pid
    return out


def cpu_all(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    out = {}
    for name, pid in _tree(procs).items():
        try:
            out[name] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            out[name] = float("nan")
    return out


def rss_mb(procs: dict[str, subprocess.Popen[bytes]], field: str = "VmRSS") -> dict[str, float]:
    """Resident memory of each process (``VmHWM``: its peak so far)."""
    out = {}
    for name, pid in _tree(procs).items():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    out[name] = int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            out[name] = float("nan")
    return out


def events_in_log(ends: dict[tuple[str, int], int]) -> int:
    return sum(e - 1 for (t, _), e in ends.items() if t == "events")


def wrk(url: str, args: argparse.Namespace, tokens: Path, tag: str, duration: float) -> subprocess.Popen[str]:
    e = {**os.environ, "VW_TOKENS": str(tokens), "VW_BATCH": str(args.batch), "VW_RUN": tag,
         "VW_SEED": str(args.seed)}
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{int(duration)}s", "--latency", "--timeout", "10s",
           "-s", str(ROOT / "bench" / "pipeline.lua"), url + "/v1/events"]
    return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_profiles(procs: dict[str, subprocess.Popen[bytes]], out: Path, label: str) -> list[subprocess.Popen[bytes]]:
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
                              "--output", str(out / f"{label}-{name.replace(':', '-')}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in _tree(procs).items()]


def summarize_profile(path: Path, top: int = 14) -> str:
    """Top functions of a py-spy raw (collapsed) profile: self samples and inclusive samples."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += k
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    if not total:
        return f"{path.name}: no samples\n"

    def short(f: str) -> str:
        return f.replace(str(ROOT / "src") + "/", "").replace(str(ROOT) + "/", "")

    lines = [f"{path.name}: {total} samples (on CPU and waiting)", "  self:"]
    lines += [f"    {n / total:6.1%}  {short(f)}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines.append("  inclusive (vendwatch code):")
    mine = [(f, n) for f, n in incl.items() if "vendwatch/" in f]
    lines += [f"    {n / total:6.1%}  {short(f)}" for f, n in sorted(mine, key=lambda x: -x[1])[:top]]
    return "\n".join(lines) + "\n"


def one_run(label: str, roles: list[str], args: argparse.Namespace, work: Path, mode: str = "embedded") -> Run:
    run = Run(label)
    data_dir = work / label
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {f"VENDWATCH_{k.upper().replace('.', '__')}": v for k, v in (s.split("=", 1) for s in args.set)}
    tokens = work / "tokens.txt"
    if args.kafka:
        data_dir.mkdir()
        tokens = work / f"tokens-{label}.txt"
        extra = {**scaleout_env(args, label, data_dir, tokens), **extra}
    else:
        shutil.copytree(work / "registry", data_dir)
    if mode == "threads":
        extra["VENDWATCH_SERVER__ROLE_PROCESSES"] = "false"
    stages = [r for r in roles if r in STAGES]
    if mode == "processes" and stages:
        run.procs["collector"] = start(["serve", "--port", str(port), "--roles", "collector"], data_dir,
                                       work / f"{label}-collector.log", extra)
        for r in stages:
            run.procs[r] = start(["run", r], data_dir, work / f"{label}-{r}.log", extra)
    else:
        run.procs["serve"] = start(["serve", "--port", str(port), "--roles", ",".join(roles)], data_dir,
                                   work / f"{label}-serve.log", extra)
    pos: Positions | None = None
    try:
        wait_healthy(url, run.procs.get("serve") or run.procs["collector"])
        time.sleep(args.settle)  # roles open their consumers and tables before the load starts
        if args.kafka:
            pos = ScaleoutPositions(load_settings(overrides={"data_dir": str(data_dir)},
                                                             environ=extra), stages)
        else:
            pos = Positions(data_dir, stages)
        services = service_pids() if args.kafka else {}
        pos.lags()  # warm up (imports, catalog) outside the measured window
        ends0 = pos.ends()
        base_events = events_in_log(ends0)
        cpu_idle0, idle_t0 = cpu_all(run.procs), time.monotonic()
        time.sleep(2)  # CPU the roles use while idle (polling), to tell it apart from work
        cpu0 = cpu_all(run.procs)
        idle = {k: (cpu0[k] - cpu_idle0.get(k, 0.0)) / (time.monotonic() - idle_t0) for k in cpu0}
        svc0 = service_cpu(services)
        load0 = os.getloadavg()
        spies = start_profiles(run.procs, Path(args.profile), label) if args.profile else []
        t0 = time.monotonic()
        w = wrk(url, args, tokens, label, args.duration)
        load_end = None
        caught_up = None
        prev_events, prev_t = base_events, t0
        while True:
            time.sleep(args.sample_s)
            now = time.monotonic()
            ends, lag = pos.lags()
            n = events_in_log(ends) - base_events
            sample = {"t": round(now - t0, 2), "events": n, "ingest_per_s": round((n + base_events - prev_events)
                                                                                   / (now - prev_t)),
                      "lag": lag, "cpu": cpu_all(run.procs), "rss_mb": rss_mb(run.procs),
                      "loadavg": os.getloadavg()[0]}
            prev_events, prev_t = n + base_events, now
            run.samples.append(sample)
            if not args.quiet:
                lags = " ".join(f"{s}={v}" for s, v in lag.items())
                print(f"  [{label}] t={sample['t']:6.1f}s events={n:>9,} rate={sample['ingest_per_s']:>7,}/s {lags}",
                      file=sys.stderr, flush=True)
            if load_end is None and w.poll() is not None:
                load_end = now
                events_loaded = n
                cpu_load = cpu_all(run.procs)
            if load_end is not None:
                if all(v <= 0 for v in lag.values()):
                    caught_up = now
                    break
                if now - load_end > args.catchup_timeout:
                    break
        for spy in spies:
            spy.send_signal(2)  # py-spy writes its profile on SIGINT
        for spy in spies:
            spy.wait(60)
        out, err = w.communicate()
        stats = parse_wrk(out)
        cpu1 = cpu_all(run.procs)
        svc1 = service_cpu(services)
        peak_rss = rss_mb(run.procs, "VmHWM")
        catchup = (caught_up - load_end) if caught_up is not None else float("nan")
        total_cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
        run.result = {
            "label": label, "mode": mode if stages else "collector", "roles": roles,
            "load_s": load_end - t0, "events": events_loaded, "events_total": n,
            "ingest_per_s": events_loaded / (load_end - t0),
            "catchup_s": catchup,
            "sustained_per_s": n / (caught_up - t0) if caught_up else float("nan"),
            "cpu_s_during_load": {k: cpu_load[k] - cpu0.get(k, 0.0) for k in cpu_load},
            "cpu_s_total": total_cpu,
            "cpu_us_per_event": sum(total_cpu.values()) / n * 1e6 if n else float("nan"),
            "service_cpu_s": {k: svc1[k] - svc0[k] for k in svc1},
            "idle_cpu_s_per_s": idle, "peak_rss_mb": peak_rss, "signals": sum(e - 1 for (t, _), e in ends.items() if t == "signals"),
            "wrk": stats, "loadavg_before": load0[0], "loadavg_after": os.getloadavg()[0],
            "stream_catchup_s": max((v for s, v in _stage_catchup(run.samples, load_end - t0, stages).items()
                                     if s != "lake-writer"), default=0.0),
            "stage_catchup_s": _stage_catchup(run.samples, load_end - t0, stages),
        }
        run.result["sustained_stream_per_s"] = n / (load_end - t0 + run.result["stream_catchup_s"])
        if stats["non_2xx"]:
            run.result["non_2xx"] = stats["non_2xx"]
        return run
    finally:
        if pos is not None:
            pos.close()
        stop_all(run.procs)


def _stage_catchup(samples: list[dict[str, Any]], load_s: float, stages: list[str]) -> dict[str, float]:
    """Seconds after the load ended until each stage's lag first read 0 (and stayed there)."""
    out = {}
    for s in stages:
        t: float | None = None
        for x in samples:
            if x["t"] >= load_s:
                t = (t if t is not None else x["t"] - load_s) if x["lag"][s] <= 0 else None
        out[s] = float("nan") if t is None else t
    return out


def report(runs: list[Run], args: argparse.Namespace) -> None:
    base = None if args.skip_baseline else runs[0].result
    print(f"\n# {platform.node()} python {platform.python_version()} {os.cpu_count()} cpus"
          f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; batch {args.batch}, {args.devices} devices,"
          f" {args.connections} connections, {args.duration} s load, seed {args.seed}\n")
    print("| run | ingest during load (events/s) | catch-up: stream stages / all incl. lake (s) |"
          " sustained end to end, stream stages / all (events/s) | CPU µs/event (all processes) |"
          " load avg before / after |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in runs:
        x = r.result
        print(f"| {x['label']} ({x['mode']}) | {x['ingest_per_s']:,.0f} |"
              f" {x.get('stream_catchup_s', 0.0):.1f} / {x['catchup_s']:.1f} |"
              f" {x.get('sustained_stream_per_s', x['sustained_per_s']):,.0f} / {x['sustained_per_s']:,.0f} |"
              f" {x['cpu_us_per_event']:.1f} |"
              f" {x['loadavg_before']:.2f} / {x['loadavg_after']:.2f} |")
    for r in runs[0 if base is None or len(runs) == 1 else 1:]:
        x = r.result
        if base is not None and r is not runs[0]:
            print(f"\n{x['label']}: sustained / collector-only ingest = {x['sustained_per_s'] / base['ingest_per_s']:.2f};"
                  f" CPU per event vs collector only = {x['cpu_us_per_event'] / base['cpu_us_per_event']:.1f}x")
        print(f"\n{x['events_total']:,} events; per-process CPU seconds (load / total) and µs per event: " + ", ".join(
            f"{k} {x['cpu_s_during_load'][k]:.1f} / {x['cpu_s_total'][k]:.1f} ({x['cpu_s_total'][k] / x['events_total'] * 1e6:.1f})"
            for k in x["cpu_s_total"]))
        if x.get("service_cpu_s"):
            print("services' CPU seconds (total) and µs per event: " + ", ".join(
                f"{k} {v:.1f} ({v / x['events_total'] * 1e6:.1f})" for k, v in x["service_cpu_s"].items()))
        print("idle CPU (s per s, polling): " + ", ".join(f"{k} {v:.2f}" for k, v in x["idle_cpu_s_per_s"].items()))
        print(f"signals emitted: {x['signals']:,}")
        print("peak RSS (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in x["peak_rss_mb"].items()))
        print("per-stage catch-up after the load ended (s): " + ", ".join(
            f"{s} {v:.1f}" for s, v in x["stage_catchup_s"].items()))
        print("\nstage lag (records) over time:\n")
        stages = list(x["stage_catchup_s"])
        print("| t (s) | ingest/s | " + " | ".join(stages) + " |")
        print("|---:|---:|" + "---:|" * len(stages))
        step = max(1, len(r.samples) // 30)
        for smp in r.samples[::step] + ([r.samples[-1]] if (len(r.samples) - 1) % step else []):
            print(f"| {smp['t']:.0f} | {smp['ingest_per_s']:,} | " + " | ".join(f"{smp['lag'][s]:,}" for s in stages)
                  + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=30, help="Seconds of load [30].")
    ap.add_argument("--batch", type=int, default=100, help="Events per request [100].")
    ap.add_argument("--devices", type=int, default=1000, help="Registered devices the load rotates over [1000].")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections [16].")
    ap.add_argument("--seed", type=int, default=42, help="Seed of the event mix [42].")
    ap.add_argument("--mode", default="embedded",
                    help="Comma-separated whole-platform runs: embedded (`serve` as users run it: a process per "
                         "stage), threads (`serve` in one process), processes (`vendwatch run` per role) [embedded].")
    ap.add_argument("--catchup-timeout", type=float, default=300, help="Give up waiting for catch-up after [300] s.")
    ap.add_argument("--sample-s", type=float, default=1.0, help="Sampling period [1] s.")
    ap.add_argument("--settle", type=float, default=3.0, help="Seconds between start and load [3].")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Setting for the measured processes, e.g. lake.batch_max_wait_s=5 (repeatable).")
    ap.add_argument("--profile", metavar="DIR", help="Profile every measured process with py-spy; summaries printed.")
    ap.add_argument("--skip-baseline", action="store_true", help="Only the whole-platform run.")
    ap.add_argument("--collector-only", action="store_true",
                    help="Only the collector-only run (the collector's CPU per event on the mixed load).")
    ap.add_argument("--json", dest="json_out", help="Also write every run and sample here.")
    ap.add_argument("-q", "--quiet", action="store_true", help="No per-sample progress lines.")
    ap.add_argument("--kafka", help="Kafka bootstrap servers: run on the scale-out backends (with --postgres).")
    ap.add_argument("--postgres", help="PostgreSQL DSN for state, dedupe and the Iceberg catalog (with --kafka).")
    args = ap.parse_args()
    if bool(args.kafka) != bool(args.postgres):
        raise SystemExit("--kafka and --postgres go together")
    if args.collector_only and args.skip_baseline:
        raise SystemExit("--collector-only and --skip-baseline leave nothing to run")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    if not modes or set(modes) - {"embedded", "threads", "processes"}:
        raise SystemExit(f"--mode: comma-separated embedded, threads, processes; got {args.mode!r}")
    all_roles = list(load_settings(environ={}).server.roles)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="vw-pipeline-") as tmp:
        work = Path(tmp)
        if not args.kafka:
            register(work / "registry", args.devices, work / "tokens.txt")
        if not args.skip_baseline:
            runs.append(one_run("collector", ["collector"], args, work))
        if not args.collector_only:
            for mode in modes:
                runs.append(one_run("platform" if len(modes) == 1 else f"platform-{mode}", all_roles, args, work, mode))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps([{"result": r.result, "samples": r.samples} for r in runs],
                                                      indent=1, default=str))
    report(runs, args)
    if args.profile:
        print("\nwhere the time goes (py-spy, load + catch-up):\n")
        for f in sorted(Path(args.profile).glob("*.txt")):
            print(summarize_profile(f))


if __name__ == "__main__":
    main()
