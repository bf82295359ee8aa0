"""The collector's request path in one process, without HTTP: CPU per event of each step.

    python bench/collector_path.py                  # 300 requests of 100 mixed events, 5 rounds
    python bench/collector_path.py --requests 500 --batch 100 --group 4

The events are the mix of bench/pipeline.lua (telemetry 40 %, heartbeats 20 %, sales
20 %, connectivity 10 %, inventory 5 %, faults 5 %; unique event ids), one device per
request, over a registry of ``--devices`` devices. Each step is timed in CPU time
(``time.process_time``) over all requests, and the rounds' medians are printed:

* ``auth``: the registry lookup of a request's device token (what a request pays when
  the collector's authentication cache misses: every request of a device that posts less
  often than ``ingest.auth_cache_s``);
* ``parse``: the whole-batch typed decode (``ingest.validate.parse``);
* ``validate``: per-event rules, payload decode, the stored record's JSON;
* ``commit``: the durable group commit of ``--group`` requests at a time to a fresh
  embedded log (dedupe, SQLite transaction with fsync).

The machine may be shared: compare runs of two checkouts made alternately, in the same
minutes, and give the load average (printed).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import msgspec  # noqa: E402
from stages import mixed_payload  # noqa: E402

from vendwatch import events as ev  # noqa: E402
from vendwatch.bus.sqlite import SqliteLog  # noqa: E402
from vendwatch.config import load_settings  # noqa: E402
from vendwatch.ingest.sink import SqliteIngestSink  # noqa: E402
from vendwatch.ingest.validate import Validator, parse  # noqa: E402
from vendwatch.state import open_state  # noqa: E402


def bodies(n: int, batch: int, devices: list[str], round_: int) -> list[tuple[str, bytes]]:
    rnd = random.Random(42)
    now = ev.utcnow().replace(microsecond=0).isoformat().replace("+00:00", "Z")
    out = []
    for c in range(n):
        dev = devices[(c * 7919) % len(devices)]
        events = []
        for k in range(batch):
            t, d = mixed_payload(rnd, k, c)
            events.append({"event_id": f"r{round_}-{c}-{k}", "device_id": dev, "type": t, "occurred_at": now,
                           "seq": c * batch + k, "data": d})
        out.append((dev, msgspec.json.encode({"events": events})))
    return out


def one_round(work: Path, args: argparse.Namespace, tokens: dict[str, str], round_: int) -> dict[str, float]:
    settings = load_settings(overrides={"data_dir": str(work)}, environ={})
    state = open_state(settings)
    devices = sorted(tokens)
    reqs = bodies(args.requests, args.batch, devices, round_)
    n_events = args.requests * args.batch
    validator = Validator(settings.ingest)
    cpu: dict[str, float] = {}

    t = time.process_time()
    found = [state.authenticate_device(tokens[dev]) for dev, _ in reqs]
    cpu["auth"] = time.process_time() - t
    assert all(d is not None for d in found)

    t = time.process_time()
    parsed = [parse(body) for _, body in reqs]
    cpu["parse"] = time.process_time() - t

    now = ev.utcnow()
    t = time.process_time()
    outs = [validator.validate(p, dev.device_id, dev.site_id, now) for p, dev in zip(parsed, found, strict=True)]
    cpu["validate"] = time.process_time() - t
    assert sum(len(o.accepted) for o in outs) == n_events, "every event must be accepted"

    log = SqliteLog(work / f"log-{round_}.db")
    sink = SqliteIngestSink(log)
    sink.warm()
    t = time.process_time()
    for i in range(0, len(outs), args.group):
        group = outs[i : i + args.group]
        fresh = sink.commit([p for o in group for p in o.accepted], [])
        assert all(fresh)
    cpu["commit"] = time.process_time() - t
    log.close()
    state.close()
    return {k: v / n_events * 1e6 for k, v in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="Requests per round [300].")
    ap.add_argument("--batch", type=int, default=100, help="Events per request [100].")
    ap.add_argument("--group", type=int, default=4, help="Requests per group commit [4].")
    ap.add_argument("--devices", type=int, default=1000, help="Registered devices [1000].")
    ap.add_argument("--rounds", type=int, default=5, help="Rounds; medians printed [5].")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vw-collector-path-") as tmp:
        work = Path(tmp)
        state = open_state(load_settings(overrides={"data_dir": str(work)}, environ={}))
        with state.db.transaction() as tx:
            tokens = {f"VM-{i:06d}": state.add_device(f"VM-{i:06d}", f"SITE-{i % 50:03d}", tx=tx)
                      for i in range(args.devices)}
        state.close()
        load0 = os.getloadavg()[0]
        rounds = [one_round(work, args, tokens, r) for r in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    total = sum(med.values())
    print(f"{args.requests} requests x {args.batch} mixed events, group commits of {args.group} requests,"
          f" {args.rounds} rounds; load average {load0:.2f} / {os.getloadavg()[0]:.2f}")
    print("CPU µs per event (median of rounds): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
          + f"; total {total:.2f}")


if __name__ == "__main__":
    main()
