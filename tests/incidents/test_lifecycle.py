"""Incident lifecycle in virtual time, through the service and a real SQLite state store."""

from __future__ import annotations

from pathlib import Path

import pytest
from incident_helpers import context, make_signal

from vendwatch.delivery.clock import VirtualClock
from vendwatch.incidents.service import IncidentService


@pytest.fixture
def env(tmp_path: Path) -> tuple[IncidentService, VirtualClock]:
    clock = VirtualClock()
    ctx = context(tmp_path, **{"incidents.flap_damping_s": 120, "incidents.reopen_window_s": 600})
    return IncidentService(ctx.state, ctx.settings.incidents, clock), clock


def fire(svc: IncidentService, clock: VirtualClock, **kw: object):  # type: ignore[no-untyped-def]
    with svc.store.db.transaction() as tx:
        return svc.handle_signal(tx, make_signal(clock, **kw))  # type: ignore[arg-type]


def test_one_open_incident_per_key_and_updates(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock)
    for i in range(1, 5):
        clock.advance(5)
        fire(svc, clock, seq=i)
    rows = svc.store.list()
    assert len(rows) == 1
    inc = rows[0]
    assert inc.occurrences == 5 and inc.status == "open"
    assert inc.last_seen_at == clock.now()
    timeline = svc.store.timeline(inc.incident_id)
    assert [e["kind"] for e in timeline] == ["opened", "updated"]  # a run of re-fires is one entry
    assert timeline[1]["detail"] == {"occurrences": 5, "repeats": 4, "last_at": clock.now()}
    assert all(e["actor"] == "detector:offline" for e in timeline)


def test_replayed_signal_is_applied_once(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    sig = make_signal(clock)
    for _ in range(3):
        with svc.store.db.transaction() as tx:
            svc.handle_signal(tx, sig)
    assert svc.store.list()[0].occurrences == 1


def test_severity_change_is_recorded_and_becomes_a_note(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock, severity="minor")
    clock.advance(10)
    fire(svc, clock, severity="critical", seq=1)
    inc = svc.store.list()[0]
    assert inc.severity == "critical"
    hist = svc.store.severity_history(inc.incident_id)
    assert [(h["from"], h["to"]) for h in hist] == [(None, "minor"), ("minor", "critical")]
    with svc.store.db.transaction() as tx:
        notes = svc.store.pending_notes(tx, inc.incident_id)
    assert len(notes) == 1 and "minor to critical" in notes[0][1]


def test_resolve_waits_for_flap_damping_and_refire_cancels(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock)
    clock.advance(30)
    fire(svc, clock, status="resolved")
    clock.advance(119)
    assert svc.tick() == 0
    assert svc.store.list()[0].status == "open"
    fire(svc, clock, seq=1)  # flapped back within the damping delay
    clock.advance(500)
    assert svc.tick() == 0
    assert svc.store.list()[0].status == "open"
    fire(svc, clock, status="resolved", seq=2)
    clock.advance(120)
    assert svc.tick() == 1
    inc = svc.store.list()[0]
    assert inc.status == "resolved" and inc.resolved_by == "timer:flap-damping"
    kinds = [e["kind"] for e in svc.store.timeline(inc.incident_id)]
    assert kinds == ["opened", "resolve_scheduled", "resolve_cancelled", "updated", "resolve_scheduled", "resolved"]


def test_refire_within_window_reopens_after_window_opens_new(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock)
    fire(svc, clock, status="resolved")
    clock.advance(120)
    svc.tick()
    clock.advance(600)  # exactly at the window's end: still a reopen
    fire(svc, clock, seq=1)
    rows = svc.store.list()
    assert len(rows) == 1 and rows[0].status == "open" and rows[0].reopen_count == 1
    fire(svc, clock, status="resolved", seq=2)
    clock.advance(120)
    svc.tick()
    clock.advance(601)
    fire(svc, clock, seq=3)
    rows = svc.store.list()
    assert len(rows) == 2
    assert sorted(r.status for r in rows) == ["open", "resolved"]


def test_site_incident_absorbs_device_incidents_it_caused(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock, key="offline/VM-0001", device_id="VM-0001")  # opened before the site cause was known
    site_key = "site-down/SITE-1"
    fire(svc, clock, key=site_key, rule_id="site-down", scope="site", device_id=None, severity="critical")
    fire(svc, clock, key="offline/VM-0001", device_id="VM-0001", caused_by=site_key, seq=1)
    fire(svc, clock, key="offline/VM-0002", device_id="VM-0002", caused_by=site_key)
    site = svc.store.list(dedupe_key=site_key)[0]
    dev1 = svc.store.list(dedupe_key="offline/VM-0001")[0]
    assert dev1.status == "absorbed" and dev1.parent_id == site.incident_id
    assert svc.store.list(dedupe_key="offline/VM-0002") == []  # never opened
    children = [e["detail"]["dedupe_key"] for e in svc.store.timeline(site.incident_id) if e["kind"] == "absorbed_child"]
    assert children == ["offline/VM-0001", "offline/VM-0002"]


def test_caused_by_an_inactive_site_incident_opens_normally(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock, key="offline/VM-0003", device_id="VM-0003", caused_by="site-down/SITE-9")
    assert svc.store.list(dedupe_key="offline/VM-0003")[0].status == "open"


@pytest.mark.parametrize("matcher", [{"device_id": "VM-0001"}, {"site_id": "SITE-1"}, {"rule_id": "offline"},
                                     {"site_id": "SITE-1", "rule_id": "offline"}])
def test_silence_suppresses_creation_until_it_expires(env: tuple[IncidentService, VirtualClock],
                                                      matcher: dict[str, str]) -> None:
    svc, clock = env
    svc.store.add_silence(**{"device_id": None, "site_id": None, "rule_id": None, **matcher},  # type: ignore[arg-type]
                          expires_at=clock.now() + 3600, created_by="test", reason="maintenance", now=clock.now())
    d = fire(svc, clock)
    assert d.suppressed_by and svc.store.list() == []
    assert svc.store.list_silences(clock.now())[0]["suppressed"] == 1
    clock.advance(3600)
    fire(svc, clock, seq=1)
    assert len(svc.store.list()) == 1


def test_silence_for_another_device_does_not_apply(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    svc.store.add_silence(device_id="VM-0009", site_id=None, rule_id="offline", expires_at=clock.now() + 60,
                          created_by="test", reason="", now=clock.now())
    fire(svc, clock)
    assert len(svc.store.list()) == 1


def test_business_signals_never_open_incidents(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    d = fire(svc, clock, key="low-stock/VM-0001/A1", rule_id="low-stock", kind="business")
    assert d.ignored and svc.store.list() == []


def test_operator_ack_and_resolve_are_recorded_with_actor(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    fire(svc, clock)
    iid = svc.store.list()[0].incident_id
    svc.acknowledge(iid, "operator:alice")
    assert svc.acknowledge(iid, "operator:alice").ignored  # already acknowledged
    svc.resolve(iid, "operator:bob", "replaced router")
    inc = svc.store.get(iid)
    assert inc is not None and inc.status == "resolved" and inc.acknowledged_by == "operator:alice"
    actors = [(e["kind"], e["actor"]) for e in svc.store.timeline(iid)]
    assert actors[-2:] == [("acknowledged", "operator:alice"), ("resolved", "operator:bob")]


def test_resolved_signal_without_incident_is_ignored(env: tuple[IncidentService, VirtualClock]) -> None:
    svc, clock = env
    assert fire(svc, clock, status="resolved").ignored
    assert svc.store.list() == []


def test_site_incident_absorbs_children_that_arrived_first(env: tuple[IncidentService, VirtualClock]) -> None:
    """The device signal (with caused_by) lands before the site signal: different keys, different partitions."""
    svc, clock = env
    site_key = "site-down/SITE-1"
    fire(svc, clock, key="offline/VM-0001", device_id="VM-0001", caused_by=site_key)
    fire(svc, clock, key="offline/VM-0002", device_id="VM-0002", caused_by=site_key)
    fire(svc, clock, key="offline/VM-0003", device_id="VM-0003")  # not caused by the site
    assert len(svc.store.list(status="active")) == 3
    fire(svc, clock, key=site_key, rule_id="site-down", scope="site", device_id=None, severity="critical")
    site = svc.store.list(dedupe_key=site_key)[0]
    statuses = {i.dedupe_key: (i.status, i.parent_id) for i in svc.store.list()}
    assert statuses["offline/VM-0001"] == ("absorbed", site.incident_id)
    assert statuses["offline/VM-0002"] == ("absorbed", site.incident_id)
    assert statuses["offline/VM-0003"] == ("open", None)
    # the device's own resolved signal later changes nothing
    fire(svc, clock, key="offline/VM-0001", device_id="VM-0001", status="resolved", caused_by=site_key)
    assert svc.store.list(dedupe_key="offline/VM-0001")[0].status == "absorbed"


def test_pruning_the_replay_guard_does_not_scan_every_signal_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vendwatch.config import Settings
    from vendwatch.incidents.store import IncidentStore
    from vendwatch.state import open_state

    st = open_state(Settings(data_dir=str(tmp_path)))
    IncidentStore(st)
    plan = " ".join(str(r) for r in st.db.query("EXPLAIN QUERY PLAN DELETE FROM incident_seen_signals WHERE at<?", (0.0,)))
    assert "incident_seen_signals_at" in plan, plan
    st.close()


def _plans_of(st, run) -> list[str]:  # type: ignore[no-untyped-def]
    """The query plans of the SELECTs ``run`` sends to the state store (SQLite)."""
    from vendwatch.state.db import SqliteDatabase

    assert isinstance(st.db, SqliteDatabase)
    seen: list[str] = []
    conn = st.db._conn()
    conn.set_trace_callback(seen.append)
    try:
        run()
    finally:
        conn.set_trace_callback(None)
    plans = []
    for sql in seen:
        if sql.lstrip().upper().startswith("SELECT") and ("FROM incidents" in sql or "FROM incident_timeline" in sql):
            plans.append(" ".join(str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql)))
    return plans


def test_timer_and_reopen_lookups_do_not_scan_every_closed_incident(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The flap-damping timer (every tick) and the reopen lookup (every opening signal) used the
    status index, so each read every resolved incident ever kept; they use their own indexes,
    and so do a batch's bulk reads (active incidents of its keys, their last timeline entries)."""
    from vendwatch.config import Settings
    from vendwatch.incidents.store import IncidentStore
    from vendwatch.state import open_state

    st = open_state(Settings(data_dir=str(tmp_path)))
    store = IncidentStore(st)

    def run() -> None:
        with st.db.transaction() as tx:
            store.due_resolves(tx, 0.0)
            store.last_closed_for(tx, "offline/VM-0001")
            for n in (2, 50):  # the planner's choice changed with the length of the list
                keys = [f"offline/VM-{i:04d}" for i in range(n)]
                store.active_for_keys(tx, keys)
                store.last_entries(tx, [f"inc_{i}" for i in range(n)])
                store.last_closed_for_keys(tx, keys)

    plans = _plans_of(st, run)
    assert len(plans) == 8, plans
    assert all("incidents_status" not in p and "TEMP B-TREE FOR ORDER BY" not in p for p in plans), plans
    st.close()
