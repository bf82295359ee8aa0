"""Acceptance: a simulated fleet with injected discrepancies raises exactly those findings,
and the food-safety report lists exactly the injected cooling episodes."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from tests.lake.conftest import drain, make_settings
from tests.lake.factory import publish

from vendwatch import events as ev
from vendwatch.bus import EVENTS, REJECTED
from vendwatch.dex.intake import judge, remember
from vendwatch.dex.store import DexStore
from vendwatch.ingest.sink import open_sink
from vendwatch.lake.dex_reports import Window, findings, run_dex_report
from vendwatch.lake.jobs import LakeJobs, read_status
from vendwatch.lake.query import LakeSQL
from vendwatch.runtime import Context
from vendwatch.simulate.audit import DexInjection
from vendwatch.simulate.faults import FaultPlan, ScheduledFault
from vendwatch.simulate.fleet import Fleet

START = datetime(2026, 1, 5, tzinfo=UTC)  # fixed: the simulated fleet is the same every run
INJECT = ["missing_telemetry@VM-00001#2=6", "skimmed_cash@VM-00001#4=1500", "bad_crc@VM-00001#5",
          "counter_reset@VM-00002#1", "skimmed_cash@VM-00004#1=900"]


def _fleet_in_the_lake(tmp_path: Path, **overrides: object) -> tuple[Context, Fleet, list[ScheduledFault]]:
    """Five days of a 4-machine fleet with the injected discrepancies, its audit files taken
    in as the collector does, everything committed to the lake's raw tables."""
    start = START
    probe = Fleet(seed=3, n_devices=4, start=start)
    fridges = [p.device_id for p in probe.profiles if p.refrigerated]
    assert fridges, "the fleet needs a refrigerated machine"
    cooling = [ScheduledFault("cooling_failure", fridges[0], 30 * 3600, 2 * 3600),
               ScheduledFault("cooling_failure", fridges[-1], 80 * 3600, 3 * 3600)]
    plan = FaultPlan(scheduled=cooling, dex=[DexInjection.parse(s) for s in INJECT])
    fleet = Fleet(seed=3, n_devices=4, start=start, faults=plan)
    events = fleet.run_for(5 * 86400)
    files = fleet.audit_files()

    ctx = Context(make_settings(tmp_path / "data", **{"ingest.max_age_days": 36500, **overrides}))
    for t in (EVENTS, REJECTED):
        ctx.log.create_topic(t)
    for did in fleet.device_ids:
        ctx.state.add_device(did, fleet.site_of(did))
    publish(ctx.log, fleet.stored(events))
    store, sink = DexStore(ctx.state.db), open_sink(ctx.log, ctx.settings)
    for did, _, raw in files:
        device = ctx.state.get_device(did)
        assert device is not None
        j = judge(raw, device, ctx.settings.ingest, store, ev.utcnow())
        sink.commit(j.accepted, j.quarantine)
        remember(j, device, store)
    drain(ctx)
    return ctx, fleet, cooling


def _dex_findings_in_log(ctx: Context) -> list[str]:
    out = []
    for p in range(ctx.log.partitions(EVENTS)):
        for r in ctx.log.read(EVENTS, p, 0, 1_000_000):
            e = ev.decode_stored(r.value)
            if e.type == "dex_finding":
                out.append(msgspec.json.decode(e.data)["kind"])
    return sorted(out)


def test_injected_discrepancies_and_cooling_episodes_are_found_exactly(tmp_path: Path) -> None:
    start = START
    ctx, fleet, cooling = _fleet_in_the_lake(tmp_path)
    sql = LakeSQL(ctx.settings)

    found = sorted((f.kind, f.device_id, f.slot, f.expected - f.actual) for f in findings(sql, Window()))
    assert found == [("cash_shortfall", "VM-00001", None, 1500), ("cash_shortfall", "VM-00004", None, 900),
                     ("sales_exceed_telemetry", "VM-00001", "A1", 6)]
    dex_files = run_dex_report(ctx.settings, "dex-files").rows()
    assert [(f["device_id"], f["verdict"]) for f in dex_files if f["verdict"] != "accepted"] == [("VM-00001", "refused")]
    resets = [(f["device_id"], f["findings"]) for f in dex_files if f["findings"] not in (None, "first_read")]
    # the read after the refused file knows one read never arrived
    assert sorted(resets) == [("VM-00001", "missed_reads"), ("VM-00002", "counter_reset")]

    episodes = run_dex_report(ctx.settings, "food-safety").rows()
    assert [e["device_id"] for e in episodes] == sorted(c.device_id for c in cooling)
    for e, c in zip(episodes, sorted(cooling, key=lambda c: c.device_id), strict=True):
        injected_at = start + timedelta(seconds=c.start_s)
        assert injected_at <= e["start"] <= injected_at + timedelta(minutes=30)
        assert e["door"] == "closed" and e["duration_min"] >= 100
    assert _dex_findings_in_log(ctx) == []  # nothing appended yet: findings become events only when published
    ctx.close()


def _reconcile_until(ctx: Context, now: datetime, runs: int) -> None:
    """Run the lake-jobs role with its clock at ``now`` until the reconciliation ran ``runs`` times."""
    shift = time.time() - now.timestamp()
    jobs = LakeJobs(ctx, clock=lambda: time.time() - shift)
    stop = threading.Event()
    t = threading.Thread(target=jobs.run, args=(stop,), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while not ("reconcile" in read_status(ctx) and read_status(ctx)["reconcile"].runs >= runs):
            assert time.monotonic() < deadline, read_status(ctx)
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(60)


def test_serve_reconciles_on_its_own_and_each_finding_is_appended_once(tmp_path: Path) -> None:
    """Nobody has to remember `vendwatch dex reconcile`: the lake-jobs role runs it at
    lake.dex_reconcile_interval_s over the last lake.dex_reconcile_days, and a finding
    seen again by the next run is not appended again."""
    ctx, _, _ = _fleet_in_the_lake(tmp_path, **{"lake.etl_interval_s": 0, "lake.maintain_interval_s": 0,
                                                "lake.dex_reconcile_interval_s": 0.3, "lake.dex_reconcile_days": 7})
    _reconcile_until(ctx, START + timedelta(days=6), runs=3)  # "now" is the day after the fleet's five
    st = read_status(ctx)["reconcile"]
    assert st.last_error is None and st.failures == 0, st
    assert _dex_findings_in_log(ctx) == ["cash_shortfall", "cash_shortfall", "sales_exceed_telemetry"]
    ctx.close()


def test_scheduled_reconciliation_looks_only_at_recent_reads(tmp_path: Path) -> None:
    """Reads older than lake.dex_reconcile_days were compared by earlier runs: a run a
    month after the fleet's reads finds nothing (and does not scan the whole lake)."""
    ctx, _, _ = _fleet_in_the_lake(tmp_path, **{"lake.etl_interval_s": 0, "lake.maintain_interval_s": 0,
                                                "lake.dex_reconcile_interval_s": 0.3, "lake.dex_reconcile_days": 7})
    _reconcile_until(ctx, START + timedelta(days=40), runs=1)
    assert read_status(ctx)["reconcile"].last_error is None
    assert _dex_findings_in_log(ctx) == []
    ctx.close()
