"""Timeliness (virtual time, Alertmanager-acceptance style): timers fire at their own
deadline, a site outage is found when its machines' deadlines pass, a late event
retracts a premature offline, and a restart anywhere in between changes nothing."""

from __future__ import annotations

from tests.detect.harness import Ev, Out, make_engine, run

from vendwatch.detect.engine import Engine, SiteOptions

SITE = SiteOptions(min_devices=3, min_fraction=0.5, wait_s=0.0)
TICK_S = 1.0  # the live detector checks timers every second (detect.tick_interval_s)


def _engine(lateness_s: float = 60.0) -> Engine:
    eng = make_engine(lateness_s=lateness_s, site=SITE)
    for d in ("A", "B", "C", "D"):
        eng.set_device_info(d, "S1", heartbeat_interval_s=60)  # offline after 3 minutes of silence
    eng.set_device_info("X", "S2", heartbeat_interval_s=60)
    eng.set_site_sizes({"S1": 4, "S2": 1})
    return eng


def _fleet(last: dict[str, float], until: float = 20, late: list[Ev] | None = None) -> list[Ev]:
    """Heartbeats every minute (device D at +0.2, X at +0.4); a machine in ``last`` stops after that minute."""
    evs = []
    for d, off in (("A", 0.0), ("B", 0.0), ("C", 0.0), ("D", 0.2), ("X", 0.4)):
        stop = last.get(d, until)
        evs += [Ev(m + off, "heartbeat", {"interval_s": 60}, device=d, site="S2" if d == "X" else "S1",
                   id=f"{d}-{m}") for m in range(int(until)) if m + off <= stop]
    return evs + (late or [])


def _offline(out: list[Out]) -> list[tuple[str, str | None, str, float, float, str | None]]:
    """(rule, device, status, occurred minute, emitted minute, caused_by) of the offline rules."""
    return [(o.signal.rule_id, o.signal.device_id, o.signal.status, o.occurred_min, o.emitted_min, o.signal.caused_by)
            for o in out if o.signal.rule_id in ("offline", "site_offline")]


def _restarted_at(evs: list[Ev], until: float, cut: float, lateness_s: float = 60.0) -> list[Out]:
    """Run until ``cut``, checkpoint, continue in a fresh engine restored from the checkpoint."""
    eng = _engine(lateness_s)
    first = run([e for e in evs if (e.arrive if e.arrive is not None else e.t) < cut], cut, engine=eng, tick_s=TICK_S)
    fresh = _engine(lateness_s)
    for d, dev in eng.devices.items():
        fresh.restore_device(d, eng.encode_device(dev))
    fresh.restore_sites(eng.encode_sites())
    rest = [e for e in evs if (e.arrive if e.arrive is not None else e.t) >= cut]
    return first + run(rest, until, engine=fresh, tick_s=TICK_S, start=cut)


def _same(a: list[Out], b: list[Out]) -> None:
    assert [(o.signal.signal_id, o.signal.caused_by, o.emitted_min) for o in a] == [
        (o.signal.signal_id, o.signal.caused_by, o.emitted_min) for o in b]


def test_a_silent_machine_is_offline_at_its_deadline_while_the_fleet_talks() -> None:
    evs = _fleet({"A": 5})
    out = run(evs, 20, engine=_engine(), tick_s=TICK_S)
    # last heard at 5, three one-minute heartbeats missed: offline at 8, emitted at 8
    assert _offline(out) == [("offline", "A", "firing", 8, 8, None)]
    [sig] = [o.signal for o in out if o.signal.rule_id == "offline"]
    assert sig.evidence["site_rule_id"] == "site_offline"  # a site incident may still absorb it
    for cut in (6, 8, 8.5, 12):
        _same(_restarted_at(evs, 20, cut), out)


def test_site_outage_is_found_after_its_first_machines_and_later_ones_name_it() -> None:
    # a power cut: A, B, C stop within a minute of each other; D and X go on
    evs = _fleet({"A": 5, "B": 5.5, "C": 6}, late=[Ev(5.5, "heartbeat", {}, device="B", site="S1", id="B-5.5"),
                                                   Ev(6, "heartbeat", {}, device="C", site="S1", id="C-6")])
    out = run(evs, 20, engine=_engine(), tick_s=TICK_S)
    assert _offline(out)[:4] == [
        ("offline", "A", "firing", 8, 8, None),  # at its deadline: nothing to wait for
        ("offline", "B", "firing", 8.5, 8.5, None),
        ("site_offline", None, "firing", 9, 9, None),  # the third machine makes it a site outage
        ("offline", "C", "firing", 9, 9, "site_offline/S1"),
    ]
    for cut in (8.2, 8.7, 9, 9.5):
        _same(_restarted_at(evs, 20, cut), out)


def test_a_late_heartbeat_retracts_the_offline_it_proves_wrong() -> None:
    # A's heartbeat of 7.9 reaches the detector at 8.5, after A was reported offline at 8
    evs = _fleet({"A": 5}, until=12, late=[Ev(7.9, "heartbeat", {}, device="A", site="S1", id="A-late", arrive=8.5)])
    out = run(evs, 12, engine=_engine(), tick_s=TICK_S)
    assert _offline(out) == [("offline", "A", "firing", 8, 8, None), ("offline", "A", "resolved", 8, 8.5, None),
                             ("offline", "A", "firing", 10.9, 10.9, None)]  # silent again since 7.9
    firing, retraction = (o.signal for o in out[:2])
    assert retraction.retracts == firing.signal_id and retraction.evidence["false_alarm"] is True
    for cut in (8.2, 8.5, 8.6, 11):
        _same(_restarted_at(evs, 12, cut), out)


def test_a_heartbeat_later_than_the_allowed_lateness_does_not_retract() -> None:
    evs = _fleet({"A": 5}, until=12, late=[Ev(7.9, "heartbeat", {}, device="A", site="S1", id="A-late", arrive=9.5)])
    out = run(evs, 12, engine=_engine(lateness_s=60), tick_s=TICK_S)
    assert [(o.signal.status, o.signal.retracts) for o in out if o.signal.rule_id == "offline"] == [("firing", None)]


def test_retracting_a_machine_that_made_a_site_outage_resolves_the_site() -> None:
    evs = _fleet({"A": 5, "B": 5, "C": 5}, until=14,
                 late=[Ev(7.95, "heartbeat", {}, device="C", site="S1", id="C-late", arrive=8.4)])
    out = run(evs, 14, engine=_engine(), tick_s=TICK_S)
    site = [(o.signal.status, o.emitted_min) for o in out if o.signal.rule_id == "site_offline"]
    # resolved when the retraction comes in (its instant: the detector's clock then); C
    # silent again since 7.95 makes it a site outage once more at 10.95
    assert site == [("firing", 8), ("resolved", 8.4), ("firing", 10.95)]
    c = [(o.signal.status, o.signal.retracts is not None) for o in out if o.signal.device_id == "C"]
    assert c[:2] == [("firing", False), ("resolved", True)]
    for cut in (8.2, 8.4, 9, 11):
        _same(_restarted_at(evs, 14, cut), out)
