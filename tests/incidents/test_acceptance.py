"""Acceptance: the orchestrator against the ServiceNow emulator over real HTTP sockets.

Long waits run on a virtual clock shared by the orchestrator and the emulator (the
emulator stamps requests and expires faults with it), so "ten minutes of 503" takes
seconds. The crash test runs the orchestrator as a real subprocess and SIGKILLs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from incident_helpers import context, make_signal, publish, tickets
from tests.conftest import vendwatch_cmd

from vendwatch.api.server import build_app
from vendwatch.delivery.clock import VirtualClock
from vendwatch.delivery.outbox import Outbox
from vendwatch.emulators.base import ThreadedServer
from vendwatch.emulators.servicenow import ServiceNowEmulator
from vendwatch.incidents.role import Orchestrator
from vendwatch.runtime import Context


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def emulator(clock: VirtualClock) -> Iterator[tuple[ServiceNowEmulator, str]]:
    emu = ServiceNowEmulator(clock=clock.now)
    emu.add_ci("SER-0001", "Vending machine VM-0001")
    srv = emu.serve()
    yield emu, srv.url
    srv.stop()


def sn_settings(url: str, **more: Any) -> dict[str, Any]:
    return {"incidents.servicenow.url": url, "incidents.servicenow.username": "vendwatch",
            "incidents.servicenow.password": "vendwatch", "incidents.servicenow.timeout_s": 5.0, **more}


def run_for(orch: Orchestrator, clock: VirtualClock, seconds: float, step_s: float = 1.0) -> None:
    """Advance virtual time, letting the orchestrator work at every step."""
    end = clock.now() + seconds
    while clock.now() < end:
        clock.advance(step_s)
        orch.step(0.01)


def max_calls_in_window(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_storm_is_one_ticket_updated_within_the_rate_limit(tmp_path: Path, clock: VirtualClock,
                                                          emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{"incidents.servicenow.rate_limit.per_minute": 20,
                                                  "incidents.servicenow.rate_limit.burst": 5}))
    orch = Orchestrator(ctx, clock=clock)
    orch.open()
    sent = 0
    while sent < 1000:  # 1,000 firings of one key within one minute, 10 per 0.6 s
        batch = []
        for _ in range(10):
            clock.advance(0.06)
            batch.append(make_signal(clock, severity="critical" if sent == 500 else "major", seq=sent))
            sent += 1
        publish(ctx, *batch)
        orch.step(0.05)
    run_for(orch, clock, 300, step_s=2.0)

    found = tickets(emu, ctx, "offline/VM-0001")
    assert len(found) == 1
    inc = orch.service.store.list()[0]
    assert inc.occurrences == 1000
    assert "occurrences: 1000" in found[0]["description"]  # the last update reached ServiceNow
    assert int(found[0]["sys_mod_count"]) >= 1
    calls = [r.at for r in emu.faults.requests if r.path.startswith("/api/now")]
    assert max_calls_in_window(calls) <= 20
    assert len(calls) < 60  # coalesced: a handful of updates, not a thousand
    print(f"storm: {len(calls)} ServiceNow calls, at most {max_calls_in_window(calls)} in any minute")
    assert Outbox(ctx.state.db).depth() == {}


def test_outage_loses_and_doubles_nothing_then_dlq_redrive(tmp_path: Path, clock: VirtualClock,
                                                           emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{
        "incidents.servicenow.rate_limit.per_minute": 600, "incidents.servicenow.rate_limit.burst": 50,
        "incidents.servicenow.retry.backoff_max_s": 60, "incidents.servicenow.circuit.open_s": 30}))
    orch = Orchestrator(ctx, clock=clock)
    orch.open()
    emu.inject(status=503, until=clock.now() + 600)  # ten virtual minutes down
    for i in range(50):
        publish(ctx, make_signal(clock, key=f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}"))
        clock.advance(1)
        orch.step(0.01)
    run_for(orch, clock, 540, step_s=5.0)
    assert emu.incidents == {}  # still down
    failed = [r for r in emu.faults.requests if r.status == 503]
    assert failed and len(failed) < 200  # backoff and the circuit breaker keep retries sparse
    print(f"outage: {len(failed)} calls answered 503 in ten minutes")
    run_for(orch, clock, 300, step_s=5.0)

    for i in range(50):
        assert len(tickets(emu, ctx, f"offline/VM-{i:04d}")) == 1
    assert len(emu.incidents) == 50
    outbox = Outbox(ctx.state.db)
    assert outbox.depth() == {} and outbox.dlq_list() == []

    # a 400 is not retried: it goes to the DLQ; after the fix, a redrive delivers it
    emu.inject(status=400, body_contains="VM-0999", message="Invalid assignment group")
    publish(ctx, make_signal(clock, key="offline/VM-0999", device_id="VM-0999"))
    run_for(orch, clock, 10)
    dead = outbox.dlq_list()
    assert len(dead) == 1 and dead[0]["last_status"] == 400 and dead[0]["attempts"] == 1
    assert tickets(emu, ctx, "offline/VM-0999") == []
    emu.faults.clear()  # the fix
    assert outbox.redrive(clock.now(), dlq_id=dead[0]["dlq_id"]) == 1
    run_for(orch, clock, 10)
    assert len(tickets(emu, ctx, "offline/VM-0999")) == 1
    assert outbox.dlq_list() == []


def test_retry_after_is_honoured(tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url))
    orch = Orchestrator(ctx, clock=clock)
    emu.inject(status=429, retry_after=120, count=1)
    publish(ctx, make_signal(clock))
    orch.step(0.05)
    t429 = clock.now()
    run_for(orch, clock, 200, step_s=5.0)
    after = [r.at for r in emu.faults.requests if r.status != 429]
    assert after and min(after) >= t429 + 120
    assert len(tickets(emu, ctx, "offline/VM-0001")) == 1


def test_lifecycle_is_visible_in_servicenow_and_the_api(tmp_path: Path, clock: VirtualClock,
                                                        emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{"incidents.flap_damping_s": 60,
                                                  "incidents.reopen_window_s": 900}))
    ctx.state.add_device("VM-0001", "SITE-1", serial="SER-0001")
    token = ctx.state.add_operator_token("tester", "viewer")
    orch = Orchestrator(ctx, clock=clock)
    api_ctx = Context(ctx.settings)
    api = ThreadedServer(build_app(api_ctx, ["console"])).start()
    http = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"})

    def ticket() -> dict[str, str]:
        [t] = tickets(emu, ctx, "offline/VM-0001")
        return t

    def local() -> dict[str, Any]:
        [row] = http.get("/v1/incidents", params={"dedupe_key": "offline/VM-0001"}).json()["incidents"]
        return http.get(f"/v1/incidents/{row['incident_id']}").json()

    try:
        publish(ctx, make_signal(clock, severity="major"))  # fire
        run_for(orch, clock, 5)
        t = ticket()
        assert t["state"] == "1" and t["impact"] == "1" and t["urgency"] == "2"
        assert t["correlation_display"] == "vendwatch" and t["cmdb_ci"] == next(iter(emu.cmdb))
        assert local()["status"] == "open" and local()["external_refs"][0]["number"] == t["number"]

        publish(ctx, make_signal(clock, severity="major", seq=1))  # update
        run_for(orch, clock, 5)
        assert "occurrences: 2" in ticket()["description"] and local()["occurrences"] == 2

        publish(ctx, make_signal(clock, severity="critical", seq=2))  # severity change
        run_for(orch, clock, 5)
        assert ticket()["urgency"] == "1" and ticket()["priority"] == "1"
        assert any("major to critical" in n for n in emu.notes(t["sys_id"]))
        assert [h["to"] for h in local()["severity_history"]] == ["major", "critical"]

        publish(ctx, make_signal(clock, status="resolved"))  # resolve, after flap damping
        run_for(orch, clock, 30)
        assert ticket()["state"] == "1" and local()["status"] == "open"
        run_for(orch, clock, 40)
        assert ticket()["state"] == "6" and ticket()["close_code"] and ticket()["close_notes"]
        assert local()["status"] == "resolved"

        publish(ctx, make_signal(clock, seq=3))  # refire within the window: reopen, same ticket
        run_for(orch, clock, 5)
        assert len(tickets(emu, ctx, "offline/VM-0001")) == 1
        assert ticket()["state"] == "2" and ticket()["active"] == "true"
        assert any(n.startswith("Reopened") for n in emu.notes(t["sys_id"]))
        detail = local()
        assert detail["status"] == "open" and detail["reopen_count"] == 1
        assert [e["kind"] for e in detail["timeline"]][-1] == "reopened"
    finally:
        http.close()
        api.stop()
        api_ctx.close()


def test_closed_ticket_with_new_policy_opens_another(tmp_path: Path, clock: VirtualClock,
                                                     emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{"incidents.servicenow.on_closed_refire": "new",
                                                  "incidents.flap_damping_s": 0}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, status="resolved"))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, seq=1))
    run_for(orch, clock, 5)
    states = sorted(t["state"] for t in tickets(emu, ctx, "offline/VM-0001"))
    assert states == ["1", "6"]


def test_oauth_token_is_refreshed_before_it_expires(tmp_path: Path, clock: VirtualClock,
                                            emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{
        "incidents.servicenow.auth": "oauth", "incidents.servicenow.oauth.client_id": "vendwatch-client",
        "incidents.servicenow.oauth.client_secret": "vendwatch-secret"}))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))
    run_for(orch, clock, 5)
    clock.advance(3600)  # the token expired
    publish(ctx, make_signal(clock, seq=1))
    run_for(orch, clock, 5)
    # fetched once with the password grant, renewed from expires_in with the refresh token: no call refused
    assert [c.body for c in emu.faults.calls("POST", "/oauth_token.do")] == ["password", "refresh_token"]
    assert 401 not in [r.status for r in emu.faults.calls(path_contains="/api/now")]
    assert "occurrences: 2" in tickets(emu, ctx, "offline/VM-0001")[0]["description"]


def test_refused_credentials_pause_the_target_and_resume_by_themselves(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    from vendwatch.delivery import metrics

    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{"incidents.servicenow.password": "rotated-by-someone"}))
    orch = Orchestrator(ctx, clock=clock)
    paused_before = metrics.AUTH_FAILURES.labels("servicenow")._value.get()
    publish(ctx, *(make_signal(clock, key=f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}") for i in range(3)))
    run_for(orch, clock, 300, step_s=5.0)
    outbox = Outbox(ctx.state.db)
    assert outbox.dlq_list() == [] and outbox.depth() == {"servicenow": 3} and emu.incidents == {}
    assert orch.dispatcher.gates["servicenow"].breaker_state().circuit == "open"
    assert metrics.AUTH_FAILURES.labels("servicenow")._value.get() > paused_before
    refused = [r for r in emu.faults.requests if r.status == 401]
    assert 1 <= len(refused) <= 300 / 30 + 1  # one trial call per open period, not a retry storm
    assert all(p["attempts"] == 0 for p in outbox.pending())  # an outage of ours spends no attempts
    from vendwatch.delivery.status import target_status  # what the console's banner shows

    [status] = target_status(ctx.state.db, clock.now())
    assert status["paused"] and status["reason"] == "credentials" and status["queued"] == 3

    emu.password = "rotated-by-someone"  # the credentials work again (rotated on both sides)
    run_for(orch, clock, 120, step_s=5.0)
    assert all(len(tickets(emu, ctx, f"offline/VM-{i:04d}")) == 1 for i in range(3))
    assert outbox.depth() == {} and outbox.dlq_list() == []
    assert not target_status(ctx.state.db, clock.now())[0]["paused"]


# -- crash safety -------------------------------------------------------------------------
def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_five_sigkills_with_the_create_answer_held_back_leave_no_duplicate_and_no_orphan(tmp_path: Path) -> None:
    created, release = threading.Event(), threading.Event()

    def hold_response(rec: dict[str, str]) -> None:
        created.set()
        release.wait(30)  # ServiceNow has the ticket; vendwatch has not heard back yet

    emu = ServiceNowEmulator(on_create=hold_response)
    srv = emu.serve()
    env = {**os.environ, "VENDWATCH_DATA_DIR": str(tmp_path), "VENDWATCH_BUS__PARTITIONS": "2",
           "VENDWATCH_INCIDENTS__SERVICENOW__URL": srv.url, "VENDWATCH_INCIDENTS__SERVICENOW__USERNAME": "vendwatch",
           "VENDWATCH_INCIDENTS__SERVICENOW__PASSWORD": "vendwatch", "VENDWATCH_INCIDENTS__OUTBOX_LEASE_S": "2",
           "VENDWATCH_INCIDENTS__TICK_S": "0.1", "VENDWATCH_INCIDENTS__SERVICENOW__TIMEOUT_S": "1"}
    ctx = context(tmp_path)
    clock = VirtualClock(time.time())
    keys = [f"offline/VM-{i:04d}" for i in range(5)]
    publish(ctx, *(make_signal(clock, key=k, device_id=k.split("/")[1]) for k in keys))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for kill in range(5):
            created.clear()
            release.clear()
            p = subprocess.Popen(vendwatch_cmd("run", "orchestrator"), env=env, stderr=subprocess.DEVNULL)
            procs.append(p)
            assert created.wait(60), f"orchestrator never called ServiceNow (kill {kill + 1})"
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            release.set()
            assert len(emu.incidents) == kill + 1  # each kill leaves one ticket vendwatch has not recorded
            assert len(ctx.state.db.query("SELECT ref_id FROM incident_refs")) == kill

        emu.on_create = None
        p = subprocess.Popen(vendwatch_cmd("run", "orchestrator"), env=env, stderr=subprocess.DEVNULL)
        procs.append(p)
        _wait(lambda: len(ctx.state.db.query("SELECT ref_id FROM incident_refs")) == 5, 60,
              "the restarted orchestrator")
        _wait(lambda: Outbox(ctx.state.db).depth() == {}, 30, "the outbox to drain")
        refs = {r[0] for r in ctx.state.db.query("SELECT ref_id FROM incident_refs")}
        for k in keys:
            found = tickets(emu, ctx, k)
            assert len(found) == 1 and found[0]["sys_id"] in refs  # no duplicate
        assert set(emu.incidents) == refs  # no orphan: every ticket is recorded
    finally:
        release.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        srv.stop()
        ctx.close()


def test_absorbed_device_ticket_is_resolved_pointing_at_the_site_ticket(
        tmp_path: Path, clock: VirtualClock, emulator: tuple[ServiceNowEmulator, str]) -> None:
    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url))
    orch = Orchestrator(ctx, clock=clock)
    publish(ctx, make_signal(clock))  # device incident first
    run_for(orch, clock, 5)
    site = "site-down/SITE-1"
    publish(ctx, make_signal(clock, key=site, rule_id="site-down", scope="site", device_id=None, severity="critical"))
    run_for(orch, clock, 5)
    publish(ctx, make_signal(clock, caused_by=site, seq=1))
    run_for(orch, clock, 5)
    [site_ticket] = tickets(emu, ctx, site)
    [dev_ticket] = tickets(emu, ctx, "offline/VM-0001")
    assert site_ticket["state"] == "1"
    assert dev_ticket["state"] == "6" and site_ticket["number"] in dev_ticket["close_notes"]


def test_servicenow_hourly_rate_limit_waits_for_the_reset(tmp_path: Path, clock: VirtualClock) -> None:
    emu = ServiceNowEmulator(clock=clock.now, rate_limit_per_hour=6)
    srv = emu.serve()
    try:
        ctx = context(tmp_path, **sn_settings(srv.url))
        orch = Orchestrator(ctx, clock=clock)
        publish(ctx, *(make_signal(clock, key=f"offline/VM-{i:04d}", device_id=f"VM-{i:04d}") for i in range(5)))
        run_for(orch, clock, 60, step_s=5.0)
        limited = [r for r in emu.faults.requests if r.status == 429]
        assert limited, "the instance's hourly limit was never hit"
        reset = (int(limited[0].at // 3600) + 1) * 3600
        run_for(orch, clock, 3700, step_s=60.0)
        assert all(len(tickets(emu, ctx, f"offline/VM-{i:04d}")) == 1 for i in range(5))
        # the first 429 held the whole target until the reset: no call was wasted on a second 429
        assert [r.status for r in emu.faults.requests].count(429) == 1
        after_429 = [r.at for r in emu.faults.requests if r.at > limited[0].at]
        assert after_429 and min(after_429) >= reset
    finally:
        srv.stop()


# -- acceptance: a demo-like run with the documented defaults ------------------------------------------
def _demo_script(clock: VirtualClock, rng: Any) -> list[tuple[float, Any]]:
    """Two minutes of firings, re-firings and clears on 40 machines of 4 sites; SITE-2 goes down at 60 s."""
    start = clock.now()
    script: list[tuple[float, Any]] = []
    firing: set[str] = set()
    seq = 0
    site_key = "site-down/SITE-2"
    for t in range(120):
        at = start + t
        when = VirtualClock(at)
        if t == 60:
            script.append((at, make_signal(when, key=site_key, rule_id="site-down", scope="site", device_id=None,
                                           site_id="SITE-2", severity="critical")))
        for _ in range(2):
            i = rng.randrange(1, 40)
            dev, site = f"VM-{i:04d}", f"SITE-{i % 4}"
            key = f"offline/{dev}"
            seq += 1
            caused = site_key if site == "SITE-2" and t >= 60 else None
            if key in firing and rng.random() < 0.3:
                firing.discard(key)
                script.append((at, make_signal(when, key=key, device_id=dev, site_id=site, status="resolved", seq=seq)))
            else:
                firing.add(key)
                script.append((at, make_signal(when, key=key, device_id=dev, site_id=site, caused_by=caused,
                                               severity=rng.choice(["major", "minor", "critical"]), seq=seq)))
    return script


def _check_tickets(ctx: Context, emu: ServiceNowEmulator, closed_by_person: str, limit: int) -> None:
    from vendwatch.incidents.servicenow.mapping import correlation_id

    incidents = ctx.state.db.query("SELECT incident_id, status FROM incidents")
    by_corr: dict[str, list[dict[str, str]]] = {}
    for t in emu.incidents.values():
        by_corr.setdefault(t["correlation_id"], []).append(t)
    assert all(len(v) == 1 for v in by_corr.values()), "a correlation id was used twice"
    known = {correlation_id(iid, g): (iid, status) for iid, status in incidents for g in range(3)}
    assert set(by_corr) <= set(known), "a ticket no incident points at (orphan)"
    refs = {r[0]: r[1] for r in ctx.state.db.query("SELECT incident_id, ref_id FROM incident_refs")}
    for corr, [t] in by_corr.items():
        iid, status = known[corr]
        if t["sys_id"] == closed_by_person:
            assert t["state"] == "7" and t["close_notes"] == "handled on site by a technician"
            continue
        assert refs.get(iid) == t["sys_id"], f"{t['number']} is not recorded for {iid}"
        if status in ("resolved", "absorbed"):
            assert t["state"] == "6" and t["close_code"] and t["close_notes"], t
            assert "inc_" not in t["close_notes"]
        else:
            assert t["state"] in ("1", "2"), t
    for iid, status in incidents:
        tickets_of = [c for c, (i, _) in known.items() if i == iid and c in by_corr]
        if status != "absorbed":
            assert len(tickets_of) == 1, f"{iid} ({status}) has {len(tickets_of)} tickets"
    calls = [r.at for r in emu.faults.requests if r.path.startswith("/api/now")]
    assert max_calls_in_window(calls) <= limit


@pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults"])
def test_demo_run_with_documented_defaults(tmp_path: Path, clock: VirtualClock,
                                           emulator: tuple[ServiceNowEmulator, str], faults: bool) -> None:
    import random

    emu, url = emulator
    ctx = context(tmp_path, **sn_settings(url, **{"incidents.servicenow.timeout_s": 0.5}))  # defaults otherwise
    for i in range(40):
        ctx.state.add_device(f"VM-{i:04d}", f"SITE-{i % 4}", serial=f"SER-{i:04d}", model="Vendo 721")
    orch = Orchestrator(ctx, clock=clock)
    # a machine whose ticket a person closes mid-run; it never fires again
    publish(ctx, make_signal(clock, key="offline/VM-0000", device_id="VM-0000", site_id="SITE-0"))
    orch.step(0.0)
    start = clock.now()
    if faults:
        emu.inject(status=429, retry_after=30, count=1, until=start + 30)
        emu.inject(status=503, until=start + 110)  # a 60 s outage from 50 s (added at 50 s below)
        emu.faults.faults[-1].count = 0
        emu.inject(status=200, delay_s=1.0, count=3, method="PATCH")  # three answers never arrive in time
    closed = ""
    for at, sig in _demo_script(clock, random.Random(7)):
        while clock.now() < at:
            clock.advance(1.0)
            orch.step(0.0)
            if not closed and tickets(emu, ctx, "offline/VM-0000"):
                closed = tickets(emu, ctx, "offline/VM-0000")[0]["sys_id"]
                emu.close_as_person(closed, "7", close_notes="handled on site by a technician")
            if faults and clock.now() == start + 50:
                emu.faults.faults[1].count = None  # the outage begins
        publish(ctx, sig)
    if faults:
        emu.inject(status=401, until=clock.now() + 60, message="password rotated")  # credentials refused for 60 s
    run_for(orch, clock, 900, step_s=5.0)
    outbox = Outbox(ctx.state.db)
    assert outbox.dlq_list() == [] and outbox.depth() == {}
    assert closed
    _check_tickets(ctx, emu, closed, limit=120)
    if faults:
        statuses = {r.status for r in emu.faults.requests}
        assert {429, 503, 0, 401} <= statuses, statuses
