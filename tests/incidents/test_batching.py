"""A poll's signals are applied in one batch (``IncidentBatch``): the same result as one
signal at a time, a bad signal still set aside alone, a crash mid-batch replayed without
a second ticket."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from incident_helpers import context, make_signal, publish, tickets

from vendwatch.delivery.clock import VirtualClock
from vendwatch.emulators.servicenow import ServiceNowEmulator
from vendwatch.incidents import lifecycle
from vendwatch.incidents.role import Orchestrator
from vendwatch.incidents.service import IncidentService
from vendwatch.runtime import Context
from vendwatch.signals import Signal

SN = {"incidents.servicenow.username": "vendwatch", "incidents.servicenow.password": "vendwatch",
      "incidents.servicenow.timeout_s": 5.0, "incidents.servicenow.rate_limit.per_minute": 1e6,
      "incidents.servicenow.rate_limit.burst": 1e6}
SITE_KEY = "site-down/SITE-1"


# -- one by one and in batches give the same state -----------------------------------------

def _state(ctx: Context) -> dict[str, Any]:
    """Everything the orchestrator writes, without the surrogate ids of its rows."""
    q = ctx.state.db.query
    return {
        "incidents": q("SELECT * FROM incidents ORDER BY incident_id"),
        "timeline": q("SELECT incident_id, at, kind, actor, detail, note FROM incident_timeline"
                      " ORDER BY incident_id, entry_id"),
        "severity": q("SELECT incident_id, at, from_severity, to_severity, actor FROM incident_severity"
                      " ORDER BY incident_id, entry_id"),
        "outbox": q("SELECT target, op, key, idem_key, payload, created_at, next_attempt_at, dirty FROM outbox"
                    " ORDER BY id"),
        "silences": q("SELECT device_id, suppressed FROM silences ORDER BY device_id"),
        "seen": q("SELECT signal_id, at FROM incident_seen_signals ORDER BY signal_id"),
    }


_DEVICES = ("VM-1", "VM-2", "VM-3")
_TABLES = ("incidents", "incident_timeline", "incident_severity", "incident_refs", "outbox", "silences",
           "incident_seen_signals")


@st.composite
def _timeline(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Batches of signal specs (the clock advances between batches)."""
    spec = st.fixed_dictionaries({
        "target": st.sampled_from(("device", "device", "device", "site", "business")),
        "device": st.sampled_from(_DEVICES),
        "status": st.sampled_from(("firing", "firing", "resolved", "retract")),
        "severity": st.sampled_from(("critical", "major", "minor")),
        "caused": st.booleans(),
        "replay": st.booleans(),
    })
    return draw(st.lists(st.lists(spec, min_size=1, max_size=8), min_size=1, max_size=8))


def _signals(clock: VirtualClock, batch: list[dict[str, Any]], seq: Iterator[int],
             sent: list[Signal]) -> list[Signal]:
    out = []
    for s in batch:
        if s["replay"] and sent:
            out.append(sent[len(sent) // 2])  # a detector replay of an earlier signal
            continue
        status = "resolved" if s["status"] in ("resolved", "retract") else "firing"
        if s["target"] == "site":
            sig = make_signal(clock, SITE_KEY, rule_id="site-down", scope="site", device_id=None,
                              status=status, severity=s["severity"], seq=next(seq))
            sig = _with(sig, evidence={"device_rule": "offline"})
        else:
            dev = s["device"]
            sig = make_signal(clock, f"offline/{dev}", device_id=dev, status=status, severity=s["severity"],
                              kind="business" if s["target"] == "business" else "incident",
                              caused_by=SITE_KEY if s["caused"] else None, seq=next(seq))
            if not s["caused"]:
                sig = _with(sig, evidence={"site_rule_id": "site-down"})
        if s["status"] == "retract":
            sig = _with(sig, retracts=f"sig-{next(seq)}")
        out.append(sig)
        sent.append(sig)
    return out


def _with(sig: Signal, **changes: Any) -> Signal:
    import msgspec

    return msgspec.structs.replace(sig, **changes)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_timeline(), group_wait=st.sampled_from((0.0, 30.0)), damping=st.sampled_from((0.0, 60.0)))
def test_a_batch_gives_the_same_state_as_one_signal_at_a_time(
        tmp_path_factory: pytest.TempPathFactory, batches: list[list[dict[str, Any]]], group_wait: float,
        damping: float) -> None:
    settings_ = {"incidents.servicenow.url": "http://127.0.0.1:9", **SN, "incidents.group_wait_s": group_wait,
                 "incidents.flap_damping_s": damping, "incidents.reopen_window_s": 100}
    results = []
    for batched in (False, True):
        clock = VirtualClock()
        ctx = context(tmp_path_factory.mktemp("batched" if batched else "single"), **settings_)
        svc = IncidentService(ctx.state, ctx.settings.incidents, clock)
        with ctx.state.db.transaction() as tx:  # (with the state on PostgreSQL, every example shares one schema)
            for table in _TABLES:
                tx.execute(f"DELETE FROM {table}")
        # a silence on one machine (suppressed creations are counted on it)
        svc.store.add_silence(device_id="VM-3", site_id=None, rule_id=None, expires_at=clock.now() + 300,
                              created_by="test", reason="maintenance", now=clock.now())
        seq, sent = itertools.count(1), []  # type: ignore[var-annotated]
        for i, batch in enumerate(batches):
            sigs = _signals(clock, batch, seq, sent)
            if batched:
                with ctx.state.db.transaction() as tx:
                    svc.handle_signals(tx, sigs)
            else:
                for sig in sigs:
                    with ctx.state.db.transaction() as tx:
                        svc.handle_signal(tx, sig)
            clock.advance(7 + 20 * (i % 3))
            svc.tick()
        results.append(_state(ctx))
        ctx.close()
    single, batched_ = results
    assert batched_ == single


# -- a bad signal in a batch -------------------------------------------------------------------

class _Crash(BaseException):
    """Stands in for SIGKILL: nothing after it runs, nothing of its transaction commits."""


def _fail_on(monkeypatch: pytest.MonkeyPatch, signal_ids: set[str], error: BaseException) -> set[str]:
    """Make deciding on these signals raise ``error``; returns the set (empty it to stop)."""
    real = lifecycle.on_signal

    def on_signal(sig: Signal, *a: Any, **kw: Any) -> lifecycle.Decision:
        if sig.signal_id in signal_ids:
            raise error
        return real(sig, *a, **kw)

    monkeypatch.setattr(lifecycle, "on_signal", on_signal)
    return signal_ids


def test_a_signal_that_fails_in_a_batch_is_set_aside_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock()
    ctx = context(tmp_path)
    orch = Orchestrator(ctx, clock=clock)
    sigs = [make_signal(clock, f"offline/VM-{i}", device_id=f"VM-{i}") for i in range(9)]
    sigs.insert(4, make_signal(clock, "offline/VM-1", device_id="VM-1", severity="critical", seq=1))
    bad = sigs[6]
    _fail_on(monkeypatch, {bad.signal_id}, ValueError("cannot be processed"))
    publish(ctx, *sigs)
    while orch.step(0.0):
        pass
    dead = orch.dead_letters.list("orchestrator")
    assert [(d.offset, d.reason) for d in dead] == [(_offset_of(ctx, bad), "ValueError: cannot be processed")]
    active = {i.dedupe_key: i for i in orch.service.store.list(status="active")}
    assert set(active) == {s.dedupe_key for s in sigs if s is not bad}
    assert active["offline/VM-1"].severity == "critical" and active["offline/VM-1"].occurrences == 2
    # the checkpoint moved past every record: nothing is applied twice on the next start
    orch2 = Orchestrator(ctx, clock=clock)
    assert orch2.step(0.0) == 0
    orch.close()
    orch2.close()
    ctx.close()


def _offset_of(ctx: Context, sig: Signal) -> int:
    from vendwatch.bus import SIGNALS
    from vendwatch.signals import decode_signal

    c = ctx.log.consumer("test-find", (SIGNALS,))
    try:
        while recs := c.poll(100, 0.0):
            for r in recs:
                if decode_signal(r.value).signal_id == sig.signal_id:
                    return r.offset
    finally:
        c.close()
    raise AssertionError("not in the log")


# -- a crash in the middle of a batch ----------------------------------------------------------

@pytest.fixture
def emulator() -> Iterator[tuple[ServiceNowEmulator, VirtualClock, str]]:
    clock = VirtualClock()
    emu = ServiceNowEmulator(clock=clock.now)
    srv = emu.serve()
    yield emu, clock, srv.url
    srv.stop()


def _drain(orch: Orchestrator, clock: VirtualClock) -> None:
    for _ in range(20):
        clock.advance(1)
        orch.step(0.0)


def test_a_crash_in_the_middle_of_a_batch_replays_without_a_second_ticket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        emulator: tuple[ServiceNowEmulator, VirtualClock, str]) -> None:
    emu, clock, url = emulator
    ctx = context(tmp_path, **{"incidents.servicenow.url": url, **SN})
    orch = Orchestrator(ctx, clock=clock)
    first = [make_signal(clock, f"offline/VM-{i}", device_id=f"VM-{i}") for i in range(4)]
    publish(ctx, *first)
    _drain(orch, clock)  # four tickets
    assert all(len(tickets(emu, ctx, s.dedupe_key)) == 1 for s in first)
    clock.advance(10)
    # a second batch: re-fires (a severity change becomes a work note), new machines
    second = [make_signal(clock, "offline/VM-0", device_id="VM-0", severity="critical", seq=1),
              make_signal(clock, "offline/VM-5", device_id="VM-5"),
              make_signal(clock, "offline/VM-1", device_id="VM-1", seq=2),
              make_signal(clock, "offline/VM-6", device_id="VM-6"),
              make_signal(clock, "offline/VM-5", device_id="VM-5", severity="critical", seq=3)]
    publish(ctx, *second)
    failing = _fail_on(monkeypatch, {second[3].signal_id}, _Crash())
    with pytest.raises(_Crash):
        orch.step(0.0)
    failing.clear()
    # the process is gone; a new one starts from what was committed
    orch2 = Orchestrator(context(tmp_path, **{"incidents.servicenow.url": url, **SN}), clock=clock)
    _drain(orch2, clock)
    keys = {s.dedupe_key for s in first + second}
    for key in keys:
        assert len(tickets(emu, ctx, key)) == 1, key
    incs = {i.dedupe_key: i for i in orch2.service.store.list()}
    assert len(incs) == len(keys)
    assert incs["offline/VM-0"].severity == "critical" and incs["offline/VM-0"].occurrences == 2
    assert incs["offline/VM-1"].occurrences == 2
    assert incs["offline/VM-5"].occurrences == 2
    notes = [e for e in orch2.service.store.timeline(incs["offline/VM-0"].incident_id)
             if e["kind"] == "severity_changed"]
    assert len(notes) == 1  # one severity change, once, however often the batch ran
    orch2.close()
    orch.close()
