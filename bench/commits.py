"""What one raw commit costs as snapshots pile up, and after `lake maintain` thins them.

    python bench/commits.py                       # 1,500 commits, measured every 250
    python bench/commits.py --commits 600 --every 100

(from the documented install, ``pip install -e '.[dev,bench]'``). In a fresh data
directory under the system's temp directory, commits ``--rows`` generated fleet events at a
time to raw.events the way the lake writer does (``commit_batch``: rows and log offsets in
one commit; nothing else runs), and prints the median CPU and wall time of the last
``--every`` commits against the number of snapshots the table holds. Then runs the
snapshot expiry of ``lake maintain`` as it would run three hours later (default settings:
everything of the last hour kept, the newest of each hour for a day) and times
``--every`` more commits. pyiceberg copies the table's whole snapshot list several times
per commit, so without thinning the cost grows with every commit the table keeps.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for the lake benchmark's generator
from etl import _append  # noqa: E402

from lake import generate_chunk  # noqa: E402
from vendwatch.config import load_settings  # noqa: E402
from vendwatch.lake.catalog import ensure_table, open_catalog  # noqa: E402
from vendwatch.lake.maintain import maintain  # noqa: E402


def _commits(raw, n: int, rows: int, start: int) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(n):
        t = generate_chunk(start + i, rows, 60.0, 100, 10, 7, 0)
        c0, w0 = time.process_time(), time.perf_counter()
        _append(raw, t)
        out.append((time.process_time() - c0, time.perf_counter() - w0))
    return out


def _line(label: str, snaps: int, times: list[tuple[float, float]]) -> None:
    cpu = statistics.median(c for c, _ in times) * 1000
    wall = statistics.median(w for _, w in times) * 1000
    print(f"{label:<28} {snaps:>9,} snapshots: {cpu:7.1f} ms CPU, {wall:7.1f} ms wall per commit (median)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=1500)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--rows", type=int, default=100, help="events per commit")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    root = Path(tempfile.mkdtemp(prefix="vw-bench-commits-"))
    try:
        settings = load_settings(overrides={"data_dir": str(root / "data")}, environ={})
        raw = ensure_table(open_catalog(settings), "raw.events")
        done = 0
        while done < args.commits:
            times = _commits(raw, args.every, args.rows, done)
            done += args.every
            _line(f"after {done:,} commits", len(raw.metadata.snapshots), times)
        c0 = time.process_time()
        out = maintain(settings, now=datetime.now(UTC) + timedelta(hours=3), tables=["raw.events"])["raw.events"]
        print(f"lake maintain (3 h later): expired {out['expired_snapshots']:,} snapshots in "
              f"{time.process_time() - c0:.1f} s CPU", flush=True)
        raw.refresh()
        _line("after thinning", len(raw.metadata.snapshots), _commits(raw, args.every, args.rows, done))
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
