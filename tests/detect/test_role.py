"""The detector role over a real SQLite log and state store: checkpoints, crash
recovery (in-process and SIGKILL of a real process), partition handover, summary."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from tests.conftest import vendwatch_cmd
from tests.detect.harness import synthetic_fleet

from vendwatch.bus.base import EVENTS, SIGNALS
from vendwatch.config import load_settings
from vendwatch.detect import engine as engine_mod
from vendwatch.detect.role import Detector
from vendwatch.detect.summary import summary
from vendwatch.runtime import Context
from vendwatch.signals import Signal, decode_signal

SETTINGS = {
    "detect.clock": "event",  # deterministic: timers follow event time
    "detect.batch_size": 300,
    "detect.checkpoint_interval_s": 0.0,
    "detect.tick_interval_s": 0.05,
    "detect.allowed_lateness_s": 60.0,
    "detect.site_wait_s": 120.0,
}
ENV = {f"VENDWATCH_{k.upper().replace('.', '__')}": str(v) for k, v in SETTINGS.items()}
# the killed process checkpoints less often, so kills land between appends and checkpoints
ENV["VENDWATCH_DETECT__CHECKPOINT_INTERVAL_S"] = "0.1"
ENV["VENDWATCH_DETECT__BATCH_SIZE"] = "50"


@pytest.fixture(scope="module")
def fleet() -> list[tuple[str, bytes]]:
    return synthetic_fleet(n_devices=40, hours=6)


def make_ctx(data_dir: Path, **more: Any) -> Context:
    return Context(load_settings(overrides={"data_dir": str(data_dir), **SETTINGS, **more}))


def seed(data_dir: Path, records: list[tuple[str, bytes]]) -> int:
    ctx = make_ctx(data_dir)
    ctx.log.create_topic(EVENTS)
    for i in range(0, len(records), 5000):
        ctx.log.append(EVENTS, records[i : i + 5000])
    ctx.close()
    return len(records)


def run_to_end(det: Detector) -> None:
    idle = 0
    while idle < 2:
        idle = idle + 1 if det.step() == 0 else 0
    det.checkpoint()


def on_topic(ctx: Context) -> list[Signal]:
    out = []
    for p, end in ctx.log.end_offsets(SIGNALS).items():
        out += [decode_signal(r.value) for r in ctx.log.read(SIGNALS, p, 0, end + 1)]
    return out


def ident(s: Signal) -> tuple[Any, ...]:
    return (s.signal_id, s.rule_id, s.status, s.dedupe_key, s.occurred_at, s.caused_by, s.severity)


def per_key(sigs: list[Signal]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for s in sigs:  # within a signals partition (one key) the order is the emission order
        out.setdefault(s.dedupe_key, []).append(ident(s))
    return out


@pytest.fixture(scope="module")
def reference(fleet: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory) -> list[Signal]:
    d = tmp_path_factory.mktemp("ref")
    seed(d, fleet)
    ctx = make_ctx(d)
    run_to_end(Detector(ctx))
    sigs = on_topic(ctx)
    ctx.close()
    return sigs


def test_reference_run_finds_the_injected_faults(reference: list[Signal]) -> None:
    fired = Counter(s.rule_id for s in reference if s.status == "firing")
    for rule in ("offline", "site_offline", "food_safety_temperature", "motor_jam", "repeated_transaction_failures",
                 "crash_loop"):
        assert fired[rule] > 0, (rule, fired)
    assert fired["site_offline"] == 1
    site_devs = [s for s in reference if s.rule_id == "offline" and s.site_id == "S3" and s.status == "firing"]
    assert len(site_devs) == 4 and {s.caused_by for s in site_devs} == {"site_offline/S3"}
    assert len({s.signal_id for s in reference}) == len(reference)  # no duplicates


def _crash_after(det: Detector, steps: int, *, lose_pending: bool) -> None:
    """Run ``steps`` steps, then die: checkpoints stop; optionally the last signals never reach the log."""
    for _ in range(steps):
        det.step()
    det.checkpoint = lambda only=None: None  # type: ignore[method-assign]
    for _ in range(3):
        det._consumer.poll  # noqa: B018 - keep the consumer alive; evaluation continues below
        recs = det._consumer.poll(det.s.batch_size, 0.05)  # type: ignore[union-attr]
        det.evaluate(recs)
        det.engine.advance(*det._clock())
        det.pending.extend(det.engine.drain())
        if not lose_pending:
            det.flush()


@pytest.mark.parametrize("lose_pending", [False, True], ids=["signals-appended", "signals-lost"])
def test_crash_between_append_and_checkpoint(fleet: list[tuple[str, bytes]], reference: list[Signal],
                                             tmp_path: Path, lose_pending: bool) -> None:
    seed(tmp_path, fleet)
    ctx = make_ctx(tmp_path)
    _crash_after(Detector(ctx), 25, lose_pending=lose_pending)
    # a new process: nothing survives but the log and the state store
    ctx2 = make_ctx(tmp_path)
    det2 = Detector(ctx2)
    det2.step()  # assignment: loads the checkpoint and reads back the signals emitted after it
    assert (det2.engine.suppressed + len(det2.engine.suppress) > 0) == (not lose_pending)
    run_to_end(det2)
    got = on_topic(ctx2)
    assert Counter(map(ident, got)) == Counter(map(ident, reference))
    assert per_key(got) == per_key(reference)


def test_clean_handover_resumes_where_it_stopped(fleet: list[tuple[str, bytes]], reference: list[Signal],
                                                 tmp_path: Path) -> None:
    seed(tmp_path, fleet)
    ctx = make_ctx(tmp_path)
    det = Detector(ctx)
    for _ in range(30):
        det.step()
    parts = det._consumer.assignment()  # type: ignore[union-attr]
    det._consumer.close()  # type: ignore[union-attr]  # revoke: checkpoint, drop state
    assert det.engine.devices == {} and det.assigned == []
    ctx2 = make_ctx(tmp_path)
    det2 = Detector(ctx2)
    run_to_end(det2)
    assert sorted(det2.assigned) == sorted(p for _t, p in parts)
    assert Counter(map(ident, on_topic(ctx2))) == Counter(map(ident, reference))


@pytest.fixture(scope="module")
def big_fleet() -> list[tuple[str, bytes]]:
    return synthetic_fleet(n_devices=120, hours=8, seed=11)


@pytest.fixture(scope="module")
def big_reference(big_fleet: list[tuple[str, bytes]], tmp_path_factory: pytest.TempPathFactory) -> list[Signal]:
    d = tmp_path_factory.mktemp("bigref")
    seed(d, big_fleet)
    ctx = make_ctx(d, **{"detect.batch_size": 2000})  # batching must not change the outcome
    run_to_end(Detector(ctx))
    sigs = on_topic(ctx)
    ctx.close()
    return sigs


def _progress(data_dir: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True, timeout=5)
        rows = db.execute("SELECT data FROM checkpoints WHERE name LIKE 'detect:%:events/%'").fetchall()
        db.close()
    except sqlite3.OperationalError:
        return 0
    return sum(msgspec.msgpack.decode(r[0])["offset"] for r in rows)


def _start(data_dir: Path, log_path: Path, flush_s: str = "0.05") -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "VENDWATCH_LOG_LEVEL": "info", "VENDWATCH_DETECT__SIGNAL_FLUSH_S": flush_s}
    with open(log_path, "ab") as log:
        return subprocess.Popen(vendwatch_cmd("run", "detector", "--data-dir", str(data_dir)), env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


def _wait(pred: Any, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"detector exited early with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


# "0": an append per poll, so kills also land after signals went out but before the
# checkpoint that reflects them (the recovery path); "0.05" (the default): appends wait for
# the next polls' signals, so kills mostly lose signals not yet appended
@pytest.mark.parametrize("flush_s", ["0", "0.05"])
def test_sigkill_and_restart_emit_exactly_the_uninterrupted_signals(
        big_fleet: list[tuple[str, bytes]], big_reference: list[Signal], tmp_path: Path, flush_s: str) -> None:
    reference = big_reference
    seed(tmp_path, big_fleet)
    ctx = make_ctx(tmp_path)
    total = sum(ctx.log.end_offsets(EVENTS).values()) - len(ctx.log.end_offsets(EVENTS))  # offsets start at 1
    end_sum = sum(ctx.log.end_offsets(EVENTS).values())
    kills = 0
    log_path = tmp_path / "detector.log"
    for delay in (0.03, 0.05, 0.07, 0.03, 0.05):
        if kills == 3 or _progress(tmp_path) >= end_sum:
            break
        proc = _start(tmp_path, log_path, flush_s)
        base = _progress(tmp_path)
        # kill between its first checkpoint and the next (0.1 s later): signals appended
        # since that checkpoint are on the topic, the state that produced them is not
        _wait(lambda base=base: _progress(tmp_path) > base + 1000 or _progress(tmp_path) >= end_sum, 120, proc)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += _progress(tmp_path) < end_sum
    # the machine's speed decides how much each run gets done; two kills mid-run is the floor
    assert kills >= 2, "kills must land mid-run"
    started = log_path.read_text().count("running role detector")
    proc = _start(tmp_path, log_path)
    # SIGTERM only once it runs (its handler is installed before it says so)
    _wait(lambda: log_path.read_text().count("running role detector") > started, 120, proc)
    _wait(lambda: _progress(tmp_path) >= end_sum, 120, proc)
    time.sleep(0.3)  # let it tick once more at the end of the log
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    got = on_topic(ctx)
    assert total > 80_000
    assert len({s.signal_id for s in got}) == len(got), "a signal was emitted twice"
    assert Counter(map(ident, got)) == Counter(map(ident, reference))
    assert per_key(got) == per_key(reference)
    if flush_s == "0":  # at least one restart found signals newer than its checkpoint and did not repeat them
        assert "will not be repeated" in log_path.read_text(), log_path.read_text()[-3000:]


def test_summary_counts_signals_by_rule(reference: list[Signal], fleet: list[tuple[str, bytes]], tmp_path: Path) -> None:
    seed(tmp_path, fleet[:5000])
    ctx = make_ctx(tmp_path)
    run_to_end(Detector(ctx))
    sigs = on_topic(ctx)
    s = summary(ctx)
    assert s["signals_fired"] == dict(Counter(x.rule_id for x in sigs if x.status == "firing"))
    assert s["signals_resolved"] == dict(Counter(x.rule_id for x in sigs if x.status == "resolved"))
    assert sum(s["signals_fired"].values()) > 0


def test_metrics_follow_the_work(fleet: list[tuple[str, bytes]], tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("vendwatch_detect_events_total", outcome="evaluated"),
              value("vendwatch_detect_events_total", outcome="duplicate"),
              value("vendwatch_detect_signals_total", rule="offline", status="firing"),
              value("vendwatch_detect_eval_seconds_count"))
    seed(tmp_path, fleet[:8000])
    ctx = make_ctx(tmp_path)
    det = Detector(ctx)
    run_to_end(det)
    evaluated = value("vendwatch_detect_events_total", outcome="evaluated") - before[0]
    duplicates = value("vendwatch_detect_events_total", outcome="duplicate") - before[1]
    assert evaluated + duplicates == 8000 and duplicates > 0
    offline = [s for s in on_topic(ctx) if s.rule_id == "offline" and s.status == "firing"]
    assert value("vendwatch_detect_signals_total", rule="offline", status="firing") - before[2] == len(offline)
    assert value("vendwatch_detect_eval_seconds_count") > before[3]
    assert value("vendwatch_detect_state_bytes") > 0


# --- after a crash near the end of the log (issue: signals repeated after SIGKILL) ------
def _silent_machine_history(base: float, minutes: int) -> list[tuple[str, bytes]]:
    """Five machines with a heartbeat a minute from ``base``; VM-1 falls silent at minute 10."""
    from datetime import UTC, datetime

    from vendwatch import events as ev

    out = []
    for m in range(minutes):
        for d in range(5):
            if d == 1 and m >= 10:
                continue
            t = datetime.fromtimestamp(base + m * 60 + d, UTC)
            se = ev.StoredEvent(event_id=f"VM-{d}-{m}", device_id=f"VM-{d}", type="heartbeat", occurred_at=t,
                                received_at=t, data=msgspec.Raw(b'{"interval_s": 60}'), site_id="S1")
            out.append((f"VM-{d}", ev.encode(se)))
    return out


@pytest.mark.parametrize("clock", ["event", "wall"])
def test_timers_due_after_replay_are_not_repeated(tmp_path: Path, clock: str) -> None:
    # 40 minutes ending now; VM-1 silent for the last 30 (offline: 3 missed heartbeats)
    seed(tmp_path, _silent_machine_history(time.time() - 40 * 60, 40))
    # signals appended with each poll: the crash lands after the append, before a checkpoint
    more = {"detect.clock": clock, "detect.batch_size": 5000, "detect.signal_flush_s": 0.0}
    ctx = make_ctx(tmp_path, **more)
    det = Detector(ctx)
    assign = det.on_assign

    def assign_then_die(parts: list[Any]) -> None:
        assign(parts)  # checkpoints where the fresh partitions start...
        det.checkpoint = lambda only=None: None  # type: ignore[method-assign]  # ...then never again

    det.on_assign = assign_then_die  # type: ignore[method-assign]
    det.step()  # every event in one batch; the offline timer runs once the batch is evaluated
    before = on_topic(ctx)
    assert [(s.rule_id, s.device_id, s.status) for s in before] == [("offline", "VM-1", "firing")]
    # a new process replays the events after the checkpoint: the offline timer runs again
    ctx2 = make_ctx(tmp_path, **more)
    run_to_end(Detector(ctx2))
    after = on_topic(ctx2)
    assert [s.signal_id for s in after] == [s.signal_id for s in before], "a signal was emitted twice"


def _refunds(base: float, minutes: list[float], device: str = "VM-1") -> list[tuple[str, bytes]]:
    from datetime import UTC, datetime

    from vendwatch import events as ev

    out = []
    for m in minutes:
        t = datetime.fromtimestamp(base + m * 60, UTC)
        se = ev.StoredEvent(event_id=f"{device}-refund-{m}", device_id=device, type="refund", occurred_at=t,
                            received_at=t, data=msgspec.Raw(b'{"amount_minor": 200}'), site_id="S1")
        out.append((device, ev.encode(se)))
    return out


def test_late_refund_after_a_resolve_does_not_repeat_the_firing_across_a_crash(tmp_path: Path) -> None:
    # refunds_above_normal: 6 refunds within 1 h. Six refunds of three hours ago fire, and
    # the wall clock resolves them at once (the window closed long ago). A refund sent
    # late (a device resending what it buffered while the collector was being killed)
    # fills the window again: the firing it makes must not carry the first firing's id.
    base = time.time() - 3 * 3600
    seed(tmp_path, _refunds(base, [0, 1, 2, 3, 4, 5]))
    more = {"detect.clock": "wall", "detect.batch_size": 5000}
    ctx = make_ctx(tmp_path, **more)
    det = Detector(ctx)
    det.step()
    rule = "refunds_above_normal"
    assert [s.status for s in on_topic(ctx) if s.rule_id == rule] == ["firing", "resolved"]
    ctx.log.append(EVENTS, _refunds(base, [3.5]))
    det.step()
    # SIGKILL: the role object is gone; a new process resumes over the same data directory
    ctx2 = make_ctx(tmp_path, **more)
    run_to_end(Detector(ctx2))
    got = [s for s in on_topic(ctx2) if s.rule_id == rule]
    ids = Counter(s.signal_id for s in got)
    assert [sid for sid, n in ids.items() if n > 1] == [], "a signal was emitted twice"
    # the late refund shows the first resolve was early: the rule fires again from then on
    assert [(s.status, round((s.occurred_at.timestamp() - base) / 60, 3)) for s in got] == [
        ("firing", 5.0), ("resolved", 60.0), ("firing", 60.0), ("resolved", 61.0)]


def test_failed_checkpoint_on_revoke_still_releases_the_partitions(
        fleet: list[tuple[str, bytes]], reference: list[Signal], tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from vendwatch.detect import store

    class StateStoreError(Exception):
        pass

    seed(tmp_path, fleet)
    ctx = make_ctx(tmp_path)
    det = Detector(ctx)
    for _ in range(10):
        det.step()
    parts = sorted(det.assigned)
    real_save = store.save

    def broken(*a: Any, **kw: Any) -> None:
        raise StateStoreError("state store unavailable")

    store.save = broken  # type: ignore[assignment]
    try:
        with pytest.raises(StateStoreError):
            det._consumer.close()  # type: ignore[union-attr]  # revoke: the checkpoint fails
    finally:
        store.save = real_save  # type: ignore[assignment]
    det._consumer = None
    # the partitions are released all the same: nothing of them stays behind
    assert det.assigned == [] and det.engine.devices == {} and det.positions == {}
    det.step()  # the component is restarted: a new consumer, the partitions again
    assert sorted(det.assigned) == parts
    run_to_end(det)
    det._last_lag = -1e9
    det._observe()
    assert REGISTRY.get_sample_value("vendwatch_detect_lag_records") == 0
    got = on_topic(ctx)
    assert len({s.signal_id for s in got}) == len(got)
    assert Counter(map(ident, got)) == Counter(map(ident, reference))


@pytest.mark.parametrize("site_wait_s", [0.0, 120.0])
def test_backtest_equals_the_live_detector(fleet: list[tuple[str, bytes]], tmp_path: Path, site_wait_s: float) -> None:
    from vendwatch.detect import backtest
    from vendwatch.detect.engine import SiteOptions
    from vendwatch.detect.rules import load_ruleset

    seed(tmp_path, fleet)
    ctx = make_ctx(tmp_path, **{"detect.site_wait_s": site_wait_s})
    run_to_end(Detector(ctx))
    live = on_topic(ctx)
    s = ctx.settings.detect
    site = SiteOptions(min_devices=s.site_min_devices, min_fraction=s.site_min_fraction, wait_s=site_wait_s)
    [bt] = backtest.run(backtest.log_events(ctx.log, 0, 4e9), [load_ruleset([], True)], end=max(
        x.occurred_at.timestamp() for x in live) + 1, site=site)
    # the live run's timers stop at its last event minus the allowed lateness
    horizon = max(x.occurred_at.timestamp() for x in live)
    key = sorted((x.signal_id, x.caused_by) for x in bt.signals if x.occurred_at.timestamp() <= horizon - 60)
    assert sorted((x.signal_id, x.caused_by) for x in live if x.occurred_at.timestamp() <= horizon - 60) == key
    assert any(x.rule_id == "site_offline" for x in live)


def _hb(device: str, t: float) -> tuple[str, bytes]:
    from datetime import UTC, datetime

    from vendwatch import events as ev

    at = datetime.fromtimestamp(t, UTC)
    return device, ev.encode(ev.StoredEvent(event_id=f"{device}-{t:.3f}", device_id=device, type="heartbeat",
                                            occurred_at=at, received_at=at, data=msgspec.Raw(b'{"interval_s": 60}'),
                                            site_id="S1"))


@pytest.mark.parametrize("crash", ["after-firing", "after-retraction"])
def test_live_retraction_survives_a_crash_without_repeat_or_loss(tmp_path: Path, crash: str) -> None:
    now = time.time()
    # VM-1 last heard 190 s ago: offline (3 x 60 s) 10 s ago; the others talk until now
    history = [_hb(f"VM-{d}", now - 600 + m * 60 + d) for m in range(10) for d in (0, 2, 3) if now - 600 + m * 60 + d < now]
    history.append(_hb("VM-1", now - 190))
    seed(tmp_path, history)
    # signals appended with each poll: the crash lands after the append, before a checkpoint
    more = {"detect.clock": "wall", "detect.batch_size": 5000, "detect.site_wait_s": 0.0, "detect.signal_flush_s": 0.0}
    ctx = make_ctx(tmp_path, **more)
    det = Detector(ctx)
    assign = det.on_assign

    def assign_then_die(parts: list[Any]) -> None:
        assign(parts)
        det.checkpoint = lambda only=None: None  # type: ignore[method-assign]  # no checkpoint after this

    det.on_assign = assign_then_die  # type: ignore[method-assign]
    det.step()
    [firing] = on_topic(ctx)
    assert (firing.rule_id, firing.device_id, firing.status) == ("offline", "VM-1", "firing")
    late = _hb("VM-1", now - 15)  # sent before the deadline, delivered after it
    if crash == "after-retraction":
        ctx.log.append(EVENTS, [late])
        det.step()
        assert [s.retracts for s in on_topic(ctx)] == [None, firing.signal_id]
    # a new process: the log and the state store survive
    ctx2 = make_ctx(tmp_path, **more)
    det2 = Detector(ctx2)
    det2.step()
    if crash == "after-firing":
        ctx2.log.append(EVENTS, [late])
    run_to_end(det2)
    got = on_topic(ctx2)
    assert [(s.signal_id, s.status, s.retracts) for s in got] == [
        (firing.signal_id, "firing", None), (got[1].signal_id, "resolved", firing.signal_id)]


def test_under_load_live_timers_follow_the_read_frontier_not_the_lateness(tmp_path: Path) -> None:
    now = time.time()
    # ten machines, a heartbeat every 10 s for 10 minutes; VM-1 silent for the last 60 s:
    # offline (3 x 10 s) 30 s ago, well within the allowed lateness of 60 s
    history = []
    for k in range(60):
        for d in range(10):
            t = now - 600 + k * 10 + d * 0.1
            if not (d == 1 and t > now - 60):
                history.append(_hb10(f"VM-{d}", t))
    seed(tmp_path, history)
    # a poll that does not reach the end of the log: the detector is not caught up
    ctx = make_ctx(tmp_path, **{"detect.clock": "wall", "detect.batch_size": len(history) - 5,
                                "detect.site_wait_s": 0.0})
    det = Detector(ctx)
    det.step()
    assert not det.caught_up
    fired = [(s.rule_id, s.device_id, s.status) for s in on_topic(ctx)]
    assert fired == [("offline", "VM-1", "firing")]  # not 60 s of lateness later


def _hb10(device: str, t: float) -> tuple[str, bytes]:
    from datetime import UTC, datetime

    from vendwatch import events as ev

    at = datetime.fromtimestamp(t, UTC)
    return device, ev.encode(ev.StoredEvent(event_id=f"{device}-{t:.3f}", device_id=device, type="heartbeat",
                                            occurred_at=at, received_at=at, data=msgspec.Raw(b'{"interval_s": 10}'),
                                            site_id="S1"))


# -- bulk reads: one decoder call per partition run, the same outcome as record by record --

class _RecordByRecord(Detector):
    """The detector as it read the log before bulk reads: a Record and two decodes per event."""

    bulk_read = False


def _checkpoints(ctx: Context) -> dict[str, Any]:
    rows = ctx.state.db.query("SELECT name, data FROM checkpoints WHERE name LIKE 'detect:%:events/%'")
    return {n: {k: v for k, v in msgspec.msgpack.decode(d).items() if k != "signals_end"} for n, d in rows}


def test_the_detector_reads_in_bulk_and_emits_what_record_by_record_emits(
        fleet: list[tuple[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vendwatch.bus.sqlite import SqliteLog

    bulk_dir, per_dir = tmp_path / "bulk", tmp_path / "per-record"
    undecodable = ("VM-X", b'{"event_id": "x", "not": "an event"}')
    for d in (bulk_dir, per_dir):
        seed(d, fleet[:3000] + [undecodable] + fleet[3000:])
    reads: list[tuple[str, int]] = []
    real_read = SqliteLog.read

    def counting_read(self: SqliteLog, topic: str, partition: int, *a: Any, **kw: Any) -> Any:
        reads.append((topic, partition))
        return real_read(self, topic, partition, *a, **kw)

    monkeypatch.setattr(SqliteLog, "read", counting_read)
    bulk_ctx, per_ctx = make_ctx(bulk_dir), make_ctx(per_dir)
    run_to_end(Detector(bulk_ctx))
    # records were made only for the run holding the undecodable value (to set it aside)
    [bad_partition] = {p for _t, p in reads if _t == EVENTS}
    run_to_end(_RecordByRecord(per_ctx))
    bulk, per = on_topic(bulk_ctx), on_topic(per_ctx)
    assert len(bulk) > 20
    assert Counter(map(ident, bulk)) == Counter(map(ident, per))
    assert per_key(bulk) == per_key(per)
    assert _checkpoints(bulk_ctx) == _checkpoints(per_ctx)
    from vendwatch.state.deadletters import DeadLetters

    [dl] = DeadLetters(bulk_ctx.state.db).list(stage="detector")
    assert dl.partition == bad_partition and dl.key == "VM-X"
    assert [(d.partition, d.offset) for d in DeadLetters(per_ctx.state.db).list(stage="detector")] == [
        (dl.partition, dl.offset)]
    bulk_ctx.close()
    per_ctx.close()


def test_a_failure_inside_a_bulk_run_checkpoints_exactly_the_records_taken_in(
        fleet: list[tuple[str, bytes]], reference: list[Signal], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(tmp_path, fleet)
    ctx = make_ctx(tmp_path)
    det = Detector(ctx)
    for _ in range(10):
        det.step()
    seen = [0]

    def failing_crc32(data: bytes) -> int:  # the engine's first step on each event
        seen[0] += 1
        if seen[0] == 120:  # in the middle of the next run
            raise RuntimeError("engine bug")
        return zlib.crc32(data)

    monkeypatch.setattr(engine_mod, "zlib", SimpleNamespace(crc32=failing_crc32))
    before = dict(det.positions)
    with pytest.raises(RuntimeError):
        for _ in range(5):
            det.step()
    moved = {p: o for p, o in det.positions.items() if o != before.get(p)}
    assert moved, "the failing step had taken in records of its run"
    monkeypatch.undo()
    det._consumer.close()  # type: ignore[union-attr]  # what the role's exit does: revoke = checkpoint
    ctx.close()
    ctx2 = make_ctx(tmp_path)
    run_to_end(Detector(ctx2))
    got = on_topic(ctx2)
    assert Counter(map(ident, got)) == Counter(map(ident, reference))
    assert per_key(got) == per_key(reference)
    ctx2.close()


def test_signals_of_consecutive_polls_go_out_in_one_append_and_exactly_once(
        fleet: list[tuple[str, bytes]], reference: list[Signal], tmp_path: Path) -> None:
    # live polls are small; a durable append per poll was the role's largest cost per event
    seed(tmp_path, fleet)
    ctx = make_ctx(tmp_path, **{"detect.batch_size": 50, "detect.checkpoint_interval_s": 3600.0})
    appends = []
    real = ctx.log.append

    def counting(topic: str, items: Any) -> Any:
        if topic == SIGNALS:
            appends.append(len(items))
        return real(topic, items)

    ctx.log.append = counting  # type: ignore[method-assign]
    det = Detector(ctx)
    det.signal_flush_s = 3600.0  # only checkpoints and the end flush
    steps = 0
    while det.step():
        steps += 1
    assert steps > 100 and appends == [], "signals wait for the flush delay or a checkpoint"
    det._consumer.close()  # type: ignore[union-attr]  # revoke: flush + checkpoint
    assert len(appends) == 1
    got = on_topic(ctx)
    assert Counter(map(ident, got)) == Counter(map(ident, reference))
    assert per_key(got) == per_key(reference)
    ctx.close()


def test_a_pending_signal_does_not_wait_for_the_tick_on_an_idle_log(tmp_path: Path) -> None:
    seed(tmp_path, synthetic_fleet(n_devices=4, hours=2))
    ctx = make_ctx(tmp_path, **{"detect.tick_interval_s": 30.0, "detect.checkpoint_interval_s": 3600.0,
                                "detect.batch_size": 100_000, "detect.signal_flush_s": 1.0})
    det = Detector(ctx)
    det.step()  # every event in one poll
    assert det.pending and not on_topic(ctx), "signals wait for the next polls' signals"
    t0 = time.monotonic()
    det.step()  # nothing to read: the poll waits for the flush delay, not the 30 s tick
    assert time.monotonic() - t0 < 5.0
    assert not det.pending and len(on_topic(ctx)) > 0
    det._consumer.close()  # type: ignore[union-attr]
    ctx.close()
