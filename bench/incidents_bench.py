"""Incident orchestration benchmarks, each beside a baseline measured in the same run.

    PYTHONPATH=src python bench/incidents_bench.py [--signals 20000] [--tickets 300]

1. pattern matching: 20 compiled EventBridge rules, tested one by one and through the
   pattern index the router uses, vs. the same rules hand-written as Python predicates
   tested one by one;
2. orchestrator: signals/s through lifecycle + outbox (SQLite) vs. a checkpointed
   stage whose apply does nothing (the cost of reading the log and committing);
3. ServiceNow delivery: tickets created/s through the outbox, dispatcher and sink
   against the emulator vs. bare httpx POSTs to the same emulator.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "incidents"))

import httpx  # noqa: E402
from incident_helpers import context, make_signal, publish  # noqa: E402

from vendwatch.bus import SIGNALS  # noqa: E402
from vendwatch.bus.base import Record  # noqa: E402
from vendwatch.delivery.clock import VirtualClock  # noqa: E402
from vendwatch.emulators.servicenow import ServiceNowEmulator  # noqa: E402
from vendwatch.incidents.role import Orchestrator  # noqa: E402
from vendwatch.route.envelope import from_signal  # noqa: E402
from vendwatch.route.pattern import PatternIndex, compile_pattern  # noqa: E402
from vendwatch.stage import CheckpointedStage  # noqa: E402
from vendwatch.state.db import Tx  # noqa: E402


def bench_patterns(n: int) -> tuple[float, float, float]:
    clock = VirtualClock()
    sevs = ["critical", "major", "minor", "warning", "info"]
    events = [from_signal(make_signal(clock, key=f"r{i % 7}/VM-{i % 500:04d}", rule_id=f"r{i % 7}",
                                      severity=sevs[i % 5], device_id=f"VM-{i % 500:04d}", site_id=f"S{i % 13}"))
              for i in range(n)]
    rules = []
    hand = []
    for k in range(20):
        rid, site = f"r{k % 7}", f"S{k % 13}"
        rules.append(compile_pattern({"source": [{"prefix": "vendwatch"}], "detail": {
            "rule_id": [rid], "severity": [{"anything-but": ["info", "warning"]}], "site_id": [site]}}))

        def h(e: dict[str, Any], rid: str = rid, site: str = site) -> bool:
            d = e.get("detail", {})
            return (isinstance(e.get("source"), str) and e["source"].startswith("vendwatch")
                    and d.get("rule_id") == rid and d.get("severity") not in ("info", "warning")
                    and d.get("site_id") == site)

        hand.append(h)
    index = PatternIndex(rules)
    t0 = time.perf_counter()
    a = sum(r.matches(e) for e in events for r in rules)
    t1 = time.perf_counter()
    b = sum(h(e) for e in events for h in hand)
    t2 = time.perf_counter()
    c = sum(len(index.matching(e)) for e in events)
    t3 = time.perf_counter()
    assert a == b == c, (a, b, c)
    return n / (t1 - t0), n / (t3 - t2), n / (t2 - t1)


class _NoopStage(CheckpointedStage):
    name = "bench-noop"
    topics = (SIGNALS,)

    def apply(self, tx: Tx, records: list[Record]) -> None:
        pass


def _drain(stage: CheckpointedStage, total: int) -> float:
    c = stage.ctx.log.consumer(stage.group, stage.topics, on_assign=stage._on_assign)
    stage._consumer = c
    seen, t0 = 0, time.perf_counter()
    while seen < total:
        recs = c.poll(stage.batch_size, 0.5)
        if recs:
            stage.process(recs)
            seen += len(recs)
    dt = time.perf_counter() - t0
    c.close()
    return total / dt


def bench_orchestrator(n: int) -> tuple[float, float]:
    d = Path(tempfile.mkdtemp())
    ctx = context(d)
    clock = VirtualClock()
    sigs = []
    for i in range(n):
        clock.advance(0.01)
        sigs.append(make_signal(clock, key=f"offline/VM-{i % 100:04d}", device_id=f"VM-{i % 100:04d}", seq=i + 1,
                                status="resolved" if i % 10 == 9 else "firing"))
    for i in range(0, n, 5000):
        publish(ctx, *sigs[i:i + 5000])
    orch = Orchestrator(ctx, clock=clock)
    rate = _drain(orch, n)
    base = _drain(_NoopStage(ctx), n)
    return rate, base


def bench_delivery(n: int) -> tuple[float, float]:
    clock = VirtualClock()
    emu = ServiceNowEmulator(clock=clock.now)
    srv = emu.serve()
    try:
        d = Path(tempfile.mkdtemp())
        ctx = context(d, **{"incidents.servicenow.url": srv.url, "incidents.servicenow.username": "vendwatch",
                            "incidents.servicenow.password": "vendwatch",
                            "incidents.servicenow.rate_limit.per_minute": 1e9,
                            "incidents.servicenow.rate_limit.burst": 1e6})
        orch = Orchestrator(ctx, clock=clock)
        publish(ctx, *(make_signal(clock, key=f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}") for i in range(n)))
        orch.open()
        while orch._consumer.poll(0, 0.5) == [] and not orch._consumer.assignment():  # type: ignore[union-attr]
            pass
        t0 = time.perf_counter()
        while len(emu.incidents) < n:
            orch.step(0.05)
        rate = n / (time.perf_counter() - t0)
        with httpx.Client(auth=("vendwatch", "vendwatch")) as c:
            t0 = time.perf_counter()
            for i in range(n):
                c.post(f"{srv.url}/api/now/table/incident", json={"short_description": f"b{i}"})
            base = n / (time.perf_counter() - t0)
        return rate, base
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events for the pattern benchmark")
    ap.add_argument("--signals", type=int, default=20_000, help="signals for the orchestrator benchmark")
    ap.add_argument("--tickets", type=int, default=300, help="tickets for the delivery benchmark")
    a = ap.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()} python {platform.python_version()}"
          f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    p, pi, pb = bench_patterns(a.events)
    print(f"patterns (20 rules): indexed {pi:,.0f} events/s, one by one {p:,.0f} events/s;"
          f" hand-written predicates one by one {pb:,.0f} events/s; ratio indexed/hand-written {pi / pb:.2f}")
    o, ob = bench_orchestrator(a.signals)
    print(f"orchestrator: {o:,.0f} signals/s; no-op checkpointed stage {ob:,.0f} records/s; ratio {o / ob:.2f}")
    dl, dlb = bench_delivery(a.tickets)
    print(f"ServiceNow delivery: {dl:,.0f} tickets/s (lookup+create+record); bare POST {dlb:,.0f}/s;"
          f" ratio {dl / dlb:.2f}")


if __name__ == "__main__":
    main()
