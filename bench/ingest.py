"""Ingest benchmark: the real collector vs a parse-only ASGI baseline, same server, same load.

    python bench/ingest.py                      # batches of 1, 10, 100; 10 s each, 3 times; 1000 devices
    python bench/ingest.py --duration 5 --batches 100 --connections 32

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). For each batch size it starts
``vendwatch serve --roles collector`` (one uvicorn worker, fresh data dir, N devices
registered) and, separately, ``uvicorn bench.baseline_app:app`` (msgspec parse + 200),
then drives each with ``wrk -t1`` on loopback. wrk's Lua script (bench/ingest.lua)
rotates device tokens and gives every event a unique id, so authentication,
validation, deduplication and the durable group commit all do real work.

Accepted events/s is counted in the log itself (records appended during the run / run
time), not from wrk's request count. Latency percentiles are wrk's. The server's CPU
time per event is read from /proc. Baseline and collector runs are interleaved and
repeated (``--repeat``, 3) because the machine may be shared; the table gives the median
(and the best run). ``--json FILE`` saves every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from vendwatch.config import load_settings  # noqa: E402
from vendwatch.state import open_state  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = f"{SRC}{os.pathsep}{ROOT}" + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def register(data_dir: Path, n: int, tokens_file: Path, environ: dict[str, str] | None = None) -> None:
    """``n`` devices in the state store of ``data_dir`` (or of the settings ``environ`` gives)."""
    st = open_state(load_settings(overrides={"data_dir": str(data_dir)}, environ=environ or {}))
    with st.db.transaction() as tx, tokens_file.open("w") as f:
        for i in range(n):
            did = f"VM-{i:06d}"
            f.write(f"{did} {st.add_device(did, f'SITE-{i % 50:03d}', tx=tx)}\n")
    st.close()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            httpx.get(url + path, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_records(bus_db: Path) -> int:
    if not bus_db.exists():
        return 0
    db = sqlite3.connect(bus_db)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'log_events_p%'")]
        return sum(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    finally:
        db.close()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, float]:
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["requests_per_s"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(s|m)", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1) if m else ""  # type: ignore[assignment]
    return res


def run_wrk(url: str, batch: int, args: argparse.Namespace, tokens: Path, tag: str) -> dict[str, float]:
    e = {**os.environ, "VW_TOKENS": str(tokens), "VW_BATCH": str(batch), "VW_RUN": tag}
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "--timeout", "10s",
           "-s", str(ROOT / "bench" / "ingest.lua"), url + "/v1/events"]
    out = subprocess.run(cmd, env=e, capture_output=True, text=True, check=True).stdout
    if args.verbose:
        print(out, file=sys.stderr)
    return parse_wrk(out)


def bench_one(kind: str, batch: int, args: argparse.Namespace, work: Path) -> dict[str, float | str]:
    data_dir = work / f"{kind}-{batch}"
    data_dir.mkdir()
    tokens = work / "tokens.txt"
    if not tokens.exists():
        register(work / "registry", args.devices, tokens)
    shutil.copytree(work / "registry", data_dir, dirs_exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if kind == "collector":
        cmd = [sys.executable, "-m", "vendwatch", "serve", "--data-dir", str(data_dir), "--port", str(port),
               "--roles", args.roles]
        health = "/healthz"
    else:
        cmd = [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--port", str(port), "--log-level",
               "warning", "--no-access-log"]
        health = "/"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(url, proc, health)
        if kind == "collector":  # warm up (first connections, caches), then measure
            run_wrk(url, batch, argparse.Namespace(**{**vars(args), "duration": 2, "verbose": False}), tokens,
                    f"w{batch}")
        before, cpu0, t0 = log_records(data_dir / "bus.db"), cpu_seconds(proc.pid), time.monotonic()
        res: dict[str, float | str] = dict(run_wrk(url, batch, args, tokens, f"m{batch}"))
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if kind == "collector":
        stored = log_records(data_dir / "bus.db") - before
        res["events_per_s"] = stored / elapsed
        res["server_cpu_us_per_event"] = cpu / stored * 1e6 if stored else float("nan")
    else:
        ok = float(res["requests"]) - float(res["non_2xx"])
        res["events_per_s"] = ok * batch / elapsed
        res["server_cpu_us_per_event"] = cpu / (ok * batch) * 1e6 if ok else float("nan")
    res.update(kind=kind, batch=batch)
    shutil.rmtree(data_dir, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,10,100", help="Comma-separated batch sizes [1,10,100].")
    ap.add_argument("--duration", type=int, default=10, help="Seconds per measurement [10].")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections [16].")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads [1: one core for the load generator].")
    ap.add_argument("--devices", type=int, default=1000, help="Registered devices the load rotates over [1000].")
    ap.add_argument("--roles", default="collector", help="Roles of the measured `vendwatch serve` [collector].")
    ap.add_argument("--repeat", type=int, default=3, help="Runs per measurement, interleaved; median reported [3].")
    ap.add_argument("--json", dest="json_out", help="Also write the results here.")
    ap.add_argument("-v", "--verbose", action="store_true", help="Print wrk's output.")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vw-bench-") as tmp:
        work = Path(tmp)
        for rep in range(args.repeat):
            for batch in [int(b) for b in args.batches.split(",")]:
                for kind in ("baseline", "collector"):  # interleaved: both see the same machine state
                    r = bench_one(kind, batch, args, work)
                    r["repeat"] = rep
                    rows.append(r)
                    print(f"{kind:9} batch={batch:<4} {float(r['events_per_s']):>10,.0f} events/s  "
                          f"{float(r['requests_per_s']):>8,.0f} req/s  p50={float(r['p50_ms']):.2f}ms "
                          f"p99={float(r['p99_ms']):.2f}ms  cpu={float(r['server_cpu_us_per_event']):.1f}us/event "
                          f"non2xx={int(float(r['non_2xx']))}", file=sys.stderr, flush=True)
    print(f"\nmedian of {args.repeat} run(s) (best in brackets)\n")
    print("| batch | collector events/s | baseline events/s | ratio | collector p50 / p99 ms |"
          " baseline p50 / p99 ms | collector CPU µs/event |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in sorted({int(r["batch"]) for r in rows}):
        c = [r for r in rows if r["batch"] == batch and r["kind"] == "collector"]
        b = [r for r in rows if r["batch"] == batch and r["kind"] == "baseline"]

        def med(rs: list[dict[str, float | str]], k: str) -> float:
            return statistics.median(float(r[k]) for r in rs)

        def best(rs: list[dict[str, float | str]], k: str) -> float:
            return max(float(r[k]) for r in rs)

        ratios = [float(x["events_per_s"]) / float(y["events_per_s"]) for x, y in zip(c, b, strict=True)]
        print(f"| {batch} | {med(c, 'events_per_s'):,.0f} ({best(c, 'events_per_s'):,.0f}) |"
              f" {med(b, 'events_per_s'):,.0f} ({best(b, 'events_per_s'):,.0f}) | {statistics.median(ratios):.2f} |"
              f" {med(c, 'p50_ms'):.2f} / {med(c, 'p99_ms'):.2f} | {med(b, 'p50_ms'):.2f} / {med(b, 'p99_ms'):.2f} |"
              f" {med(c, 'server_cpu_us_per_event'):.1f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
