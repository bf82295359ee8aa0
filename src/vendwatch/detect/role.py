"""The detector role: events topic in, signals topic out, state checkpointed with offsets.

Exactly-once output across crashes, with two stores (the log and the state store):

1. a batch of events is evaluated and the resulting signals are appended to the
   ``signals`` topic (durable on return) *before* any checkpoint that reflects them;
2. a checkpoint writes, in one state-store transaction, the changed device states,
   each partition's next offset and event clock, and the ``signals`` end offsets;
3. after a crash, the last checkpoint is loaded, the signal ids appended after its
   ``signals`` end offsets are read back, and re-evaluating the events after the
   checkpoint regenerates those signals with the same deterministic ids: they are
   dropped instead of appended. Missing ones (crash before the append) are appended.

Per-partition hooks (``on_assign`` loads a partition's devices and position,
``on_revoke`` checkpoints and forgets them) let a Kafka consumer group move
partitions between detector replicas.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import msgspec

from vendwatch.bus.base import EVENTS, SIGNALS, Consumer, JoinedRecords, Record, TopicPartition
from vendwatch.bus.batch import decode_run, run_records
from vendwatch.detect import metrics as m
from vendwatch.detect import store
from vendwatch.detect.engine import Engine, SiteOptions
from vendwatch.detect.rules import RuleSet, load_ruleset
from vendwatch.observe.lag import LagMeter
from vendwatch.observe.logs import subject
from vendwatch.observe.metrics import observe_age, observe_hop
from vendwatch.runtime import Context
from vendwatch.signals import Signal, encode_signal
from vendwatch.stage import set_aside

log = logging.getLogger("vendwatch.detect")


class LeanEvent(msgspec.Struct):
    """The fields of a stored event the detector reads (others are skipped by the decoder)."""

    event_id: str
    device_id: str
    type: str
    occurred_at: datetime
    data: msgspec.Raw
    site_id: str | None = None


class _LeanWithData(msgspec.Struct):
    """``LeanEvent`` with its payload decoded in the same pass (a bulk read): the values the
    per-record path gets from ``_lean`` and then ``_data``, and it fails where they fail."""

    event_id: str
    device_id: str
    type: str
    occurred_at: datetime
    data: dict[str, Any]
    site_id: str | None = None


class _SignalId(msgspec.Struct):
    signal_id: str


_lean = msgspec.json.Decoder(LeanEvent)
_lean_run = msgspec.json.Decoder(list[_LeanWithData])
_sid = msgspec.json.Decoder(_SignalId)
_data = msgspec.json.Decoder(dict)


def build_engine(ctx: Context, ruleset: RuleSet | None = None) -> Engine:
    """An engine configured from ``ctx.settings.detect``."""
    s = ctx.settings.detect
    return Engine(
        ruleset or load_ruleset(s.rule_files, s.default_pack),
        allowed_lateness_s=s.allowed_lateness_s,
        site=SiteOptions(min_devices=s.site_min_devices, min_fraction=s.site_min_fraction, wait_s=s.site_wait_s),
        recent_ids=s.recent_ids_per_device,
    )


class Detector:
    """The ``detector`` component (``vendwatch run detector``)."""

    name = "detector"
    topic = EVENTS
    # read each poll in bulk (``Consumer.poll_joined``, ``evaluate_runs``) rather than a
    # ``Record`` and two decoder calls per event (``evaluate``); same outcome
    bulk_read = True

    def __init__(self, ctx: Context, engine: Engine | None = None) -> None:
        self.ctx = ctx
        # the detector's tables (registered by detect.store) exist even when the state
        # store was opened before this module was imported (`vendwatch run detector`)
        ctx.state.migrate()
        self.s = ctx.settings.detect
        self.engine = engine or build_engine(ctx)
        self.group = "vendwatch-detector"
        self.positions: dict[int, int] = {}
        self.clocks: dict[int, float] = {}
        self.assigned: list[int] = []
        self.pending: list[Signal] = []  # evaluated but not yet durable on the signals topic
        self._pending_since = 0.0  # when the oldest of them was evaluated (monotonic)
        # signals wait at most this long to be appended together with those of the next polls
        # (always before a checkpoint): a durable append per poll was the role's largest cost
        # per event under live load, where polls are small
        self.signal_flush_s = self.s.signal_flush_s
        self.caught_up = False
        self._consumer: Consumer | None = None
        self._last_checkpoint = time.monotonic()
        self._last_registry = 0.0
        self._last_lag = 0.0
        self.lag = LagMeter("detector", every_s=5.0)
        self._sites_loaded = False
        # while re-evaluating after a crash: where the signals not yet seen again start
        self._recovery_start: dict[int, int] | None = None
        self._foreign: list[float] = []
        self._foreign_at = -1e18

    # -- assignment ----------------------------------------------------------------
    def on_assign(self, parts: list[TopicPartition]) -> None:
        """Load the checkpoint of each newly assigned partition (devices, position, clock)."""
        st = self.ctx.state
        if not self._sites_loaded:
            raw = st.load_checkpoint(store.sites_name(self.group))
            if raw:
                self.engine.restore_sites(raw)
            self._sites_loaded = True
        self._refresh_registry(force=True)
        recovered: list[store.PartitionCheckpoint] = []
        fresh: list[int] = []
        for topic, p in parts:
            if topic != self.topic:
                continue
            cp = store.load_partition(st, self.group, topic, p)
            if p not in self.assigned:
                self.assigned.append(p)
            if cp is None:
                fresh.append(p)
                continue
            assert self._consumer is not None
            self._consumer.seek(topic, p, cp.offset)
            self.positions[p] = cp.offset
            if cp.clock is not None:
                self.clocks[p] = cp.clock
            n = 0
            for device_id, blob in store.iter_devices(st, p):
                self.engine.restore_device(device_id, blob)
                n += 1
            recovered.append(cp)
            log.info("detector: partition %s/%s resumes at offset %s with %s devices", topic, p, cp.offset, n)
        if recovered:
            self._recover(recovered)
        if fresh:
            # record where a fresh partition starts, so a crash before the first regular
            # checkpoint still knows which signals were emitted since
            assert self._consumer is not None
            pos = self._consumer.position()
            for p in fresh:
                self.positions[p] = pos.get((self.topic, p), 0)
            self.checkpoint(only=fresh)
        m.DEVICES.set(len(self.engine.devices))

    def _recover(self, cps: list[store.PartitionCheckpoint]) -> None:
        """Remember the ids of signals appended after the checkpoint: re-evaluation must not repeat them."""
        start: dict[int, int] = {}
        for cp in cps:
            for p, off in cp.signals_end.items():
                start[p] = min(start.get(p, off), off)
        lg = self.ctx.log
        ends = lg.end_offsets(SIGNALS)
        if self._recovery_start is not None:  # an earlier recovery had not finished
            start = {p: min(o, self._recovery_start.get(p, o)) for p, o in start.items()}
        self._recovery_start = start
        n = 0
        for p, off in start.items():
            while off < ends.get(p, 0):
                recs = lg.read(SIGNALS, p, off, 5000)
                if not recs:
                    break
                for r in recs:
                    try:
                        self.engine.suppress.add(_sid.decode(r.value).signal_id)
                        n += 1
                    except msgspec.DecodeError:
                        log.warning("detector: undecodable record %s/%s on the signals topic", p, r.offset)
                off = recs[-1].offset + 1
        if n:
            log.info("detector: %s signals emitted after the last checkpoint will not be repeated", n)

    def on_revoke(self, parts: list[TopicPartition]) -> None:
        """Checkpoint, then forget the devices of the revoked partitions.

        The partitions are released even when the checkpoint fails (the error is raised
        after): their next owner, or this replica once reassigned, resumes from the
        previous checkpoint and recognises the signals emitted since by id.
        """
        if not self.assigned:
            return
        try:
            # signals of records the engine took in before a failure cut a step short:
            # they go out with the state that produced them
            self._take_signals()
            self.checkpoint()  # appends them first
        finally:
            gone = {p for t, p in parts if t == self.topic}
            self.engine.drop_devices([d for d, dev in self.engine.devices.items() if dev.part in gone])
            for p in gone:
                self.positions.pop(p, None)
                self.clocks.pop(p, None)
            self.assigned = [p for p in self.assigned if p not in gone]
            m.DEVICES.set(len(self.engine.devices))

    # -- registry ------------------------------------------------------------------------
    def _refresh_registry(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_registry < self.s.registry_refresh_s:
            return
        self._last_registry = now
        devices, sizes = store.registry(self.ctx.state)
        for device_id, site_id, hb, meta in devices:
            self.engine.set_device_info(device_id, site_id, float(hb) if hb else None, meta)
        self.engine.set_site_sizes(sizes)

    # -- the loop ------------------------------------------------------------------------
    def _clock(self) -> tuple[float, float]:
        """The clock and how far timers stay behind it.

        Live (clock=wall): a timer fires when the wall clock reaches its deadline, so
        silence is judged in real time and a late event retracts what fired too early.
        While records remain to be read, the clock is at most as far as the slowest
        partition's newest event read (the read frontier): under load that is a fraction
        of a second behind, and no timer fires ahead of events already on the log. A
        frontier further behind than the allowed lateness is a backlog (a restart after
        downtime): there, as always with clock=event, timers also wait the allowed
        lateness, which costs no real time in a replay and spares false alarms from
        events that were merely delayed.
        """
        lateness = self.s.allowed_lateness_s
        if self.s.clock == "wall":
            now = time.time()
            if self.caught_up:
                return now, 0.0
            frontier = self._event_clock()
            if frontier >= now - lateness:
                return min(now, frontier), 0.0
            return frontier, lateness
        return self._event_clock(), lateness

    def _event_clock(self) -> float:
        # the slowest partition that still has records to read holds the clock back, so
        # a partition read later cannot deliver events the clock already passed
        if not self.clocks:
            return -float("inf")
        ends = self.ctx.log.end_offsets(self.topic)
        busy = [c for p, c in self.clocks.items() if self.positions.get(p, 0) < ends.get(p, 0)]
        # partitions this replica does not own hold the clock back too while they are
        # behind: after a replica dies its partitions wait (session timeout) and then replay
        # from their checkpoint; had our clock run ahead meanwhile, their events would reach
        # the engine after timers they should have prevented (a global low watermark)
        busy.extend(self._foreign_clocks(ends))
        return min(busy) if busy else max(self.clocks.values())

    def _foreign_clocks(self, ends: dict[int, int]) -> list[float]:
        """Checkpointed clocks of other replicas' (or orphaned) partitions with unread records."""
        now = time.monotonic()
        if now - self._foreign_at < 0.5:
            return self._foreign
        self._foreign_at = now
        out = []
        for p, end in ends.items():
            if p in self.clocks or p in self.assigned:
                continue
            cp = store.load_partition(self.ctx.state, self.group, self.topic, p)
            if cp is not None and cp.clock is not None and cp.offset < end:
                out.append(cp.clock)
        self._foreign = out
        return out

    def evaluate(self, records: list[Record]) -> None:
        """Feed records to the engine (in order within each partition)."""
        eng = self.engine
        evaluated = undecodable = 0
        dups = eng.duplicates
        for r in records:
            try:
                e = _lean.decode(r.value)
                data = _data.decode(e.data)
            except (msgspec.DecodeError, RecursionError) as exc:
                undecodable += 1
                set_aside(self.ctx, self.name, r, f"{type(exc).__name__}: {exc}")  # a stage dead letter
                self.positions[r.partition] = r.offset + 1
                continue
            t = e.occurred_at.timestamp()
            eng.process(e.event_id, e.device_id, e.site_id, e.type, t, data, r.partition)
            evaluated += 1
            self.positions[r.partition] = r.offset + 1
            if t > self.clocks.get(r.partition, -float("inf")):
                self.clocks[r.partition] = t
        dup = eng.duplicates - dups
        m.EVENTS.labels("evaluated").inc(evaluated - dup)
        if dup:
            m.EVENTS.labels("duplicate").inc(dup)
        if undecodable:
            m.EVENTS.labels("undecodable").inc(undecodable)

    def evaluate_runs(self, runs: list[JoinedRecords]) -> int:
        """``evaluate`` for records read in bulk: one decoder call per partition run; a run
        that does not decode as a whole goes record by record (undecodable ones are set
        aside there). Returns how many records were read."""
        eng = self.engine
        evaluated = dup = 0
        for j in runs:
            evs = decode_run(_lean_run, j)
            if evs is None:
                self.evaluate(run_records(self.ctx.log, j))
                continue
            p, dups = j.partition, eng.duplicates
            try:
                eng.process_run(evs, p)  # ``process`` per event, the loop inside the engine
            finally:
                # what the engine has taken in, exactly as the per-record path records it
                # (a checkpoint after a failure must neither skip nor repeat a record)
                n = eng.run_taken
                if n:
                    self.positions[p] = j.offsets[n - 1] + 1
                    self.clocks[p] = max(self.clocks.get(p, -float("inf")), eng.run_clock)
                evaluated += n
                dup += eng.duplicates - dups
        m.EVENTS.labels("evaluated").inc(evaluated - dup)
        if dup:
            m.EVENTS.labels("duplicate").inc(dup)
        return sum(len(j.offsets) for j in runs)

    def step(self) -> int:
        """Poll once, evaluate, fire timers, emit; checkpoint when due. Returns records read."""
        if self._consumer is None:
            for topic in (self.topic, SIGNALS):
                self.ctx.log.create_topic(topic)  # appending to a missing topic is not allowed
            self._consumer = self.ctx.log.consumer(self.group, [self.topic], on_assign=self.on_assign,
                                                   on_revoke=self.on_revoke)
        self._flush_if_due()  # signals a failed append left behind go first
        wait = self.s.tick_interval_s
        if self.pending:  # an idle log must not hold pending signals back
            wait = max(0.0, min(wait, self._pending_since + self.signal_flush_s - time.monotonic()))
        if self.bulk_read:  # one string per partition, one decoder call per run
            runs = self._consumer.poll_joined(self.s.batch_size, wait)
            t0 = time.perf_counter()
            n = self.evaluate_runs(runs)
            self.lag.processed_runs(runs, "evaluated")
        else:
            recs = self._consumer.poll(self.s.batch_size, wait)
            t0 = time.perf_counter()
            self.evaluate(recs)
            n = len(recs)
            self.lag.processed(recs, "evaluated")
        self.caught_up = n < self.s.batch_size
        replayed = self.caught_up and bool(self.engine.suppress) and self._at_end()
        self.engine.advance(*self._clock())
        self._take_signals()
        if replayed:
            # everything is re-evaluated and the timers it made due have run (they emitted
            # before the crash too): ids left were not regenerated (another writer's)
            self.engine.suppress.clear()
            self._recovery_start = None
        m.EVAL_SECONDS.observe(time.perf_counter() - t0)
        self._flush_if_due()
        if time.monotonic() - self._last_checkpoint >= self.s.checkpoint_interval_s:
            self.checkpoint()  # appends the pending signals first
        self._refresh_registry()
        self._observe()
        return n

    def _at_end(self) -> bool:
        ends = self.ctx.log.end_offsets(self.topic)
        return all(self.positions.get(p, 0) >= ends.get(p, 0) for p in self.assigned)

    def _take_signals(self) -> None:
        out = self.engine.drain()
        if out:
            if not self.pending:
                self._pending_since = time.monotonic()
            self.pending.extend(out)

    def _flush_if_due(self) -> None:
        if self.pending and time.monotonic() - self._pending_since >= self.signal_flush_s:
            self.flush()

    def flush(self) -> None:
        """Append pending signals durably to the signals topic (key = dedupe key)."""
        if not self.pending:
            return
        self.ctx.log.append(SIGNALS, [(s.dedupe_key, encode_signal(s)) for s in self.pending])
        # one counter update per rule and status, not per signal (a labelled child costs a lookup)
        for (rule_id, status), n in Counter((s.rule_id, s.status) for s in self.pending).items():
            m.SIGNALS.labels(rule_id, status).inc(n)
        # debug: a replay or a backlog emits thousands per second; incidents log at info
        debug = log.isEnabledFor(logging.DEBUG)
        durable = time.time()
        for s in self.pending:
            if debug:
                log.debug("signal %s %s (%s)", s.status, s.dedupe_key, s.rule_id,
                          extra=subject(signal_id=s.signal_id, device_id=s.device_id, site_id=s.site_id,
                                        dedupe_key=s.dedupe_key, severity=s.severity))
            if s.status == "firing":  # the transition's event time -> the signal is durable
                age = durable - s.occurred_at.timestamp()  # appends wait up to signal_flush_s
                observe_hop("signal", age)
                observe_age("signal", age)
            if s.retracts:
                m.RETRACTIONS.labels(s.rule_id).inc()
        self.pending = []

    def checkpoint(self, only: list[int] | None = None) -> None:
        """Append the pending signals, then save changed devices, positions, clocks and the
        signals end offsets in one transaction."""
        self.flush()
        if self.pending or self.engine.out:
            return  # state ahead of the signals topic must never be saved
        t0 = time.perf_counter()
        eng = self.engine
        dirty, eng.dirty = eng.dirty, set()
        rows = []
        size = 0
        for d in dirty:
            dev = eng.devices.get(d)
            if dev is not None:
                blob = eng.encode_device(dev)
                size += len(blob)
                rows.append((d, dev.part, blob))
        ends = self.ctx.log.end_offsets(SIGNALS)
        if self.engine.suppress and self._recovery_start is not None:
            # signals emitted before the crash are still ahead of us: a crash now must
            # read them back again, so keep pointing at where they start
            ends = self._recovery_start
        parts = {p: store.PartitionCheckpoint(offset=self.positions.get(p, 0), clock=self.clocks.get(p),
                                              signals_end=ends)
                 for p in (only if only is not None else self.assigned)}
        st = self.ctx.state
        try:
            with st.db.transaction() as tx:
                store.save(tx, st, self.group, self.topic, rows, parts, eng.encode_sites(), time.time())
        except BaseException:
            eng.dirty |= dirty
            raise
        self._last_checkpoint = time.monotonic()
        m.CHECKPOINT_SECONDS.observe(time.perf_counter() - t0)
        if rows:
            m.STATE_BYTES.set(size / len(rows) * len(eng.devices))

    def _observe(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 5.0:
            return
        self._last_lag = now
        ends = self.ctx.log.end_offsets(self.topic)
        self.lag.measure({self.topic: ends}, [((self.topic, p), self.positions.get(p, 0)) for p in self.assigned])
        m.LAG_RECORDS.set(self.lag.records)
        m.DEVICES.set(len(self.engine.devices))
        if self.engine.watermark > 0:
            m.WATERMARK_LAG.set(time.time() - self.engine.watermark)
        m.SUPPRESSED.inc(self.engine.suppressed)
        self.engine.suppressed = 0

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; a clean stop checkpoints."""
        try:
            if not stop.is_set():
                self.step()  # assignment: the partitions' device states are loaded
                # what exists now (modules, rules, generated handlers, restored devices) lives
                # as long as the role: moved out of the collector's generations, the periodic
                # collections no longer walk it (~7 % of decoding and evaluating an event). Cyclic
                # garbage is collected first so that none of it is kept.
                gc.collect()
                gc.freeze()
            while not stop.is_set():
                self.step()
        finally:
            c, self._consumer = self._consumer, None
            if c is not None:
                c.close()  # on_revoke: flush + checkpoint


def build(ctx: Context) -> Detector:
    return Detector(ctx)
