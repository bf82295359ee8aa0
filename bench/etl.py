"""ETL benchmark: what one scheduled `vendwatch etl run` costs as the lake grows.

    python bench/etl.py                                   # 100k, 400k, 1.6M events
    python bench/etl.py --sizes 100000 --increments 3     # quick
    python bench/etl.py --new 4000                        # the same increment for every size

(from the documented install, ``pip install -e '.[dev,bench]'``).

For every size N, in a fresh data directory under the system's temp directory:
1. fills raw.events with N generated fleet events (fixed seed) through the raw
   writer's commit path (``commit_batch``: the writer's rows, files and log-offset
   summaries): 15 % on each of two past days, 70 % on "today" up to 18:00;
2. runs the ETL once (the first run: everything);
3. ``--increments`` times: appends ``--increment`` x N (or ``--new``) more events (the next five
   minutes of today; ``--late`` of them belong to the past days and arrive late) and
   times the incremental run the lake-jobs role would do next.
Prints CPU seconds (the whole process, every thread) and wall seconds per run, and
CPU microseconds per event (first run) and per new event; ``--steps`` adds each run's CPU
by step (plan, new rows, days rebuilt, whole tables, stock-outs, commits); ``--json-out``
writes them as JSON. The incremental run's cost per new event should not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the lake benchmark's generator
from lake import generate_chunk  # noqa: E402
from vendwatch.config import load_settings  # noqa: E402
from vendwatch.lake.catalog import ensure_table, open_catalog  # noqa: E402
from vendwatch.lake.etl import run_etl  # noqa: E402
from vendwatch.lake.schemas import RAW_EVENTS  # noqa: E402
from vendwatch.lake.writer import commit_batch, committed_offsets  # noqa: E402

DAY = 86_400
SLICE = 21_600  # past days and today are generated in 6-hour slices
STEP = 300  # one increment: the next five minutes
TODAY = 2  # days 0 and 1 are the past


def _append(raw, t: pa.Table) -> None:  # type: ignore[no-untyped-def]
    """Commit rows the way the lake writer does: data and the log offsets it covers, one commit."""
    done = committed_offsets(raw).get(("events", 0), 0)
    t = t.set_column(t.schema.get_field_index("log_offset"), "log_offset",
                     pa.array(range(done, done + t.num_rows), pa.int64())).cast(RAW_EVENTS.arrow_schema())
    commit_batch(raw, t, {("events", 0): done}, {("events", 0): done + t.num_rows}, "bench-etl")


def _slices(n: int, devices: int, seed: int, chunk: int) -> list[pa.Table]:
    """N events: 15 % on each past day, 70 % on today 00:00-18:00, in commits of at most ``chunk``."""
    plan = [(k, 0.15 / 4) for k in range(0, 8)] + [(k, 0.70 / 3) for k in range(8, 11)]
    out = []
    for k, share in plan:
        m = max(1, round(n * share))
        t = generate_chunk(k, m, float(SLICE), devices, devices // 10 or 1, seed, 0)
        out.extend(t.slice(i, chunk) for i in range(0, t.num_rows, chunk))
    return out


def _increment(i: int, n: int, late: float, devices: int, seed: int) -> pa.Table:
    """The i-th five minutes after 18:00 today, plus ``late`` x n events of the past days arriving now."""
    k = (TODAY * DAY + 18 * 3600) // STEP + i
    parts = [generate_chunk(k, n, float(STEP), devices, devices // 10 or 1, seed + 1, 0)]
    m = round(n * late)
    if m:
        # yesterday from 12:00 on, received now (a machine that was offline catching up)
        old = generate_chunk((DAY + 12 * 3600) // STEP + i, m, float(STEP), devices, devices // 10 or 1, seed + 2, 0)
        now = pa.array([parts[0]["received_at"][0].value] * m, pa.timestamp("us", tz="UTC"))
        parts.append(old.set_column(old.schema.get_field_index("received_at"), "received_at", now).cast(parts[0].schema))
    return pa.concat_tables(parts)


def _timed(fn) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    c0, w0 = time.process_time(), time.perf_counter()
    r = fn()
    return time.process_time() - c0, time.perf_counter() - w0, r


def _steps(args: argparse.Namespace, rep) -> None:  # type: ignore[no-untyped-def]
    """With --steps: the run's CPU seconds by step (the ETL report's ``cpu_s``)."""
    if args.steps:
        print("               steps (CPU s): " + ", ".join(f"{k} {v:.2f}" for k, v in rep.cpu_s.items()), flush=True)


def run_size(n: int, args: argparse.Namespace, root: Path) -> dict[str, object]:
    settings = load_settings(overrides={"data_dir": str(root / f"n{n}")}, environ={})
    raw = ensure_table(open_catalog(settings), "raw.events")
    for t in _slices(n, args.devices, args.seed, args.chunk):
        _append(raw, t)
    cpu, wall, rep = _timed(lambda: run_etl(settings))
    res: dict[str, object] = {"events": n, "first_cpu_s": round(cpu, 2), "first_wall_s": round(wall, 2),
                              "first_cpu_us_per_event": round(cpu / n * 1e6, 1), "first_steps": rep.cpu_s,
                              "increments": []}
    print(f"N={n:>9,}: first run {cpu:6.2f} s CPU, {wall:6.2f} s wall, {cpu / n * 1e6:8.1f} µs CPU per event",
          flush=True)
    _steps(args, rep)
    m = args.new or max(1, round(n * args.increment))
    for i in range(args.increments):
        t = _increment(i, m, args.late, args.devices, args.seed)
        _append(raw, t)
        cpu, wall, rep = _timed(lambda: run_etl(settings))
        per = cpu / t.num_rows * 1e6
        res["increments"].append({"new_events": t.num_rows, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),  # type: ignore[union-attr]
                                  "cpu_us_per_new_event": round(per, 1), "steps": rep.cpu_s})
        print(f"             + {t.num_rows:>7,} new: {cpu:6.2f} s CPU, {wall:6.2f} s wall,"
              f" {per:8.1f} µs CPU per new event", flush=True)
        _steps(args, rep)
    cpu, wall, rep = _timed(lambda: run_etl(settings))
    res["idle_cpu_s"] = round(cpu, 3)
    print(f"             nothing new: {cpu:6.2f} s CPU, {wall:6.2f} s wall", flush=True)
    shutil.rmtree(root / f"n{n}", ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,400000,1600000", help="lake sizes N, comma-separated")
    ap.add_argument("--increment", type=float, default=0.01, help="new events per incremental run, as a share of N")
    ap.add_argument("--new", type=int, default=0, help="new events per incremental run (instead of --increment)")
    ap.add_argument("--increments", type=int, default=2, help="incremental runs per size")
    ap.add_argument("--late", type=float, default=0.02, help="share of an increment that belongs to a past day")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=200_000, help="rows per raw commit while filling")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--steps", action="store_true", help="print each run's CPU seconds by step (the ETL report's cpu_s)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    out: dict[str, object] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": os.getloadavg(), "sizes": [],
    }
    root = Path(tempfile.mkdtemp(prefix="vw-bench-etl-"))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            out["sizes"].append(run_size(n, args, root))  # type: ignore[union-attr]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
