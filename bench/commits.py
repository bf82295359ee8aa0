"""What one raw commit costs as snapshots pile up, and after `lake maintain` thins them.

    python bench/commits.py                       # 1,500 commits, measured every 250
    python bench/commits.py --commits 600 --every 100 --thin-every 100
    python bench/commits.py --manifest-merge off  # the baseline: pyiceberg's fast append

(from the documented install, ``pip install -e '.[dev,bench]'``). In a fresh data
directory under the system's temp directory, commits ``--rows`` generated fleet events at a
time to raw.events the way the lake writer does (``commit_batch``: rows and log offsets in
one commit; nothing else runs), and prints the median CPU and wall time of the last
``--every`` commits against the number of snapshots the table holds. Then runs the
snapshot expiry of ``lake maintain`` as it would run three hours later (default settings:
everything of the last hour kept, the newest of each hour for a day) and times
``--every`` more commits. pyiceberg copies the table's whole snapshot list several times
per commit, so without thinning the cost grows with every commit the table keeps.
``--thin-every N`` thins after every N commits instead (as the hourly maintenance does),
so what is left growing is the manifests: with ``--manifest-merge off`` (pyiceberg's
default, fast append) one per commit, which every commit and every scan planning reads.
At the end, the time to plan a scan of the whole table.
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


def _line(label: str, raw, times: list[tuple[float, float]]) -> None:  # type: ignore[no-untyped-def]
    raw.refresh()
    cpu = statistics.median(c for c, _ in times) * 1000
    wall = statistics.median(w for _, w in times) * 1000
    manifests = len(raw.current_snapshot().manifests(raw.io))
    print(f"{label:<28} {len(raw.metadata.snapshots):>7,} snapshots, {manifests:>6,} manifests: "
          f"{cpu:7.1f} ms CPU, {wall:7.1f} ms wall per commit (median)", flush=True)


def _thin(settings, now: datetime) -> int:  # type: ignore[no-untyped-def]
    return int(maintain(settings, now=now, tables=["raw.events"])["raw.events"]["expired_snapshots"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=1500)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--rows", type=int, default=100, help="events per commit")
    ap.add_argument("--thin-every", type=int, default=0, help="thin the snapshots after every N commits (0: only at the end)")
    ap.add_argument("--manifest-merge", choices=["on", "off"], default="on",
                    help="the table's commit.manifest-merge.enabled (on: vendwatch's tables)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)
    root = Path(tempfile.mkdtemp(prefix="vw-bench-commits-"))
    try:
        settings = load_settings(overrides={"data_dir": str(root / "data")}, environ={})
        raw = ensure_table(open_catalog(settings), "raw.events")
        with raw.transaction() as tx:
            tx.set_properties({"commit.manifest-merge.enabled": "true" if args.manifest_merge == "on" else "false"})
        print(f"manifest merge {args.manifest_merge}, {args.rows} events per commit", flush=True)
        done = thinned_at = 0
        later = datetime.now(UTC) + timedelta(hours=3)
        while done < args.commits:
            times = _commits(raw, args.every, args.rows, done)
            done += args.every
            _line(f"after {done:,} commits", raw, times)
            if args.thin_every and done - thinned_at >= args.thin_every:
                _thin(settings, later)
                thinned_at = done
        c0 = time.process_time()
        n = _thin(settings, later)
        print(f"lake maintain (3 h later): expired {n:,} snapshots in {time.process_time() - c0:.1f} s CPU", flush=True)
        _line("after thinning", raw, _commits(raw, args.every, args.rows, done))
        c0 = time.process_time()
        files = len(list(raw.scan().plan_files()))
        print(f"planning a scan of the table ({files:,} files): {time.process_time() - c0:.2f} s CPU")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
