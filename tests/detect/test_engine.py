"""Engine semantics: duplicates, out-of-order and late events, per-device overrides,
site correlation, bounded state, checkpoint/restore equality (virtual clock)."""

from __future__ import annotations

import random

from tests.detect.harness import T0, Ev, make_engine, run, transitions

from vendwatch.detect.engine import Engine, SiteOptions

FAIL = {"transaction_id": "t", "product_id": "p", "slot": "A1", "price_minor": 1, "currency": "EUR",
        "payment_method": "card", "payment_status": "failure", "vend_status": "not_attempted"}


def test_duplicate_events_change_nothing() -> None:
    evs = [Ev(m, "transaction", FAIL, id=f"tx{m}") for m in range(4)]
    evs += [Ev(4, "transaction", FAIL, id="tx3")]  # a retried event: same id
    assert transitions(run(evs, 30), "repeated_transaction_failures") == []
    evs[-1] = Ev(4, "transaction", FAIL, id="tx4")  # a distinct fifth failure
    assert transitions(run(evs, 30), "repeated_transaction_failures") == [("firing", 4), ("resolved", 10)]


def test_duplicate_after_clear_does_not_refire() -> None:
    raised = Ev(0, "fault", {"code": "motor_jam", "state": "raised"}, id="f1")
    evs = [raised, Ev(5, "fault", {"code": "motor_jam", "state": "cleared"}, id="f2"),
           Ev(6, "fault", raised.data, id="f1", arrive=6)]
    assert transitions(run(evs, 30), "motor_jam") == [("firing", 0), ("resolved", 5)]


def test_state_report_at_the_instant_of_a_raise_does_not_clear_it() -> None:
    evs = [Ev(0, "fault", {"code": "motor_jam", "state": "raised"}), Ev(0, "telemetry", {"motor_status": "running"}),
           Ev(1, "telemetry", {"motor_status": "jammed"}), Ev(30, "fault", {"code": "motor_jam", "state": "cleared"})]
    assert transitions(run(evs, 40), "motor_jam") == [("firing", 0), ("resolved", 30)]


def test_heartbeat_missing_needs_other_activity() -> None:
    evs = [Ev(0, "heartbeat", {}), Ev(10, "telemetry", {"cpu_pct": 1}), Ev(50, "telemetry", {"cpu_pct": 1}),
           Ev(55, "heartbeat", {})]
    out = run(evs, 60)
    # decided by the telemetry at 50, dated at the deadline (30)
    assert transitions(out, "heartbeat_missing") == [("firing", 30), ("resolved", 55)]
    assert [o.emitted_min for o in out if o.signal.rule_id == "heartbeat_missing"] == [50, 55]


def test_out_of_order_clear_before_raise() -> None:
    # the clear (t=5) arrives before the older raise (t=0): the jam is already over
    evs = [Ev(5, "fault", {"code": "motor_jam", "state": "cleared"}, arrive=5),
           Ev(0, "fault", {"code": "motor_jam", "state": "raised"}, arrive=6)]
    assert transitions(run(evs, 30), "motor_jam") == []


def test_out_of_order_stale_observation_is_ignored() -> None:
    # a hot reading from before the latest cool one must not restart the countdown
    evs = [Ev(0, "telemetry", {"cpu_pct": 99}), Ev(4, "telemetry", {"cpu_pct": 99}), Ev(5, "telemetry", {"cpu_pct": 10}),
           Ev(4.5, "telemetry", {"cpu_pct": 99}, arrive=6)]
    assert transitions(run(evs, 60), "cpu_pressure") == []


def test_out_of_order_events_count_in_their_window() -> None:
    evs = [Ev(m, "transaction", FAIL) for m in (0, 2, 4, 6)] + [Ev(1, "transaction", FAIL, arrive=7)]
    assert transitions(run(evs, 30), "repeated_transaction_failures") == [("firing", 6), ("resolved", 10)]


def test_late_event_after_a_count_resolve_never_repeats_a_signal_id() -> None:
    # five failures in 10 minutes fire at minute 4 and resolve at 10; a failure of
    # minute 2.5 that arrives at minute 12 fills the window again
    evs = [Ev(m, "transaction", FAIL) for m in range(5)] + [Ev(2.5, "transaction", FAIL, arrive=12)]
    out = run(evs, 30)
    ids = [o.signal.signal_id for o in out]
    assert len(ids) == len(set(ids)), "a signal id was emitted twice"
    # the window held 5 failures until minute 11: the resolve at 10 was early, the rule
    # fires again from then on (not from minute 4, the first firing's instant and id)
    assert transitions(out, "repeated_transaction_failures") == [
        ("firing", 4), ("resolved", 10), ("firing", 10), ("resolved", 11)]
    # a late failure whose window had closed before the resolve belongs to the episode
    # already reported: nothing new
    evs[-1] = Ev(-5.5, "transaction", FAIL, arrive=12)
    assert transitions(run(evs, 30), "repeated_transaction_failures") == [("firing", 4), ("resolved", 10)]
    # a second failure at the firing's own instant, after the resolve: no repeat either
    evs[-1] = Ev(4, "transaction", FAIL, id="tx-again", arrive=12)
    out = run(evs, 30)
    assert len({o.signal.signal_id for o in out}) == len(out)


def test_timer_rules_fire_at_their_own_deadline_whatever_the_lateness() -> None:
    hot = [Ev(0, "telemetry", {"cpu_pct": 99}), Ev(9.5, "telemetry", {"cpu_pct": 10}, arrive=11)]
    # the cooling reading took 1.5 minutes to arrive: the timer did not wait for it, the
    # reading resolves what fired (the condition did hold from 0 to 9.5)
    out = run(hot, 30, lateness_s=120, tick_s=1)
    assert transitions(out, "cpu_pressure") == [("firing", 10), ("resolved", 14.5)]
    assert [o.emitted_min for o in out if o.signal.rule_id == "cpu_pressure"][0] == 10


def test_offline_is_emitted_at_its_deadline_whatever_the_lateness() -> None:
    out = run([Ev(0, "heartbeat", {})], 20, lateness_s=120, tick_s=1)
    [sig] = [o for o in out if o.signal.rule_id == "offline"]
    assert sig.occurred_min == 10 and sig.emitted_min == 10


def test_late_heartbeat_within_lateness_retracts_the_offline() -> None:
    evs = [Ev(0, "heartbeat", {}), Ev(9, "heartbeat", {}, arrive=11), Ev(15, "heartbeat", {})]
    out = [o for o in run(evs, 30, lateness_s=180, tick_s=1) if o.signal.rule_id == "offline"]
    assert [(o.signal.status, o.occurred_min, o.emitted_min) for o in out] == [
        ("firing", 10, 10), ("resolved", 10, 11), ("firing", 25, 25)]
    firing, retraction = out[0].signal, out[1].signal
    assert retraction.retracts == firing.signal_id and retraction.evidence["false_alarm"] is True
    assert firing.retracts is None


def test_event_later_than_the_allowed_lateness_cannot_retract() -> None:
    evs = [Ev(0, "heartbeat", {}), Ev(9, "heartbeat", {}, arrive=13.5), Ev(15, "heartbeat", {})]
    out = [o.signal for o in run(evs, 18, lateness_s=60, tick_s=1) if o.signal.rule_id == "offline"]
    # 9 is 4.5 minutes behind the clock: only the heartbeat at 15 ends the outage
    assert [(s.status, s.retracts) for s in out] == [("firing", None), ("resolved", None)]
    assert transitions(run(evs, 18, lateness_s=60, tick_s=1), "offline") == [("firing", 10), ("resolved", 15)]


def test_offline_timeout_per_device() -> None:
    eng = make_engine()
    eng.set_device_info("VM-1", "S1", heartbeat_interval_s=60)  # registry: 3 x 60 s
    eng.set_device_info("VM-2", "S1", meta={"offline_after_s": 1800})  # meta override
    evs = [Ev(0, "heartbeat", {}, device="VM-1"), Ev(0, "heartbeat", {}, device="VM-2"),
           Ev(0, "heartbeat", {"interval_s": 120}, device="VM-3")]  # device-reported interval
    out = run(evs, 40, engine=eng)
    assert [(o.signal.device_id, o.occurred_min) for o in out if o.signal.rule_id == "offline"] == [
        ("VM-1", 3), ("VM-3", 6), ("VM-2", 30)]


def _site_fleet(offline: list[str], back_at: float = 40) -> list[Ev]:
    evs = []
    for d in ("A", "B", "C", "D"):
        evs.append(Ev(0, "heartbeat", {}, device=d, site="S1"))
        if d not in offline:
            evs += [Ev(m, "heartbeat", {}, device=d, site="S1") for m in range(5, 60, 5)]
        else:
            evs += [Ev(m, "heartbeat", {}, device=d, site="S1") for m in range(int(back_at), 60, 5)]
    evs += [Ev(m, "heartbeat", {}, device="X", site="S2") for m in range(0, 60, 5)]
    return evs


def test_site_outage_gives_one_site_signal_and_marks_devices() -> None:
    site = SiteOptions(min_devices=3, min_fraction=0.5, wait_s=120)
    out = run(_site_fleet(["A", "B", "C"]), 59, site=site)
    assert transitions(out, "site_offline") == [("firing", 12), ("resolved", 42)]
    dev = [o.signal for o in out if o.signal.rule_id == "offline"]
    assert sorted((s.device_id, s.status) for s in dev) == [(d, st) for d in "ABC" for st in ("firing", "resolved")]
    assert {s.caused_by for s in dev} == {"site_offline/S1"}
    site_sig = next(o.signal for o in out if o.signal.rule_id == "site_offline")
    assert site_sig.scope == "site" and site_sig.site_id == "S1" and site_sig.device_id is None
    # the per-device firing waited for the site decision: emitted at offline + wait
    firing = [o for o in out if o.signal.rule_id == "offline" and o.signal.status == "firing"]
    assert all(o.emitted_min >= o.occurred_min + 2 for o in firing)


def test_single_machine_offline_is_not_a_site_outage() -> None:
    site = SiteOptions(min_devices=3, min_fraction=0.5, wait_s=120)
    out = run(_site_fleet(["A"]), 59, site=site)
    assert transitions(out, "site_offline") == []
    [firing] = [o.signal for o in out if o.signal.rule_id == "offline" and o.signal.status == "firing"]
    assert firing.device_id == "A" and firing.caused_by is None


def test_site_fraction_uses_registry_size() -> None:
    site = SiteOptions(min_devices=3, min_fraction=0.5, wait_s=120)
    eng = make_engine(site=site)
    eng.set_site_sizes({"S1": 10})  # 3 of 10 machines is not half the site
    out = run(_site_fleet(["A", "B", "C"]), 59, engine=eng)
    assert transitions(out, "site_offline") == []


def test_state_per_device_is_bounded() -> None:
    eng = make_engine()
    rnd = random.Random(1)
    for i in range(20_000):
        t = T0 + i * 5
        eng.process(f"e{i}", "VM-1", "S1", "transaction", t, {**FAIL, "payment_status": rnd.choice(["success", "failure"]),
                                                             "vend_status": rnd.choice(["success", "failure"])})
        eng.process(f"s{i}", "VM-1", "S1", "stock_alert", t, {"slot": f"A{i % 40}", "level": rnd.choice(["low", "ok", "out"])})
        eng.process(f"c{i}", "VM-1", "S1", "log", t, {"kind": "crash"})
        eng.advance(t)
    assert len(eng.encode_device(eng.devices["VM-1"])) < 2048


def _random_timeline(seed: int) -> list[Ev]:
    rnd = random.Random(seed)
    evs = []
    for i in range(600):
        m = i * 0.5 + rnd.random() * 0.4
        dev = f"VM-{rnd.randrange(6)}"
        site = "S1" if dev < "VM-4" else "S2"
        kind = rnd.randrange(6)
        if kind == 0:
            evs.append(Ev(m, "telemetry", {"refrigeration_temp_c": rnd.choice([3, 9]), "door_open": rnd.random() < 0.1,
                                           "cpu_pct": rnd.choice([10, 95])}, device=dev, site=site))
        elif kind == 1:
            evs.append(Ev(m, "transaction", {**FAIL, "payment_status": rnd.choice(["success", "failure"]),
                                             "vend_status": rnd.choice(["success", "failure"])}, device=dev, site=site))
        elif kind == 2:
            evs.append(Ev(m, "fault", {"code": rnd.choice(["motor_jam", "display_failure"]),
                                       "state": rnd.choice(["raised", "cleared"])}, device=dev, site=site))
        elif kind == 3:
            evs.append(Ev(m, "heartbeat", {"firmware_version": rnd.choice(["1", "1", "2"])}, device=dev, site=site))
        elif kind == 4:
            evs.append(Ev(m, "stock_alert", {"slot": f"A{rnd.randrange(3)}", "level": rnd.choice(["low", "out", "ok"])},
                          device=dev, site=site))
        else:
            evs.append(Ev(m, "connectivity", {"location_id": rnd.choice(["L1", "L2"]), "signal_dbm": -110},
                          device=dev, site=site))
    for i, e in enumerate(evs):
        e.id = f"r{i}"
    return evs


def _restore_into_new(eng: Engine) -> Engine:
    fresh = make_engine(lateness_s=eng.lateness, site=eng.site)
    for d, dev in eng.devices.items():
        fresh.restore_device(d, eng.encode_device(dev))
    fresh.restore_sites(eng.encode_sites())
    return fresh


def test_checkpoint_restore_gives_identical_signals() -> None:
    site = SiteOptions(min_devices=2, min_fraction=0.5, wait_s=60)
    evs = _random_timeline(3)
    whole = [(o.signal.signal_id, o.signal.caused_by) for o in run(evs, 400, site=site, lateness_s=30)]
    assert len(whole) > 50
    for cut in (37.0, 150.0, 299.5):
        eng = make_engine(site=site, lateness_s=30)
        first = run([e for e in evs if e.t < cut], cut, engine=eng)
        second = run([e for e in evs if e.t >= cut], 400, engine=_restore_into_new(eng), start=cut)
        assert [(o.signal.signal_id, o.signal.caused_by) for o in first + second] == whole, cut


def test_offline_again_after_coming_back_is_detected_on_time() -> None:
    # regression: after a resolve the absence timer must be re-armed, not wait for an event
    out = run([Ev(0, "heartbeat", {}), Ev(20, "heartbeat", {})], 45, site=SiteOptions(wait_s=60))
    offline = [(o.signal.status, o.occurred_min, o.emitted_min) for o in out if o.signal.rule_id == "offline"]
    assert offline == [("firing", 10, 11), ("resolved", 20, 20), ("firing", 30, 31)]


def test_registry_shortening_the_timeout_moves_the_deadline() -> None:
    eng = make_engine()
    out = run([Ev(0, "heartbeat", {})], 1, engine=eng)
    eng.set_device_info("VM-1", "S1", heartbeat_interval_s=60)  # now 3 minutes instead of 10
    out += run([], 6, engine=eng, start=1)
    assert [(o.signal.status, o.occurred_min, o.emitted_min) for o in out if o.signal.rule_id == "offline"] == [
        ("firing", 3, 3)]
