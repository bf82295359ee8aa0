"""Cost of the console's read queries at fleet scale, each beside a baseline.

    PYTHONPATH=src python bench/console_api.py [--devices 10000,100000] [--events 200000]

For each fleet size it builds a SQLite state store (devices registered, live state
folded by the real device-state projector), then times, as the median of several runs:

* ``stats``: ``fleet.site_summary`` (connectivity classes per site, in SQL) against the
  baseline of reading the same joined rows and classifying them in Python;
* ``list``: the first page of ``fleet.list_devices(status=offline)`` against the
  foundation's unfiltered ``StateStore.list_device_states`` first page;
* ``events``: ``activity.recent_events`` for a device with no recent event (the
  worst case: the whole 20,000-record window is decoded) against a bare ``log.read``
  of the same records.

Prints one JSON line per measurement with ``ratio`` = measured / baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.bus.base import EVENTS, Record, partition_for
from vendwatch.bus.sqlite import SqliteLog
from vendwatch.config import load_settings
from vendwatch.console import activity, fleet
from vendwatch.runtime import Context
from vendwatch.state.projector import DeviceStateProjector

NOW = time.time()


def _median_s(fn: Callable[[], Any], runs: int = 7) -> float:
    fn()  # warm caches
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _stored(device_id: str, received_at: float, i: int) -> bytes:
    return ev.encode(ev.StoredEvent(
        event_id=f"{device_id}-{i}", device_id=device_id, type="telemetry",
        occurred_at=datetime.fromtimestamp(received_at, UTC), received_at=datetime.fromtimestamp(received_at, UTC),
        data=msgspec.Raw(msgspec.json.encode({"cabinet_temp_c": 5.0 + i % 7, "refrigeration_temp_c": 2.0})),
        site_id=f"site-{i % 500}"))


def build_fleet(root: Path, n: int) -> Context:
    ctx = Context(load_settings(overrides={"data_dir": str(root / f"fleet{n}")}, environ={}))
    st = ctx.state
    with st.db.transaction() as tx:
        for i in range(n):
            st.add_device(f"vm-{i:07d}", f"site-{i % 500}", token=f"vwd_bench{i}", tx=tx)
    # a tenth never seen; the rest spread over the last hour (online, stale, offline)
    values = [_stored(f"vm-{i:07d}", NOW - (i * 37) % 3600, i) for i in range(n) if i % 10]
    proj = DeviceStateProjector(ctx)
    for k in range(0, len(values), 5000):
        with st.db.transaction() as tx:
            proj.apply(tx, [Record(EVENTS, 0, j, "", v, 0) for j, v in enumerate(values[k:k + 5000])])
    return ctx


def _baseline_stats(ctx: Context) -> dict[str, int]:
    rows = ctx.state.db.query(
        "SELECT d.site_id, d.status, d.heartbeat_interval_s, s.last_seen_at"
        " FROM devices d LEFT JOIN device_state s ON s.device_id = d.device_id")
    counts: dict[str, int] = {}
    for _site, status, hb, seen in rows:
        hb = hb or fleet.DEFAULT_HEARTBEAT_S
        cls = ("disabled" if status == "disabled" else "never" if seen is None
               else "online" if seen >= NOW - 2 * hb else "stale" if seen >= NOW - 10 * hb else "offline")
        counts[cls] = counts.get(cls, 0) + 1
    return counts


def bench_fleet(root: Path, n: int) -> list[dict[str, Any]]:
    ctx = build_fleet(root, n)
    db = ctx.state.db
    assert fleet.site_summary(db, NOW)["connectivity"] == {**dict.fromkeys(fleet.CLASSES, 0), **_baseline_stats(ctx)}
    out = []
    stats_s = _median_s(lambda: fleet.site_summary(db, NOW))
    base_s = _median_s(lambda: _baseline_stats(ctx))
    out.append({"what": "stats", "devices": n, "ms": stats_s * 1e3, "baseline": "join scan + classify in Python",
                "baseline_ms": base_s * 1e3, "ratio": stats_s / base_s})
    f = fleet.DeviceFilter(status="offline", limit=100)
    list_s = _median_s(lambda: fleet.list_devices(db, f, NOW))
    base_s = _median_s(lambda: ctx.state.list_device_states(None, 100, ""))
    out.append({"what": "list offline page", "devices": n, "ms": list_s * 1e3,
                "baseline": "list_device_states first page", "baseline_ms": base_s * 1e3, "ratio": list_s / base_s})
    ctx.close()
    return out


def bench_events(root: Path, total: int) -> dict[str, Any]:
    log = SqliteLog(root / "bus.db", default_partitions=4)
    log.create_topic(EVENTS)
    batch = []
    for i in range(total):
        d = f"vm-{i % 5000:07d}"
        batch.append((d, _stored(d, NOW, i)))
        if len(batch) == 10_000:
            log.append(EVENTS, batch)
            batch = []
    if batch:
        log.append(EVENTS, batch)
    quiet = next(f"quiet-{k}" for k in range(100) if partition_for(f"quiet-{k}", 4) == 0)
    end = log.end_offsets(EVENTS)[0]
    scan = _median_s(lambda: activity.recent_events(log, quiet, limit=50), runs=5)
    base = _median_s(lambda: [log.read(EVENTS, 0, s, 2000) for s in range(end - 20_000, end, 2000)], runs=5)
    log.close()
    return {"what": "recent events, 20k-record scan", "log_events": total, "ms": scan * 1e3,
            "baseline": "log.read of the same 20k records", "baseline_ms": base * 1e3, "ratio": scan / base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="10000,100000", help="comma-separated fleet sizes")
    ap.add_argument("--events", type=int, default=200_000, help="events in the log for the scan benchmark")
    args = ap.parse_args()
    print(json.dumps({"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                      "date": datetime.now(UTC).isoformat(timespec="seconds")}))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in (int(x) for x in args.devices.split(",")):
            for row in bench_fleet(root, n):
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
        row = bench_events(root, args.events)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
