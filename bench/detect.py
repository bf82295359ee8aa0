"""Detector benchmark: throughput on one core and state bytes per device.

    PYTHONPATH=src python bench/detect.py [--devices 100000] [--events 1000000]

Generates a fleet history (every device sends heartbeats, telemetry, sales,
connectivity, and now and then stock alerts, faults, config and crash logs), encoded
exactly as the collector writes it to the ``events`` topic. Then, in the same process:

* baseline: decode every record (envelope + payload) and iterate, nothing else;
* engine: the same decode plus ``Engine.process`` with the default rule pack, and
  ``Engine.advance`` after every 2,000 events (timers), as the detector role does;
* role: the detector role end to end on a SQLite log (reads, evaluation, signal
  appends, checkpoints of changed devices), against reading and decoding the same log;
* state: encoded bytes per device (what a checkpoint stores) and in-memory bytes per
  device (tracemalloc, a separate pass).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.detect.engine import Engine
from vendwatch.detect.role import _data, _lean
from vendwatch.detect.rules import load_ruleset

T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


def fleet(devices: int, n_events: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``n_events`` records spread over ``devices`` machines, in time order."""
    rnd = random.Random(seed)
    per_dev = max(1, n_events // devices)
    out: list[tuple[float, str, bytes]] = []
    enc = msgspec.json.Encoder()
    for d in range(devices):
        dev = f"VM-{d:06d}"
        site = f"S{d // 10:05d}"
        for i in range(per_dev):
            t = T0 + i * 60.0 + rnd.random() * 50
            r = rnd.random()
            if r < 0.35:
                etype, data = "heartbeat", {"interval_s": 60, "uptime_s": i * 60, "firmware_version": "1.4.2"}
            elif r < 0.65:
                etype, data = "telemetry", {"cabinet_temp_c": 24.0 + rnd.random(), "refrigeration_temp_c": 3.0 + rnd.random() * 3,
                                            "power_on": True, "voltage_v": 229.0 + rnd.random() * 3, "door_open": False,
                                            "motor_status": "idle", "coin_sensor": "ok", "bill_validator": "ok",
                                            "product_sensor": "ok", "cpu_pct": 20.0, "mem_pct": 40.0, "disk_pct": 50.0}
            elif r < 0.85:
                fail = rnd.random() < 0.04
                etype, data = "transaction", {"transaction_id": f"{dev}-{i}", "product_id": "p12", "slot": "A3",
                                              "price_minor": 180, "currency": "EUR", "payment_method": "card",
                                              "payment_status": "failure" if fail else "success",
                                              "vend_status": "not_attempted" if fail else "success"}
            elif r < 0.93:
                etype, data = "connectivity", {"location_id": f"L{d}", "network": "4g", "signal_dbm": -80.0 - rnd.random() * 30,
                                               "latency_ms": 80.0 + rnd.random() * 50}
            elif r < 0.97:
                etype, data = "stock_alert", {"slot": f"A{rnd.randrange(8)}", "level": rnd.choice(["low", "ok", "out"]), "count": 1}
            elif r < 0.985:
                etype, data = "fault", {"code": rnd.choice(["motor_jam", "display_failure"]), "state": rnd.choice(["raised", "cleared"])}
            elif r < 0.995:
                etype, data = "config", {"firmware_version": "1.4.2", "config_version": "7"}
            else:
                etype, data = "log", {"kind": rnd.choice(["crash", "application"]), "level": "error", "message": "x"}
            at = datetime.fromtimestamp(t, UTC)
            se = ev.StoredEvent(event_id=f"{dev}-{i}", device_id=dev, type=etype, occurred_at=at, received_at=at,
                                data=msgspec.Raw(enc.encode(data)), site_id=site)
            out.append((t, dev, ev.encode(se)))
    out.sort(key=lambda x: x[0])
    return [(k, v) for _t, k, v in out]


def baseline(values: list[bytes]) -> float:
    t0 = time.process_time()
    n = 0
    for v in values:
        e = _lean.decode(v)
        d = _data.decode(e.data)
        e.occurred_at.timestamp()
        n += len(d) > 0
    return time.process_time() - t0


def engine_pass(values: list[bytes], eng: Engine) -> tuple[float, int]:
    signals = 0
    t0 = time.process_time()
    clock = 0.0
    for i, v in enumerate(values, 1):
        e = _lean.decode(v)
        t = e.occurred_at.timestamp()
        eng.process(e.event_id, e.device_id, e.site_id, e.type, t, _data.decode(e.data))
        if t > clock:
            clock = t
        if i % 2000 == 0:
            eng.advance(clock)
            signals += len(eng.drain())
    eng.advance(clock)
    signals += len(eng.drain())
    return time.process_time() - t0, signals


def role_pass(records: list[tuple[str, bytes]]) -> tuple[float, float, int]:
    from vendwatch.bus.base import EVENTS, SIGNALS
    from vendwatch.config import load_settings
    from vendwatch.detect.role import Detector
    from vendwatch.runtime import Context

    with tempfile.TemporaryDirectory() as d:
        ctx = Context(load_settings(overrides={"data_dir": d, "detect.clock": "event", "detect.checkpoint_interval_s": 5.0}))
        ctx.log.create_topic(EVENTS)
        for i in range(0, len(records), 20_000):
            ctx.log.append(EVENTS, records[i : i + 20_000])
        # baseline: read the same log partition by partition and decode every record
        t0 = time.process_time()
        for p, end in ctx.log.end_offsets(EVENTS).items():
            off = 0
            while off < end:
                recs = ctx.log.read(EVENTS, p, off, 2000)
                if not recs:
                    break
                for r in recs:
                    e = _lean.decode(r.value)
                    _data.decode(e.data)
                off = recs[-1].offset + 1
        base = time.process_time() - t0
        det = Detector(ctx)
        t0 = time.process_time()
        while det.step():
            pass
        det.checkpoint()
        role = time.process_time() - t0
        n_sig = sum(ctx.log.end_offsets(SIGNALS).values()) - len(ctx.log.end_offsets(SIGNALS))
        ctx.close()
    return base, role, n_sig


def state_sizes(values: list[bytes]) -> tuple[float, float, int]:
    rules = load_ruleset([])
    gc.collect()
    tracemalloc.start()
    eng = Engine(rules)
    clock = 0.0
    for i, v in enumerate(values, 1):
        e = _lean.decode(v)
        t = e.occurred_at.timestamp()
        eng.process(e.event_id, e.device_id, e.site_id, e.type, t, _data.decode(e.data))
        clock = max(clock, t)
        if i % 2000 == 0:
            eng.advance(clock)
            eng.drain()
    eng.dirty.clear()
    eng.drain()
    gc.collect()
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n = len(eng.devices)
    encoded = sum(len(eng.encode_device(dev)) for dev in eng.devices.values())
    return encoded / n, mem / n, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--role-events", type=int, default=300_000, help="events for the end-to-end role pass (0: skip)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the engine pass")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is reported")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    t0 = time.process_time()
    records = fleet(args.devices, args.events)
    values = [v for _k, v in records]
    print(f"generated {len(values):,} events for {args.devices:,} devices in {time.process_time() - t0:.1f}s")
    rules = load_ruleset([])
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        engine_pass(values, Engine(rules))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        pstats.Stats(prof).sort_stats("cumulative").print_stats("emit|_tick_device|advance|schedule")
        return
    n = len(values)
    warm = n // 3  # steady state: the last 2/3, once every device has state
    # interleaved rounds, best of each: the machine is shared, so noise only slows things down
    base = det = base_steady = det_steady = float("inf")
    n_sig = 0
    for _ in range(args.rounds):
        base = min(base, baseline(values))
        d, n_sig = engine_pass(values, Engine(rules))
        det = min(det, d)
        eng2 = Engine(rules)
        engine_pass(values[:warm], eng2)
        base_steady = min(base_steady, baseline(values[warm:]))
        det_steady = min(det_steady, engine_pass(values[warm:], eng2)[0])
    rows: list[dict[str, Any]] = [
        {"what": "decode + iterate (baseline)", "events/s": n / base},
        {"what": f"decode + default pack ({len(rules.rules)} rules) + timers", "events/s": n / det},
        {"what": "steady state, baseline (last 2/3, device state exists)", "events/s": (n - warm) / base_steady},
        {"what": "steady state, decode + default pack + timers", "events/s": (n - warm) / det_steady},
    ]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"{'what':<58} {'events/s':>12}")
    for r in rows:
        print(f"{r['what']:<58} {r['events/s']:>12,.0f}")
    print(f"ratio engine / baseline: {base / det:.3f} whole run, {base_steady / det_steady:.3f} steady state"
          f"   (signals emitted: {n_sig:,})")
    print(f"engine cost per event beyond decoding: {(det - base) / n * 1e6:.2f} µs")
    if args.role_events:
        sub = records[: args.role_events]
        runs = [role_pass(sub) for _ in range(2)]
        rbase, rrole, rsig = min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]
        m = len(sub)
        print(f"\nrole end to end on a SQLite log, {m:,} events (signals {rsig:,}):")
        print(f"{'read log + decode (baseline)':<58} {m / rbase:>12,.0f}")
        print(f"{'detector role (read, evaluate, emit, checkpoint)':<58} {m / rrole:>12,.0f}")
        print(f"ratio role / baseline: {rbase / rrole:.3f}")
    enc, mem, devs = state_sizes(values)
    print(f"\nstate per device over {devs:,} devices: encoded (checkpoint) {enc:,.0f} bytes, in memory {mem:,.0f} bytes")


if __name__ == "__main__":
    main()
