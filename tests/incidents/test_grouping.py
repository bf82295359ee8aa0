"""Notification grouping and retraction (virtual time, against the ServiceNow emulator).

Detection is decided at once: a device offline incident opens when its signal comes.
Its ticket waits ``incidents.group_wait_s``, during which a site-level incident can
take it over (one ticket per site). A retraction (a late event proved the offline
wrong) closes the incident as a false alarm, and no ticket is made for it if none was
yet. A restart of the orchestrator in the middle of each changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from incident_helpers import context, publish, tickets
from prometheus_client import REGISTRY

from vendwatch.delivery.clock import VirtualClock
from vendwatch.emulators.servicenow import ServiceNowEmulator
from vendwatch.incidents.role import Orchestrator
from vendwatch.signals import Signal, signal_id

GROUP_WAIT_S = 30.0


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def emulator(clock: VirtualClock) -> Iterator[tuple[ServiceNowEmulator, str]]:
    emu = ServiceNowEmulator(clock=clock.now)
    srv = emu.serve()
    yield emu, srv.url
    srv.stop()


def _ctx(tmp_path: Path, url: str) -> Any:
    return context(tmp_path, **{"incidents.servicenow.url": url, "incidents.servicenow.username": "vendwatch",
                                "incidents.servicenow.password": "vendwatch", "incidents.servicenow.timeout_s": 5.0,
                                "incidents.group_wait_s": GROUP_WAIT_S, "incidents.flap_damping_s": 0})


def offline(clock: VirtualClock, device: str, status: str = "firing", *, caused_by: str | None = None,
            retracts: str | None = None, site: str = "S1") -> Signal:
    at = datetime.fromtimestamp(clock.now(), UTC)
    key = f"offline/{device}"
    ev: dict[str, Any] = {"silent_for": 180, "site_rule_id": "site_offline"} if status == "firing" else {}
    return Signal(signal_id=signal_id("offline", key, status, at), rule_id="offline", status=status,  # type: ignore[arg-type]
                  severity="major", dedupe_key=key, summary=f"{device} offline", occurred_at=at, emitted_at=at,
                  device_id=device, site_id=site, caused_by=caused_by, evidence=ev, retracts=retracts)


def site_offline(clock: VirtualClock, status: str = "firing", site: str = "S1") -> Signal:
    at = datetime.fromtimestamp(clock.now(), UTC)
    key = f"site_offline/{site}"
    return Signal(signal_id=signal_id("site_offline", key, status, at), rule_id="site_offline", status=status,  # type: ignore[arg-type]
                  severity="critical", dedupe_key=key, scope="site", summary=f"site {site} offline", occurred_at=at,
                  emitted_at=at, site_id=site, evidence={"offline": 3, "site_size": 4, "device_rule": "offline"})


def run_for(orch: Orchestrator, clock: VirtualClock, seconds: float, step_s: float = 1.0) -> None:
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(step_s)
        orch.step(0.01)


def statuses(orch: Orchestrator) -> dict[str, str]:
    return {i.dedupe_key: i.status for i in orch.service.store.list()}


def restart(orch: Orchestrator, clock: VirtualClock) -> Orchestrator:
    """A new orchestrator over the same state (what survives a crash: the log and the store)."""
    orch.close()
    new = Orchestrator(orch.ctx, clock=clock)
    new.open()
    return new


@pytest.mark.parametrize("restart_midway", [False, True])
def test_lone_machine_incident_opens_at_once_and_its_ticket_after_the_grouping_delay(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str], restart_midway: bool) -> None:
    emu, url = emulator
    orch = Orchestrator(_ctx(tmp_path, url), clock=clock)
    orch.open()
    publish(orch.ctx, offline(clock, "A"))
    run_for(orch, clock, 1)
    assert statuses(orch) == {"offline/A": "open"}  # detection: at once
    run_for(orch, clock, GROUP_WAIT_S - 5)
    assert tickets(emu, orch.ctx, "offline/A") == []  # notification: held back
    if restart_midway:
        orch = restart(orch, clock)
    run_for(orch, clock, 10)
    assert len(tickets(emu, orch.ctx, "offline/A")) == 1
    run_for(orch, clock, 60)
    assert len(tickets(emu, orch.ctx, "offline/A")) == 1


@pytest.mark.parametrize("restart_midway", [False, True])
def test_site_found_after_its_first_machines_absorbs_them_one_ticket(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str], restart_midway: bool) -> None:
    emu, url = emulator
    orch = Orchestrator(_ctx(tmp_path, url), clock=clock)
    orch.open()
    publish(orch.ctx, offline(clock, "A"))  # the first machines' deadlines pass...
    run_for(orch, clock, 10)
    publish(orch.ctx, offline(clock, "B"))
    run_for(orch, clock, 10)
    assert statuses(orch) == {"offline/A": "open", "offline/B": "open"}
    if restart_midway:
        orch = restart(orch, clock)
    # ...then the third one's makes it a site outage, and it names the site
    publish(orch.ctx, site_offline(clock), offline(clock, "C", caused_by="site_offline/S1"))
    run_for(orch, clock, 2)
    assert statuses(orch) == {"offline/A": "absorbed", "offline/B": "absorbed", "site_offline/S1": "open"}
    run_for(orch, clock, 120)
    assert len(emu.incidents) == 1 and len(tickets(emu, orch.ctx, "site_offline/S1")) == 1  # one ticket, the site's
    site = next(i for i in orch.service.store.list() if i.scope == "site")
    assert {i.parent_id for i in orch.service.store.list() if i.scope == "device"} == {site.incident_id}


def test_machine_notified_long_before_the_site_keeps_its_ticket(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    orch = Orchestrator(_ctx(tmp_path, url), clock=clock)
    orch.open()
    publish(orch.ctx, offline(clock, "A"))
    run_for(orch, clock, 600)  # broken for ten minutes: it has its own ticket
    publish(orch.ctx, offline(clock, "B"), offline(clock, "C"), site_offline(clock))
    run_for(orch, clock, 120)
    assert statuses(orch)["offline/A"] == "open"
    assert len(emu.incidents) == 2
    assert len(tickets(emu, orch.ctx, "offline/A")) == 1 and len(tickets(emu, orch.ctx, "site_offline/S1")) == 1


def _retracted() -> float:
    return REGISTRY.get_sample_value("vendwatch_incidents_transitions_total", {"kind": "retracted"}) or 0.0


@pytest.mark.parametrize("restart_midway", [False, True])
def test_retraction_within_the_grouping_delay_closes_as_false_alarm_without_a_ticket(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str], restart_midway: bool) -> None:
    emu, url = emulator
    orch = Orchestrator(_ctx(tmp_path, url), clock=clock)
    orch.open()
    before = _retracted()
    fired = offline(clock, "A")
    publish(orch.ctx, fired)
    run_for(orch, clock, 5)
    if restart_midway:
        orch = restart(orch, clock)
    publish(orch.ctx, offline(clock, "A", "resolved", retracts=fired.signal_id))
    run_for(orch, clock, 120)
    [inc] = orch.service.store.list()
    assert inc.status == "resolved" and inc.labels["resolution"] == "false_alarm"
    assert "retracted" in [e["kind"] for e in orch.service.store.timeline(inc.incident_id)]
    assert emu.incidents == {}  # never a ticket
    assert _retracted() == before + 1


def test_retraction_after_the_ticket_closes_it(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    orch = Orchestrator(_ctx(tmp_path, url), clock=clock)
    orch.open()
    fired = offline(clock, "A")
    publish(orch.ctx, fired)
    run_for(orch, clock, GROUP_WAIT_S + 5)
    [ticket] = tickets(emu, orch.ctx, "offline/A")
    publish(orch.ctx, offline(clock, "A", "resolved", retracts=fired.signal_id))
    run_for(orch, clock, 10)
    [ticket] = tickets(emu, orch.ctx, "offline/A")
    assert ticket["state"] == "6"
    # a later real outage opens a new incident rather than reopening the false alarm
    publish(orch.ctx, offline(clock, "A"))
    run_for(orch, clock, 2)
    assert sorted(i.status for i in orch.service.store.list()) == ["open", "resolved"]
