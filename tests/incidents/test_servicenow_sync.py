"""ServiceNow sync against the emulator of a base instance, over real HTTP, in virtual time.

Each test names the defect it pins down (issue "ServiceNow sync correct against a real
instance"): rate-limit stalls, encoded-query injection, tickets sent back to New, human
decisions overwritten, Resolved taken for closed, resolve notes lost, orphans after a
crash, text for a technician, reference fields and OAuth expiry.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from incident_helpers import context, make_signal, publish, tickets

from vendwatch.delivery.clock import VirtualClock
from vendwatch.delivery.outbox import Outbox
from vendwatch.emulators.servicenow import ServiceNowEmulator, parse_query
from vendwatch.incidents.role import Orchestrator
from vendwatch.incidents.servicenow.mapping import correlation_id
from vendwatch.runtime import Context


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def emulator(clock: VirtualClock) -> Iterator[tuple[ServiceNowEmulator, str]]:
    emu = ServiceNowEmulator(clock=clock.now)
    srv = emu.serve()
    yield emu, srv.url
    srv.stop()


def sn(url: str, **more: Any) -> dict[str, Any]:
    return {"incidents.servicenow.url": url, "incidents.servicenow.username": "vendwatch",
            "incidents.servicenow.password": "vendwatch", "incidents.servicenow.timeout_s": 5.0, **more}


def run_for(orch: Orchestrator, clock: VirtualClock, seconds: float, step_s: float = 1.0) -> None:
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(step_s)
        orch.step(0.0)


def max_in_window(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def api_calls(emu: ServiceNowEmulator) -> list[Any]:
    return [r for r in emu.faults.requests if r.path.startswith("/api/now")]


def lookups(emu: ServiceNowEmulator) -> list[Any]:
    return [r for r in api_calls(emu) if r.method == "GET" and "sysparm_query" in r.query]


def incident_id(ctx: Context, key: str) -> str:
    [(iid,)] = ctx.state.db.query("SELECT incident_id FROM incidents WHERE dedupe_key=? ORDER BY opened_at DESC"
                                  " LIMIT 1", (key,))
    return str(iid)


def devices(n: int) -> list[str]:
    return [f"VM-{i:04d}" for i in range(n)]


# -- 1. rate limit --------------------------------------------------------------------------
def test_documented_defaults_create_tickets_at_the_limit_divided_by_calls_per_ticket(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url))  # rate limit as documented: 120 calls/min, burst 10
    orch = Orchestrator(ctx, clock=clock)
    ids = devices(55)
    publish(ctx, *(make_signal(clock, key=f"offline/{d}", device_id=d) for d in ids))
    start = clock.now()
    run_for(orch, clock, 90)
    created = sorted(r.at for r in api_calls(emu) if r.method == "POST")
    assert len(created) == 55 and all(len(tickets(emu, ctx, f"offline/{d}")) == 1 for d in ids)
    # two calls per ticket (look up, create): 10 at once, then (120 - 10) per minute
    took = created[-1] - start
    assert took <= (55 * 2 - 10) / (110 / 60) + 10, f"55 tickets took {took:.0f}s"
    assert len(lookups(emu)) == 55  # every lookup sent once: a throttled sync resumes, it does not start over
    assert max_in_window([r.at for r in api_calls(emu)]) <= 120
    assert Outbox(ctx.state.db).depth() == {}


def _machines_offline(tmp_path: Path, url: str, clock: VirtualClock, n: int, *, per_minute: float,
                      burst: float) -> tuple[Context, Orchestrator]:
    ctx = context(tmp_path, **sn(url, **{"incidents.servicenow.rate_limit.per_minute": per_minute,
                                         "incidents.servicenow.rate_limit.burst": burst}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, *(make_signal(clock, key=f"offline/{d}", device_id=d) for d in devices(n)))
    return ctx, orch


def test_burst_of_one_still_creates_tickets(tmp_path: Path, clock: VirtualClock,
                                            emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx, orch = _machines_offline(tmp_path, url, clock, 5, per_minute=30, burst=1)
    run_for(orch, clock, 60)
    assert all(len(tickets(emu, ctx, f"offline/{d}")) == 1 for d in devices(5))
    assert max_in_window([r.at for r in api_calls(emu)]) <= 30


def test_a_state_change_waiting_for_a_token_does_not_read_the_ticket_again(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx, orch = _machines_offline(tmp_path, url, clock, 3, per_minute=12, burst=1)
    run_for(orch, clock, 120)
    for d in devices(3):
        orch.service.resolve(incident_id(ctx, f"offline/{d}"), "alice", "fixed")
    run_for(orch, clock, 120)
    assert all(tickets(emu, ctx, f"offline/{d}")[0]["state"] == "6" for d in devices(3))
    reads = [r for r in api_calls(emu) if r.method == "GET" and "sysparm_query" not in r.query]
    writes = [r for r in api_calls(emu) if r.method == "PATCH"]
    assert len(reads) == 3 and len(writes) == 3  # one read and one write per resolution, however long the wait


# -- 2. encoded-query injection -------------------------------------------------------------------
def test_query_syntax_in_a_dedupe_key_adopts_no_other_ticket(tmp_path: Path, clock: VirtualClock,
                                                             emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url))
    orch = Orchestrator(ctx, clock=clock)
    with emu._lock:  # somebody else's active ticket
        emu.incidents["f" * 32] = {**emu.incidents.get("f" * 32, {}), "sys_id": "f" * 32, "number": "INC0000042",
                                   "state": "2", "active": "true", "short_description": "printer on fire",
                                   "correlation_id": "", "correlation_display": "", "close_code": "",
                                   "close_notes": "", "sys_mod_count": "0", "sys_updated_on": "2026-01-01 00:00:00",
                                   "sys_created_on": "2026-01-01 00:00:00"}
    keys = ["sensor_malfunction/VM-0001/x^NQactive=true", "sensor_malfunction/VM-0001/coin_sensor",
            "sensor_malfunction/VM-0001/coin_sensor^"]
    for i, k in enumerate(keys):
        publish(ctx, make_signal(clock, key=k, rule_id="sensor_malfunction", seq=i))
        run_for(orch, clock, 5)
    foreign = emu.incidents["f" * 32]
    assert foreign["short_description"] == "printer on fire" and foreign["sys_mod_count"] == "0"
    numbers = [tickets(emu, ctx, k) for k in keys]
    assert all(len(t) == 1 for t in numbers)
    assert len({t[0]["number"] for t in numbers}) == 3  # coin_sensor^ did not take coin_sensor's ticket


# no NUL: the collector and the registry refuse it (test_ingest_validate, test_registry)
_device_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
                       min_size=1, max_size=40)
# The examples share one data directory and a device of their own each: the PostgreSQL
# re-run keeps one schema per test, so the log and the orchestrator's checkpoints must
# carry on from one example to the next as the state does.
_example = itertools.count(1)
_shared: dict[str, Path] = {}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(component=_device_text, summary=_device_text, serial=_device_text, model=_device_text,
       location=_device_text, label=_device_text)
def test_device_text_never_reaches_a_query_as_syntax(tmp_path_factory: pytest.TempPathFactory, component: str,
                                                     summary: str, serial: str, model: str, location: str,
                                                     label: str) -> None:
    clock = VirtualClock()
    emu = ServiceNowEmulator(clock=clock.now)
    srv = emu.serve()
    if "data" not in _shared:
        _shared["data"] = tmp_path_factory.mktemp("prop")
    ctx = context(_shared["data"], **sn(srv.url))
    try:
        device = f"VM-P{next(_example):04d}"
        ctx.state.add_device(device, "SITE-1", serial=serial, model=model, location=location)
        orch = Orchestrator(ctx, clock=clock)
        key = f"sensor_malfunction/{device}/{component}"
        sig = make_signal(clock, key=key, rule_id="sensor_malfunction", summary=summary, device_id=device)
        sig.labels["component"] = label
        publish(ctx, sig)
        run_for(orch, clock, 3)
        iid = incident_id(ctx, key)
        for r in lookups(emu):
            q = parse_qs(r.query)["sysparm_query"][0]
            parsed = parse_query(q)
            # exactly the terms vendwatch meant: one query, one condition per clause, each "field=value"
            assert len(parsed.groups) == 1
            conds = [c for clause in parsed.groups[0] for c in clause]
            assert all(len(clause) == 1 for clause in parsed.groups[0])
            fields = {f: v for f, op, v in conds if op == "="}
            assert len(fields) == len(conds)
            if r.path.endswith("/incident"):
                assert fields == {"correlation_id": correlation_id(iid), "correlation_display": "vendwatch"}
            else:
                assert fields == {"serial_number": serial}  # only plain serials are looked up, whole
        assert len(tickets(emu, ctx, key)) == 1
    finally:
        srv.stop()
        ctx.close()


def test_long_dedupe_key_still_finds_its_ticket_after_a_lost_answer(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator  # correlation_id holds 100 characters on a base instance; longer values are cut
    ctx = context(tmp_path, **sn(url, **{"incidents.servicenow.timeout_s": 0.3}))
    orch = Orchestrator(ctx, clock=clock)
    release = threading.Event()
    emu.on_create = lambda rec: release.wait(1.0)  # stored, but the answer comes too late
    key = "sensor_malfunction/VM-0001/" + "bill_validator_stacker_" * 8
    publish(ctx, make_signal(clock, key=key, rule_id="sensor_malfunction"))
    run_for(orch, clock, 1)
    release.set()
    emu.on_create = None
    run_for(orch, clock, 60, step_s=5.0)
    assert len(emu.incidents) == 1  # the retry found it instead of opening a second one
    [t] = emu.incidents.values()
    assert len(t["correlation_id"]) <= 100 and ctx.state.db.query("SELECT ref_id FROM incident_refs") == [
        (t["sys_id"],)]


def test_device_text_cannot_become_markup_in_servicenow(tmp_path: Path, clock: VirtualClock,
                                                        emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.flap_damping_s": 0}))
    orch = Orchestrator(ctx, clock=clock)
    evil = "jam [code]<img src=x onerror=alert(1)>[/CODE]\x1b[31m"
    publish(ctx, make_signal(clock, summary=evil))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, summary=evil, severity="critical", seq=1))  # a work note quoting the summary
    run_for(orch, clock, 5)
    [t] = tickets(emu, ctx, "offline/VM-0001")
    texts = [t["short_description"], t["description"], *emu.notes(t["sys_id"])]
    assert all("[code]" not in x.lower() and "[/code]" not in x.lower() and "\x1b" not in x for x in texts)
    assert "<img src=x" in t["description"]  # kept as text, shown as text


# -- 3, 4, 5. states -----------------------------------------------------------------------------
def test_reopened_ticket_is_not_sent_back_to_new(tmp_path: Path, clock: VirtualClock,
                                                 emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.flap_damping_s": 0}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, status="resolved"))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, seq=1))  # reopen
    run_for(orch, clock, 5)
    assert tickets(emu, ctx, "offline/VM-0001")[0]["state"] == "2"
    publish(ctx, make_signal(clock, seq=2), make_signal(clock, severity="critical", seq=3))  # later updates
    run_for(orch, clock, 5)
    [t] = tickets(emu, ctx, "offline/VM-0001")
    assert t["state"] == "2" and t["urgency"] == "1"
    sent_states = [msgspec.json.decode(r.body).get("state") for r in api_calls(emu) if r.method == "PATCH"]
    assert "1" not in sent_states


@pytest.mark.parametrize("closed_state", ["7", "8"])
def test_ticket_closed_by_a_person_stays_closed(tmp_path: Path, clock: VirtualClock,
                                                emulator: tuple[ServiceNowEmulator, str], closed_state: str) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.flap_damping_s": 0}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    [t] = tickets(emu, ctx, "offline/VM-0001")
    emu.close_as_person(t["sys_id"], closed_state, close_notes="duplicate of a field visit, handled on site")
    iid = incident_id(ctx, "offline/VM-0001")
    orch.service.acknowledge(iid, "alice")
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, severity="critical", seq=1))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, status="resolved"))
    run_for(orch, clock, 5)
    old = emu.incidents[t["sys_id"]]
    assert old["state"] == closed_state and old["close_notes"] == "duplicate of a field visit, handled on site"
    assert [r for r in api_calls(emu) if r.status == 403] == []  # read first, never written to
    assert Outbox(ctx.state.db).dlq_list() == [] and Outbox(ctx.state.db).depth() == {}

    publish(ctx, make_signal(clock, seq=2))  # fires again after the close: a new ticket naming the old one
    run_for(orch, clock, 5)
    found = tickets(emu, ctx, "offline/VM-0001")
    assert len(found) == 2 and emu.incidents[t["sys_id"]]["state"] == closed_state
    assert t["number"] in found[1]["description"] and found[1]["state"] in ("1", "2")
    assert len({f["correlation_id"] for f in found}) == 2


def test_a_new_incident_never_adopts_an_old_resolved_ticket(tmp_path: Path, clock: VirtualClock,
                                                            emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.flap_damping_s": 0, "incidents.reopen_window_s": 60}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, status="resolved"))
    run_for(orch, clock, 5)
    [old] = tickets(emu, ctx, "offline/VM-0001")
    assert old["state"] == "6" and old["active"] == "true"  # a base instance keeps Resolved active
    run_for(orch, clock, 120)  # past the reopen window: the next firing is a new incident
    publish(ctx, make_signal(clock, seq=1))
    run_for(orch, clock, 5)
    found = tickets(emu, ctx, "offline/VM-0001")
    assert len(found) == 2 and emu.incidents[old["sys_id"]]["state"] == "6"
    assert found[1]["state"] == "1"


# -- 6. resolve note --------------------------------------------------------------------------------
def test_operator_resolve_note_becomes_the_close_notes(tmp_path: Path, clock: VirtualClock,
                                                       emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    orch.service.resolve(incident_id(ctx, "offline/VM-0001"), "alice", "replaced coin sensor")
    run_for(orch, clock, 5)
    [t] = tickets(emu, ctx, "offline/VM-0001")
    assert t["state"] == "6" and "replaced coin sensor" in t["close_notes"] and t["close_code"]


# -- 8. orphans ---------------------------------------------------------------------------------------
def test_ticket_created_before_a_lost_answer_is_resolved_when_the_incident_is_absorbed(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.servicenow.timeout_s": 0.3}))
    orch = Orchestrator(ctx, clock=clock)
    release = threading.Event()
    emu.on_create = lambda rec: release.wait(1.0)  # ServiceNow stored it; the answer never arrives in time
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 1)
    assert len(emu.incidents) == 1 and ctx.state.db.query("SELECT * FROM incident_refs") == []
    release.set()
    emu.on_create = None
    site = "site-down/SITE-1"  # before the retry, a site incident absorbs the device incident
    publish(ctx, make_signal(clock, key=site, rule_id="site-down", scope="site", device_id=None,
                             severity="critical"))
    publish(ctx, make_signal(clock, caused_by=site, seq=1))
    run_for(orch, clock, 120, step_s=5.0)
    [dev] = tickets(emu, ctx, "offline/VM-0001")
    [site_ticket] = tickets(emu, ctx, site)
    assert dev["state"] == "6" and site_ticket["number"] in dev["close_notes"]
    assert "inc_" not in dev["close_notes"]
    assert len(emu.incidents) == 2


# -- 9. text for a technician ---------------------------------------------------------------------------
def test_description_and_notes_speak_to_a_technician(tmp_path: Path, clock: VirtualClock,
                                                     emulator: tuple[ServiceNowEmulator, str]) -> None:
    from vendwatch.incidents.api import detail_doc

    emu, url = emulator
    ctx = context(tmp_path, **sn(url))
    ctx.state.add_device("VM-0001", "SITE-1", serial="SER-0001", model="Vendo 721", location="Hall B, level 2")
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    site = "site-down/SITE-1"
    publish(ctx, make_signal(clock, key=site, rule_id="site-down", scope="site", device_id=None))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, caused_by=site, seq=1))
    run_for(orch, clock, 5)
    [t] = tickets(emu, ctx, "offline/VM-0001")
    for text in ("Hall B, level 2", "Vendo 721", "SER-0001", "SITE-1"):
        assert text in t["description"]
    assert "first seen" not in t["description"]  # times say which clock they come from
    notes = emu.notes(t["sys_id"])
    [site_ticket] = tickets(emu, ctx, site)
    assert any(site_ticket["number"] in n for n in notes) and not any("inc_" in n for n in notes)
    inc = orch.service.store.get(incident_id(ctx, "offline/VM-0001"))
    assert inc is not None
    [ref] = detail_doc(orch.service, inc)["external_refs"]
    assert ref["state"] == "6" and ref["state_name"] == "Resolved"


# -- 10. references and OAuth -----------------------------------------------------------------------------
def test_reference_fields_carry_sys_ids(tmp_path: Path, clock: VirtualClock,
                                        emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    group = emu.add_group("Vending Field Service")
    caller = emu.add_user("vendwatch.integration")
    ctx = context(tmp_path, **sn(url, **{"incidents.servicenow.default_assignment_group": "Vending Field Service",
                                         "incidents.servicenow.caller_id": "vendwatch.integration"}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, *(make_signal(clock, key=f"offline/{d}", device_id=d) for d in devices(3)))
    run_for(orch, clock, 10)
    for d in devices(3):
        [t] = tickets(emu, ctx, f"offline/{d}")
        assert t["assignment_group"] == group and t["caller_id"] == caller
    group_lookups = [r for r in lookups(emu) if r.path.endswith("/sys_user_group")]
    assert len(group_lookups) == 1  # resolved once, then cached


def test_query_syntax_in_settings_names_is_refused() -> None:
    from vendwatch.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="default_assignment_group"):
        load_settings(None, {"incidents.servicenow.default_assignment_group": "x^NQactive=true"}, environ={})


def test_timeouts_are_retried(tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    from vendwatch.delivery import metrics

    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.servicenow.timeout_s": 0.2}))
    orch = Orchestrator(ctx, clock=clock)
    retries_before = metrics.RETRIES.labels("servicenow")._value.get()
    emu.inject(status=200, delay_s=0.5, count=1, method="GET")  # the first call hangs past the client timeout
    publish(ctx, make_signal(clock))
    orch.step(0.0)
    [pending] = Outbox(ctx.state.db).pending()
    assert pending["attempts"] == 1 and "Timeout" in pending["last_error"]  # counted as a failed attempt ...
    run_for(orch, clock, 60, step_s=5.0)
    assert metrics.RETRIES.labels("servicenow")._value.get() == retries_before + 1  # ... and tried again
    assert [r.status for r in lookups(emu) if r.path.endswith("/incident")][0] == 0  # the one that hung
    assert len(tickets(emu, ctx, "offline/VM-0001")) == 1
    assert Outbox(ctx.state.db).dlq_list() == [] and Outbox(ctx.state.db).depth() == {}
    assert re.fullmatch(r"vw-[0-9a-f]{32}", tickets(emu, ctx, "offline/VM-0001")[0]["correlation_id"])


# -- 11. CMDB ------------------------------------------------------------------------------------------------
def test_cmdb_sync_keeps_one_ci_per_machine_and_incidents_reference_it(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn(url, **{"incidents.servicenow.cmdb_sync": True,
                                         "incidents.servicenow.cmdb_sync_interval_s": 60,
                                         "incidents.servicenow.rate_limit.per_minute": 20,
                                         "incidents.servicenow.rate_limit.burst": 2}))
    for i, d in enumerate(devices(3)):
        ctx.state.add_device(d, "SITE-1", serial=f"SER^{i}", model="Vendo 721", location=f"Hall {i}")
    orch = Orchestrator(ctx, clock=clock)
    run_for(orch, clock, 30)
    cis = [c for c in emu.cmdb.values() if c["correlation_display"] == "vendwatch"]
    assert sorted(c["name"] for c in cis) == devices(3)
    assert {c["sys_class_name"] for c in cis} == {"cmdb_ci_hardware"}
    ci = next(c for c in cis if c["name"] == "VM-0001")
    assert ci["serial_number"] == "SER^1" and ci["model_number"] == "Vendo 721" and "Hall 1" in ci["short_description"]
    assert ci["operational_status"] == "1"

    publish(ctx, make_signal(clock))  # incidents of a synced machine reference its CI
    run_for(orch, clock, 20)
    [t] = tickets(emu, ctx, "offline/VM-0001")
    assert t["cmdb_ci"] == ci["sys_id"]

    before = len(api_calls(emu))
    run_for(orch, clock, 120)  # nothing changed: no CMDB calls
    assert len(api_calls(emu)) == before
    ctx.state.add_device("VM-0100", "SITE-2", serial="SER-0100")
    run_for(orch, clock, 120)
    assert len([c for c in emu.cmdb.values() if c["correlation_display"] == "vendwatch"]) == 4
    assert max_in_window([r.at for r in api_calls(emu)]) <= 20  # one outbox, one rate limit
    assert Outbox(ctx.state.db).depth() == {} and Outbox(ctx.state.db).dlq_list() == []
    assert not any("SER" in r.query for r in lookups(emu))  # CIs are found by correlation id, not by serial
