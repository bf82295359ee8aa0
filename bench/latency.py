"""Timeliness benchmark: how soon after the fact each hop acts, embedded, under load.

    PYTHONPATH=src python bench/latency.py [--devices 5000] [--rate 10000] [--silent 1000] [--json FILE]
        [--kafka 127.0.0.1:9092 --postgres postgresql://...]

One process, as ``vendwatch serve`` runs them: the detector and the incident
orchestrator on a SQLite log and state store, and the ServiceNow emulator over real
HTTP. A load generator stands in for the collector: it appends ``--rate`` events/s of
a fleet of ``--devices`` machines (heartbeat every ``--heartbeat-s``, registered, so
offline = 3 missed heartbeats; filler telemetry makes up the rate) with
``occurred_at`` = now. Measured, in wall time:

* offline detection: ``--silent`` machines fall silent at random instants; for each,
  the offline signal's emission, its incident's opening and its ticket's creation
  (after the grouping delay, ``incidents.group_wait_s``) minus its deadline (last
  event + 3 × heartbeat interval);
* timer rule: ``--warm`` machines report a refrigeration temperature above 5 °C whose
  first reading is dated so that 15 minutes above the threshold end during the run
  (``food_safety_temperature``); emission minus that instant;
* event → signal → incident → ticket: a motor jam raised on a random machine every
  ``--jam-every`` seconds; from the append of the event to the signal's emission, the
  incident's opening and the ServiceNow ticket's creation (the emulator's clock).

With ``--kafka`` and ``--postgres`` the same process runs on the scale-out backends
(the log on Kafka, the state store on PostgreSQL, one detector and one orchestrator).

The machine may be shared: report ``uptime`` with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.bus.base import BUSINESS, EVENTS, SIGNALS
from vendwatch.config import load_settings
from vendwatch.emulators.servicenow import ServiceNowEmulator
from vendwatch.incidents.servicenow.mapping import correlation_id
from vendwatch.runtime import Context, Supervisor, build_components
from vendwatch.signals import decode_signal

SLICE_S = 0.05  # the generator appends one batch per slice


def _pct(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)

    return {"n": len(s), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(s[-1], 3)}


def _event(eid: str, device: str, site: str, etype: str, t: float, data: dict[str, Any]) -> bytes:
    at = datetime.fromtimestamp(t, UTC)
    return ev.encode(ev.StoredEvent(event_id=eid, device_id=device, type=etype, occurred_at=at, received_at=at,
                                    data=msgspec.Raw(msgspec.json.encode(data)), site_id=site))


class Load:
    """The fleet: who sends what when, and the facts the measurements need."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        rnd = self.rnd = random.Random(args.seed)
        self.devices = [f"VM-{i:06d}" for i in range(args.devices)]
        self.site = {d: f"S{i // 20:05d}" for i, d in enumerate(self.devices)}
        self.warm = [f"FS-{i:04d}" for i in range(args.warm)]
        for d in self.warm:
            self.site[d] = "S-FS"
        self.silent = rnd.sample(self.devices, args.silent)
        self.talkers = [d for d in self.devices if d not in set(self.silent)]  # filler keeps the rate
        self.jam_pool = list(self.talkers)
        rnd.shuffle(self.jam_pool)

    def schedule(self, start: float) -> None:
        a, rnd = self.a, self.rnd
        self.start = start
        self.next_hb = {d: start + rnd.random() * a.heartbeat_s for d in self.devices}
        self.silence_at = {d: start + a.warmup + rnd.random() * a.spread for d in self.silent}
        self.last: dict[str, float] = {}
        # the first warm reading is dated so that 15 minutes above 5 °C end within the run
        self.warm_deadline = {d: start + a.warmup + rnd.random() * a.spread for d in self.warm}
        self.warm_next: dict[str, float] = {}
        self.jams: dict[str, tuple[str, float]] = {}  # event id -> (device, appended at)
        self.next_jam = start + a.warmup
        self.n = 0

    def alive(self, d: str, now: float) -> bool:
        return now < self.silence_at.get(d, float("inf"))

    def batch(self, now: float) -> list[tuple[str, bytes]]:
        a = self.a
        out: list[tuple[str, bytes]] = []
        for d in self.devices:  # heartbeats
            if self.next_hb[d] <= now:
                self.next_hb[d] += a.heartbeat_s
                if self.alive(d, now):
                    out.append((d, _event(f"{d}-hb-{now:.3f}", d, self.site[d], "heartbeat",
                                          now, {"interval_s": a.heartbeat_s})))
                    self.last[d] = now
        for d in self.warm:  # warm machines: a reading every heartbeat interval
            if self.warm_next.get(d, 0.0) <= now:
                t = now if d in self.warm_next else self.warm_deadline[d] - 900
                self.warm_next[d] = now + a.heartbeat_s
                out.append((d, _event(f"{d}-t-{t:.3f}", d, self.site[d], "telemetry", t,
                                      {"refrigeration_temp_c": 8.0, "door_open": False})))
        if self.next_jam <= now < self.start + a.warmup + a.spread and self.jam_pool:
            self.next_jam += a.jam_every
            d = self.jam_pool.pop()
            eid = f"{d}-jam-{now:.3f}"
            out.append((d, _event(eid, d, self.site[d], "fault", now, {"code": "motor_jam", "state": "raised"})))
            self.jams[eid] = (d, now)
        for _ in range(max(0, int(a.rate * SLICE_S) - len(out))):
            d = self.talkers[self.rnd.randrange(len(self.talkers))]
            out.append((d, _event(f"{d}-x-{self.n}", d, self.site[d], "telemetry", now,
                                  {"cabinet_temp_c": 24.0, "refrigeration_temp_c": 4.0, "door_open": False,
                                   "voltage_v": 230.0, "cpu_pct": 20.0})))
            self.last[d] = now
            self.n += 1
        return out


def _scaleout(kafka: str, postgres: str) -> dict[str, Any]:
    """Kafka topics and a PostgreSQL schema of this run's own."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when loaded by path
    from scaleout import run_schema

    run, dsn = run_schema(postgres, "latency", kafka)
    return {"bus.backend": "kafka", "bus.kafka.bootstrap_servers": kafka, "bus.kafka.topic_prefix": f"{run}.",
            "bus.kafka.partitions": 4, "state.backend": "postgres",
            "state.postgres_dsn": dsn}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=5000)
    p.add_argument("--rate", type=float, default=10_000, help="events/s appended")
    p.add_argument("--silent", type=int, default=1000, help="machines that fall silent")
    p.add_argument("--warm", type=int, default=50, help="machines whose food-safety timer runs out during the run")
    p.add_argument("--heartbeat-s", type=int, default=10)
    p.add_argument("--jam-every", type=float, default=0.5, help="seconds between motor jams (ticket chain)")
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--spread", type=float, default=60.0, help="silences and timer deadlines fall in this window")
    p.add_argument("--sn-per-minute", type=float, default=600.0, help="ServiceNow rate limit (calls a minute)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--kafka", help="Kafka bootstrap servers: the log on Kafka and the state on --postgres")
    p.add_argument("--postgres", help="PostgreSQL DSN (with --kafka)")
    a = p.parse_args()
    if bool(a.kafka) != bool(a.postgres):
        p.error("--kafka and --postgres go together")

    tmp = tempfile.mkdtemp(prefix="vw-latency-")
    tickets: dict[str, float] = {}
    emu = ServiceNowEmulator(on_create=lambda rec: tickets.setdefault(rec["correlation_id"], time.time()))
    srv = emu.serve()
    ctx = Context(load_settings(None, {
        "data_dir": tmp, "bus.partitions": 4, "detect.clock": "wall",
        "incidents.servicenow.url": srv.url, "incidents.servicenow.username": emu.username,
        "incidents.servicenow.password": emu.password, "incidents.servicenow.cmdb_lookup": False,
        # two calls per new ticket (look-up by correlation_id, create): the default 120 calls
        # a minute would cap the chain at one ticket a second
        "incidents.servicenow.rate_limit.per_minute": a.sn_per_minute, "incidents.servicenow.rate_limit.burst": 20,
        **(_scaleout(a.kafka, a.postgres) if a.kafka else {}),
    }, environ={}))
    for topic in (EVENTS, SIGNALS, BUSINESS):
        ctx.log.create_topic(topic)
    load = Load(a)
    with ctx.state.db.transaction() as tx:
        for d in [*load.devices, *load.warm]:
            ctx.state.add_device(d, load.site[d], heartbeat_interval_s=a.heartbeat_s, tx=tx)
    sup = Supervisor(ctx, build_components(ctx, ["detector", "orchestrator"]))
    sup.start()
    start = time.time()
    load.schedule(start)
    # the last silence's offline ticket waits incidents.group_wait_s (60 s) after its deadline
    end = start + a.warmup + a.spread + 3 * a.heartbeat_s + 75
    appended, behind = 0, 0.0
    while (now := time.time()) < end:
        recs = load.batch(now)
        if recs:
            ctx.log.append(EVENTS, recs)
            appended += len(recs)
        slack = SLICE_S - (time.time() - now)
        if slack > 0:
            time.sleep(slack)
        else:
            behind += -slack
    time.sleep(5)  # last signals and tickets
    sup.stop()

    sigs = []
    for part, e in ctx.log.end_offsets(SIGNALS).items():
        off = 0
        while off < e:
            recs = ctx.log.read(SIGNALS, part, off, 5000)
            if not recs:
                break
            sigs += [decode_signal(r.value) for r in recs]
            off = recs[-1].offset + 1
    opened = {k: float(t) for k, t in ctx.state.db.query("SELECT dedupe_key, MIN(opened_at) FROM incidents"
                                                         " GROUP BY dedupe_key")}
    # a ticket carries its incident's correlation id, not the dedupe key: map it back
    by_correlation = {correlation_id(i): k for i, k in ctx.state.db.query("SELECT incident_id, dedupe_key FROM incidents")}
    ticketed: dict[str, float] = {}
    for cid, t in tickets.items():
        if cid in by_correlation:
            ticketed[by_correlation[cid]] = min(t, ticketed.get(by_correlation[cid], t))
    tickets = ticketed
    fired = {s.dedupe_key: s for s in sigs if s.status == "firing"}
    off_sig, off_inc, off_tic, missed = [], [], [], 0
    for d, at in load.silence_at.items():
        deadline = load.last.get(d, at) + 3 * a.heartbeat_s
        s = fired.get(f"offline/{d}")
        if s is None or abs(s.occurred_at.timestamp() - deadline) > 0.002:
            missed += 1
            continue
        off_sig.append(s.emitted_at.timestamp() - deadline)
        if f"offline/{d}" in opened:
            off_inc.append(opened[f"offline/{d}"] - deadline)
        if f"offline/{d}" in tickets:
            off_tic.append(tickets[f"offline/{d}"] - deadline)
    warm = [fired[f"food_safety_temperature/{d}"].emitted_at.timestamp() - dl
            for d, dl in load.warm_deadline.items() if f"food_safety_temperature/{d}" in fired]
    by_event = {eid: s for s in sigs if s.rule_id == "motor_jam" for eid in s.event_ids}
    j_sig, j_inc, j_tic = [], [], []
    for eid, (_d, t) in load.jams.items():
        s = by_event.get(eid)
        if s is None:
            continue
        j_sig.append(s.emitted_at.timestamp() - t)
        if s.dedupe_key in opened:
            j_inc.append(opened[s.dedupe_key] - t)
        if s.dedupe_key in tickets:
            j_tic.append(tickets[s.dedupe_key] - t)
    out = {
        "load": {"devices": a.devices, "rate_target": a.rate, "appended": appended,
                 "rate_achieved": round(appended / (end - start)), "generator_behind_s": round(behind, 2),
                 "heartbeat_s": a.heartbeat_s, "loadavg": os.getloadavg()},
        "offline_signal_after_deadline_s": _pct(off_sig),
        "offline_incident_after_deadline_s": _pct(off_inc),
        "offline_ticket_after_deadline_s": _pct(off_tic),  # includes incidents.group_wait_s
        "offline_missed": missed,
        "food_safety_signal_after_deadline_s": _pct(warm),
        "jam_event_to_signal_s": _pct(j_sig),
        "jam_event_to_incident_s": _pct(j_inc),
        "jam_event_to_ticket_s": _pct(j_tic),
        "jams": len(load.jams),
        "tickets": len(tickets),
    }
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    ctx.close()
    srv.stop()


if __name__ == "__main__":
    main()
