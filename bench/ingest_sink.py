"""Dedupe designs for the embedded log, measured side by side (no HTTP).

    python bench/ingest_sink.py                    # 5 s per design, commits of 100 and 2000 events

Both designs append the same StoredEvent JSON records to a fresh SQLite log (WAL,
synchronous=FULL) in one transaction per commit, with unique random (UUID) event ids
so every key is new:

* ``btree``: the obvious design, a ``seen(k BLOB PRIMARY KEY) WITHOUT ROWID`` table
  written in the same transaction (a random-key B-tree insert per event);
* ``memory``: vendwatch's ``SqliteIngestSink``: an in-memory index derived from the log
  (no extra write per event).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import msgspec  # noqa: E402

from vendwatch import events as ev  # noqa: E402
from vendwatch.bus import EVENTS, REJECTED  # noqa: E402
from vendwatch.bus.sqlite import SqliteLog  # noqa: E402
from vendwatch.ingest.dedupe import dedupe_key  # noqa: E402
from vendwatch.ingest.sink import IngestSink, Pending, SqliteIngestSink  # noqa: E402


class BtreeIndexSink(IngestSink):
    """Dedupe keys in a SQLite table, inserted in the same transaction as the events."""

    def __init__(self, log: SqliteLog) -> None:
        self.log = log
        with log.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS seen(k BLOB PRIMARY KEY) WITHOUT ROWID")

    def commit(self, accepted: Sequence[Pending], rejected: Sequence[tuple[str, bytes]]) -> list[bool]:
        keys = [dedupe_key(p.device_id, p.event_id) for p in accepted]
        with self.log.transaction() as db:
            seen: set[bytes] = set()
            for i in range(0, len(keys), 900):
                chunk = keys[i : i + 900]
                seen.update(r[0] for r in db.execute(
                    f"SELECT k FROM seen WHERE k IN ({','.join('?' * len(chunk))})", chunk))
            fresh = [k not in seen for k in keys]
            db.executemany("INSERT INTO seen VALUES (?)", [(k,) for k, f in zip(keys, fresh, strict=True) if f])
            items = [(p.device_id, p.value) for p, f in zip(accepted, fresh, strict=True) if f]
            self.log.append_in(db, {EVENTS: items, REJECTED: list(rejected)})
        return fresh


def _pending(n: int) -> list[Pending]:
    now = ev.utcnow()
    data = msgspec.Raw(b'{"cabinet_temp_c":4.2,"door_open":false,"motor_status":"idle"}')
    out = []
    for i in range(n):
        eid = str(uuid.uuid4())
        dev = f"VM-{i % 1000:06d}"
        out.append(Pending(dev, eid, ev.encode(ev.StoredEvent(
            event_id=eid, device_id=dev, type="telemetry", occurred_at=now, received_at=now, data=data,
            site_id="SITE-001"))))
    return out


def run(design: str, batch: int, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        log = SqliteLog(Path(d) / "bus.db")
        log.create_topic(EVENTS)
        log.create_topic(REJECTED)
        sink: IngestSink = BtreeIndexSink(log) if design == "btree" else SqliteIngestSink(log)
        sink.warm()
        n, wall, cpu = 0, 0.0, 0.0
        while wall < seconds:
            pool = [_pending(batch) for _ in range(max(1, 20_000 // batch))]  # prepared outside the clock
            t0, c0 = time.perf_counter(), time.process_time()
            for pending in pool:
                sink.commit(pending, [])
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            n += batch * len(pool)
        log.close()
        return n / wall, cpu / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batches", default="100,2000")
    args = ap.parse_args()
    print("| events per commit | B-tree index events/s | in-memory index events/s | ratio | CPU µs/event (B-tree / memory) |")
    print("|---:|---:|---:|---:|---:|")
    for batch in [int(b) for b in args.batches.split(",")]:
        bt, bt_cpu = run("btree", batch, args.seconds)
        mem, mem_cpu = run("memory", batch, args.seconds)
        print(f"| {batch} | {bt:,.0f} | {mem:,.0f} | {mem / bt:.2f} | {bt_cpu:.1f} / {mem_cpu:.1f} |", flush=True)


if __name__ == "__main__":
    main()
