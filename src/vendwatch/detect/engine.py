"""The detection engine: pure, single-threaded, clock injected.

``Engine.process`` folds one event into its device's state; ``Engine.advance(now)``
fires the timers (absence, sustained durations, window expiry, quiet periods) whose
deadline is at or before ``now``: a timer fires at its own deadline, it does not wait
for late events. Signals collect in ``Engine.out`` and are taken with ``drain()``.
Nothing here does I/O: the role feeds records from the log (live: ``now`` is wall
time) and the backtest feeds stored events, both with their own clock.

Time semantics (docs/detection.md, "Time"):

* every transition carries the *event time* at which it happened (an event's
  ``occurred_at``, or a timer's deadline), never the time it was computed, so a replay
  produces the same signals with the same deterministic ids;
* before an event of a device is applied, that device's timers due at or before the
  event's time fire: per device the outcome does not depend on when the watermark
  moved;
* a duplicate ``event_id`` (bounded memory per device) changes nothing;
* an event that arrives late (occurred at most ``allowed_lateness_s`` before ``now``)
  and shows that a machine already reported offline was not silent *retracts* that
  offline: a ``resolved`` signal with ``retracts`` = the firing's id (a false alarm).
"""

from __future__ import annotations

import heapq
import math
import re
import struct
import zlib
from array import array
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

from vendwatch.detect.kinds import Kind, kind_for
from vendwatch.detect.rules import Rule, RuleSet, render
from vendwatch.events import PAYLOADS
from vendwatch.signals import Signal, signal_id

INF = math.inf
UTC = UTC
_STATE_VERSION = 1


def ts(t: float) -> datetime:
    """Epoch seconds to an aware UTC datetime."""
    return datetime.fromtimestamp(t, UTC)


class DeviceState:
    """Everything the engine remembers about one device (kept small: see docs, "State")."""

    __slots__ = ("device_id", "site_id", "part", "recent", "rpos", "last_t", "wake", "rules", "fields",
                 "visit_start", "visit_end", "hb_interval", "hb_reported", "meta", "clears")

    def __init__(self, device_id: str, site_id: str | None, part: int) -> None:
        self.device_id = device_id
        self.site_id = site_id
        self.part = part
        self.recent = b""  # crc32 of recent event ids (4 bytes each); a bytearray ring once it exists
        self.rpos = 0
        self.last_t = -INF  # newest event time seen
        self.wake = INF  # earliest timer deadline (a heap entry exists for it)
        self.rules: dict[int, Any] = {}  # rule index -> per-rule instance state (only when non-idle)
        # last known values 'while' conditions read: [time, value] per tracked field, flat
        # (Engine.field_slot); a list, because a dict per device costs 200 bytes more
        self.fields: list[Any] | None = None
        self.visit_start: float | None = None  # service visit (refill started/completed)
        self.visit_end: float | None = None
        self.hb_interval: float | None = None  # heartbeat interval from the registry
        self.hb_reported: float | None = None  # heartbeat interval the device reports
        self.meta: dict[str, Any] | None = None  # registry meta (per-device overrides)
        self.clears: array[float] | None = None  # newest clear time per match rule (Engine.clear_slot)


class SiteOptions(msgspec.Struct, frozen=True):
    min_devices: int = 3
    min_fraction: float = 0.5
    wait_s: float = 120.0


class Engine:
    """Evaluates a rule set over events; see the module docstring for the time model."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        allowed_lateness_s: float = 60.0,
        site: SiteOptions | None = None,
        recent_ids: int = 32,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        self.rules: list[Rule] = list(ruleset.rules)
        self.lateness = allowed_lateness_s  # how late an event may come and still retract an offline
        self.site = site or SiteOptions()
        self.recent_ids = recent_ids
        self.wall = wall or (lambda: datetime.now(UTC))
        self._clear_slots: list[int] = []  # match rules with a clear condition, by slot
        self._clears_template: array[float] = array("d")
        self.kinds: list[Kind] = [kind_for(r)(i, r, self) for i, r in enumerate(self.rules)]
        self._rule_index = {(r.id, r.version): i for i, r in enumerate(self.rules)}
        self._always: list[Kind] = [k for k in self.kinds if k.types is None]
        self._by_type: dict[str, list[Kind]] = {}
        for k in self.kinds:
            for t in k.types or ():
                self._by_type.setdefault(t, []).append(k)
        # fields whose last value 'while' conditions read, per event type
        self._tracked: dict[str, tuple[str, ...]] = {}
        for k in self.kinds:
            for t, fs in k.tracked_fields().items():
                self._tracked[t] = tuple(sorted(set(self._tracked.get(t, ())) | set(fs)))
        names = sorted({f for fs in self._tracked.values() for f in fs})
        self.field_slot: dict[str, int] = {f: 2 * i for i, f in enumerate(names)}
        self._handlers = self._build_handlers()
        self.devices: dict[str, DeviceState] = {}
        self.dirty: set[str] = set()
        self._heap: list[tuple[float, str]] = []
        self.watermark = -INF  # timers due at or before it have run
        self.now = -INF  # the clock the lateness of an event is measured against
        self.out: list[Signal] = []
        self.suppress: set[str] = set()  # signal ids already on the output topic (recovery)
        self.duplicates = 0
        self.in_order = True
        self.from_event = False
        self.events = 0
        self.suppressed = 0
        self.run_taken = 0  # process_run: events of the last run taken in, and the newest time among them
        self.run_clock = -INF
        self._info: dict[str, tuple[str | None, float | None, dict[str, Any] | None]] = {}
        # site correlation: (rule index, site) -> {device: [offline_since, back_at | None]}
        self.site_off: dict[tuple[int, str], dict[str, list[Any]]] = {}
        self.site_firing: dict[tuple[int, str], list[Any]] = {}  # -> [since, count]
        self.site_sizes: dict[str, int] = {}
        self._registry_sizes: dict[str, int] = {}
        self._sites_intern: dict[str, str] = {}

    def _build_handlers(self) -> dict[str, Callable[..., None]]:
        """One generated function per event type running every applicable rule in order.

        Each kind contributes source with a cheap guard (``Kind.fast_src``), so an event
        that cannot change a rule's state costs an inlined predicate, not a call. A payload
        field several guards read is looked up once per event (the handlers never change
        the payload, so every lookup would give the same value).
        """
        out: dict[str, Callable[..., None]] = {}
        for etype in [*PAYLOADS, None]:
            kinds = self._always + (self._by_type.get(etype, []) if etype else [])
            env: dict[str, Any] = {"ENGINE": self}
            lines: list[str] = []
            # device-level facts some rules read, kept before the rules run
            if etype == "refill":
                lines.append("ENGINE._visit(dev, t, d)")
            elif etype == "heartbeat":
                lines += ["iv = d.get('interval_s')", "if iv and iv != dev.hb_reported:",
                          "    dev.hb_reported = float(iv)", "    if R:", "        ENGINE.reschedule(dev)"]
            lines += self._track_src(self._tracked.get(etype or "", ()))
            for k in kinds:
                name = f"K{k.idx}"
                env[name] = k
                src, kenv = k.fast_src(etype or "", name)
                env.update(kenv)
                lines += src
            body = _hoist_lookups(lines)
            head = ["def handle(dev, etype, t, d, eid):", "    R = dev.rules", "    C = dev.clears"]
            exec(compile("\n".join(head + ["    " + line for line in body]), f"<detect handler {etype}>", "exec"), env)  # noqa: S102 - from validated rules
            out[etype or ""] = env["handle"]
        return out

    def _track_src(self, fields: tuple[str, ...]) -> list[str]:
        """Keep the newest value of ``fields`` ('while' conditions read them), inlined."""
        lines: list[str] = []
        for f in fields:
            i = self.field_slot[f]
            lines += [f"fv = d.get({f!r})", "if fv is not None:", "    F = dev.fields", "    if F is None:",
                      f"        F = dev.fields = [None] * {2 * len(self.field_slot)}",
                      f"    if F[{i}] is None or F[{i}] <= t:", f"        F[{i}] = t", f"        F[{i + 1}] = fv"]
        return lines

    def clear_slot(self, idx: int) -> int:
        """A slot in ``DeviceState.clears`` for match rule ``idx``."""
        self._clear_slots.append(idx)
        return len(self._clear_slots) - 1

    def new_clears(self) -> array[float]:
        if len(self._clears_template) != len(self._clear_slots):
            self._clears_template = array("d", [-INF] * len(self._clear_slots))
        return self._clears_template[:]

    # -- registry ----------------------------------------------------------------
    def set_device_info(self, device_id: str, site_id: str | None = None,
                        heartbeat_interval_s: float | None = None, meta: dict[str, Any] | None = None) -> None:
        """Per-device settings from the registry (heartbeat interval, meta overrides)."""
        self._info[device_id] = (site_id, heartbeat_interval_s, meta or None)
        dev = self.devices.get(device_id)
        if dev is not None and (dev.hb_interval != heartbeat_interval_s or dev.meta != (meta or None)):
            dev.hb_interval = heartbeat_interval_s
            dev.meta = meta or None
            self.reschedule(dev)  # a shorter timeout moves a deadline earlier

    def set_site_sizes(self, sizes: dict[str, int]) -> None:
        """Number of machines per site according to the registry (site correlation denominators)."""
        self._registry_sizes = dict(sizes)

    def site_size(self, site: str) -> int:
        return max(self.site_sizes.get(site, 0), self._registry_sizes.get(site, 0))

    # -- events ------------------------------------------------------------------
    def _device(self, device_id: str, site_id: str | None, part: int) -> DeviceState:
        if site_id is not None:
            site_id = self._sites_intern.setdefault(site_id, site_id)
        info = self._info.get(device_id)
        if info is not None and site_id is None:
            site_id = info[0]
        dev = DeviceState(device_id, site_id, part)
        if info is not None:
            dev.hb_interval, dev.meta = info[1], info[2]
        self.devices[device_id] = dev
        if site_id is not None:
            self.site_sizes[site_id] = self.site_sizes.get(site_id, 0) + 1
        return dev

    def process(self, event_id: str, device_id: str, site_id: str | None, etype: str, t: float,
                data: dict[str, Any], part: int = 0) -> None:
        """Fold one event (``t`` = occurred_at in epoch seconds, ``data`` = decoded payload)."""
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self._device(device_id, site_id, part)
        c = zlib.crc32(event_id.encode())
        h = c.to_bytes(4, "little")
        rec = dev.recent
        pos = rec.find(h)
        while pos >= 0:  # a hit must be aligned on an entry; others are byte coincidences
            if pos % 4 == 0:
                self.duplicates += 1
                return
            pos = rec.find(h, pos + 1)
        if not rec:
            # allocated once at its full size; an all-zero slot is empty (a CRC of 0 would
            # read as a duplicate of nothing: one event in 4 billion)
            rec = dev.recent = bytearray(4 * self.recent_ids)
        _put_crc(rec, 4 * dev.rpos, c)
        dev.rpos = (dev.rpos + 1) % self.recent_ids
        self.events += 1
        self.dirty.add(device_id)
        if dev.wake <= t:
            self._tick_device(dev, t, from_event=True)
        self.in_order = t >= dev.last_t  # kinds treat out-of-order events more carefully
        if self.in_order:
            dev.last_t = t
        handle = self._handlers.get(etype) or self._handlers.get("")
        if handle is not None:
            handle(dev, etype, t, data, event_id)

    def process_run(self, events: Iterable[Any], part: int = 0) -> None:
        """``process`` for a run of decoded events of one partition, each with the attributes
        ``event_id``, ``device_id``, ``site_id``, ``type``, ``occurred_at`` (a datetime) and
        ``data``: the same outcome as calling ``process`` per event, with the loop's lookups
        done once per run, and once per device for consecutive events of one device (a
        device sends its events in batches). Afterwards (also after an exception)
        ``run_taken`` is the number of events taken in and ``run_clock`` the newest event
        time among them."""
        devices = self.devices
        handlers = self._handlers
        other = handlers.get("")
        crc32 = zlib.crc32
        put = _put_crc
        ring = self.recent_ids
        mark_dirty = self.dirty.add
        taken = fresh = dups = 0
        clock = -INF
        in_order = self.in_order
        dev: DeviceState | None = None
        device_id: str | None = None
        marked = False
        try:
            for e in events:
                t = e.occurred_at.timestamp()
                if e.device_id != device_id:
                    device_id = e.device_id
                    dev = devices.get(device_id)
                    if dev is None:
                        dev = self._device(device_id, e.site_id, part)
                    marked = False
                event_id = e.event_id
                c = crc32(event_id.encode())
                h = c.to_bytes(4, "little")
                rec = dev.recent  # type: ignore[union-attr]
                pos = rec.find(h)
                while pos >= 0:  # as in ``process``: only an aligned hit is a duplicate
                    if pos % 4 == 0:
                        break
                    pos = rec.find(h, pos + 1)
                if pos >= 0:
                    dups += 1
                else:
                    if not rec:
                        rec = dev.recent = bytearray(4 * ring)  # type: ignore[union-attr]
                    i = dev.rpos  # type: ignore[union-attr]
                    put(rec, 4 * i, c)
                    dev.rpos = (i + 1) % ring  # type: ignore[union-attr]
                    fresh += 1
                    if not marked:
                        mark_dirty(device_id)
                        marked = True
                    if dev.wake <= t:  # type: ignore[union-attr]
                        self._tick_device(dev, t, from_event=True)  # type: ignore[arg-type]
                    # the flag kinds read (out-of-order events are treated more carefully),
                    # stored only when it changes
                    if t >= dev.last_t:  # type: ignore[union-attr]
                        dev.last_t = t  # type: ignore[union-attr]
                        if not in_order:
                            self.in_order = in_order = True
                    elif in_order:
                        self.in_order = in_order = False
                    etype = e.type
                    handle = handlers.get(etype) or other
                    if handle is not None:
                        handle(dev, etype, t, e.data, event_id)
                taken += 1
                if t > clock:
                    clock = t
        finally:
            self.events += fresh
            self.duplicates += dups
            self.run_taken = taken
            self.run_clock = clock

    @staticmethod
    def _visit(dev: DeviceState, t: float, data: dict[str, Any]) -> None:
        if data.get("phase", "completed") == "started":
            if dev.visit_start is None or t > dev.visit_start:
                dev.visit_start = t
                if dev.visit_end is not None and dev.visit_end < t:
                    dev.visit_end = None
        elif dev.visit_end is None or t > dev.visit_end:
            dev.visit_end = t
            if dev.visit_start is None or dev.visit_start > t:
                dev.visit_start = t  # a completion without a start: a visit around that instant

    @staticmethod
    def in_visit(dev: DeviceState, t: float, grace: float, max_duration: float) -> bool:
        """Was a service visit open at ``t`` (with ``grace`` either side)?"""
        start = dev.visit_start
        if start is None or t < start - grace:
            return False
        end = dev.visit_end
        if end is None or end < start:
            return t <= start + max_duration
        return t <= end + grace

    # -- timers ------------------------------------------------------------------
    def schedule(self, dev: DeviceState, deadline: float) -> None:
        """Make sure ``dev`` is woken at ``deadline`` (later deadlines are found lazily)."""
        if deadline < dev.wake:
            dev.wake = deadline
            heapq.heappush(self._heap, (deadline, dev.device_id))

    def reschedule(self, dev: DeviceState) -> None:
        """Re-arm ``dev`` after something other than its own rules moved a deadline earlier."""
        d = min((self.kinds[i].deadline(dev, inst) for i, inst in dev.rules.items()), default=INF)
        self.schedule(dev, d)

    def _tick_device(self, dev: DeviceState, now: float, from_event: bool = False) -> None:
        """Run the device's timers due at or before ``now``.

        From the watermark (``from_event`` False), timers run one deadline at a time in
        global deadline order, so cross-device decisions (site correlation) see every
        device whose deadline came first. From a device's own event they only catch up
        that device; decisions that involve other devices wait for the watermark.
        """
        wake = INF
        kinds = self.kinds
        self.from_event = from_event
        for idx in list(dev.rules):
            k = kinds[idx]
            inst = dev.rules[idx]
            d = k.deadline(dev, inst)
            if d <= now:
                k.tick(dev, inst, now)
                inst = dev.rules.get(idx)
                d = k.deadline(dev, inst) if inst is not None else INF
                if d <= now and not from_event:  # a kind must move its deadline past `now`; never spin
                    d = now + 1e-3
            if d < wake:
                wake = d
        self.from_event = False
        dev.wake = wake
        if wake < INF:
            heapq.heappush(self._heap, (wake, dev.device_id))
        self.dirty.add(dev.device_id)

    def advance(self, now: float, hold_back: float = 0.0) -> None:
        """Move the clock to ``now`` (epoch s): fire the timers due at the watermark ``now - hold_back``.

        Live the watermark is the clock itself; a replay driven by event time holds it
        back by the allowed lateness (``Detector._clock``). Due timers run in deadline
        order, each at its own deadline (a discrete-event simulation of the interval),
        which makes the outcome independent of how far the watermark jumped at once.
        """
        if now > self.now:
            self.now = now
        w = now - hold_back
        if w <= self.watermark:
            return
        self.watermark = w
        heap = self._heap
        devices = self.devices
        while heap and heap[0][0] <= w:
            at, name = heapq.heappop(heap)
            if name[0] == "\x00":
                _, idx, site = name.split("\x00", 2)
                self._site_check(int(idx), site, at)
                continue
            dev = devices.get(name)
            if dev is None or dev.wake != at:
                continue  # stale entry
            self._tick_device(dev, at)

    # -- output ------------------------------------------------------------------
    def late_enough_to_retract(self, t: float) -> bool:
        """Is an event of time ``t`` within the allowed lateness (may it still retract a signal)?"""
        return t >= self.now - self.lateness

    def emit(self, rule: Rule, dev: DeviceState, status: str, at: float, key: str,
             evidence: dict[str, Any] | None = None, event_ids: Iterable[str] = (),
             caused_by: str | None = None, event: dict[str, Any] | None = None,
             retracts: str | None = None) -> None:
        occurred = ts(at)
        sid = signal_id(rule.id, key, status, occurred)
        if sid in self.suppress:
            self.suppress.discard(sid)
            self.suppressed += 1
            return
        ev = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in (evidence or {}).items()}
        values = {"rule_id": rule.id, "device_id": dev.device_id, "site_id": dev.site_id or "", **ev}
        if event is not None:
            values["event"] = _SafeView(event)
        self.out.append(Signal(
            signal_id=sid, rule_id=rule.id, status=status, severity=rule.severity,  # type: ignore[arg-type]
            dedupe_key=key, scope="device", kind=rule.kind, summary=render(rule.summary, values),
            occurred_at=occurred, emitted_at=self.wall(), device_id=dev.device_id, site_id=dev.site_id,
            rule_version=rule.version, labels=rule.labels, caused_by=caused_by,
            evidence={k: v for k, v in ev.items() if v is not None}, event_ids=list(event_ids)[:10],
            retracts=retracts,
        ))

    def emit_site(self, rule: Rule, site: str, status: str, at: float, count: int, size: int) -> str:
        p = rule.params
        key = f"{p['site_rule_id']}/{site}"
        occurred = ts(at)
        sid = signal_id(p["site_rule_id"], key, status, occurred)
        if sid in self.suppress:
            self.suppress.discard(sid)
            self.suppressed += 1
            return key
        values = {"rule_id": p["site_rule_id"], "site_id": site, "count": count, "size": size}
        self.out.append(Signal(
            signal_id=sid, rule_id=p["site_rule_id"], status=status, severity=p["site_severity"],
            dedupe_key=key, scope="site", kind="incident", summary=render(p["site_summary"], values),
            occurred_at=occurred, emitted_at=self.wall(), site_id=site, rule_version=rule.version,
            labels=rule.labels, evidence={"offline": count, "site_size": size, "device_rule": rule.id},
        ))
        return key

    def drain(self) -> list[Signal]:
        out, self.out = self.out, []
        return out

    # -- site correlation --------------------------------------------------------
    def site_offline(self, idx: int, dev: DeviceState, since: float) -> None:
        if dev.site_id is not None:
            self.site_off.setdefault((idx, dev.site_id), {})[dev.device_id] = [since, None]

    def site_back(self, idx: int, dev: DeviceState, at: float) -> None:
        if dev.site_id is None:
            return
        key = (idx, dev.site_id)
        offs = self.site_off.get(key)
        if offs is None:
            return
        entry = offs.get(dev.device_id)
        if entry is not None:
            entry[1] = at
        # always, even if the site signal is not firing yet: the watermark may not have
        # reached its instant, and the heap keeps the check in event-time order
        self._push_site_check(at + self.site.wait_s, idx, dev.site_id)

    def _push_site_check(self, at: float, idx: int, site: str) -> None:
        # site checks share the device timer heap ("\x00" sorts before any device id)
        heapq.heappush(self._heap, (at, f"\x00{idx}\x00{site}"))

    def site_retract(self, idx: int, dev: DeviceState, emitted: bool = False) -> None:
        if dev.site_id is not None:
            offs = self.site_off.get((idx, dev.site_id))
            if offs is not None:
                offs.pop(dev.device_id, None)
            if emitted and (idx, dev.site_id) in self.site_firing and self.watermark > -INF:
                # the site may no longer be down without this machine: check at once
                self._site_check(idx, dev.site_id, self.watermark)

    def _offline_at(self, key: tuple[int, str], at: float) -> int:
        offs = self.site_off.get(key) or {}
        return sum(1 for s, e in offs.values() if s <= at and (e is None or e > at))

    def _site_threshold(self, n: int, size: int) -> bool:
        return n >= self.site.min_devices and n >= self.site.min_fraction * size

    def site_cause(self, idx: int, dev: DeviceState, at: float) -> str | None:
        """The site-level signal that explains ``dev`` being offline at ``at`` (firing it if needed)."""
        site = dev.site_id
        if site is None:
            return None
        rule = self.rules[idx]
        key = (idx, site)
        firing = self.site_firing.get(key)
        if firing is not None and firing[0] <= at:
            return f"{rule.params['site_rule_id']}/{site}"
        n = self._offline_at(key, at)
        size = max(self.site_size(site), n)
        if firing is None and self._site_threshold(n, size):
            self.site_firing[key] = [at, n]
            return self.emit_site(rule, site, "firing", at, n, size)
        return None

    def _site_check(self, idx: int, site: str, at: float) -> None:
        key = (idx, site)
        firing = self.site_firing.get(key)
        if firing is not None and firing[0] <= at:
            n = self._offline_at(key, at)
            size = max(self.site_size(site), n)
            if not self._site_threshold(n, size):
                del self.site_firing[key]
                self.emit_site(self.rules[idx], site, "resolved", at, n, size)
        # intervals that ended by now cannot count at any later instant
        offs = self.site_off.get(key)
        if offs is not None:
            for d in [d for d, (_s, e) in offs.items() if e is not None and e <= at]:
                del offs[d]
            if not offs:
                del self.site_off[key]

    # -- snapshots ---------------------------------------------------------------
    def encode_device(self, dev: DeviceState) -> bytes:
        rules = {self.rules[i].id: [self.rules[i].version, inst] for i, inst in dev.rules.items()}
        return _enc.encode([
            _STATE_VERSION, dev.site_id, dev.part, bytes(dev.recent), dev.rpos,
            None if dev.last_t == -INF else dev.last_t, rules,
            None if dev.fields is None else {f: dev.fields[i:i + 2] for f, i in self.field_slot.items()
                                             if dev.fields[i] is not None},
            dev.visit_start, dev.visit_end, dev.hb_reported,
            None if dev.clears is None else {self.rules[i].id: c for i, c in zip(self._clear_slots, dev.clears, strict=True)
                                             if c != -INF},
        ])

    def restore_device(self, device_id: str, blob: bytes) -> DeviceState:
        """Load a device from ``encode_device`` output; state of rules removed or re-versioned is dropped."""
        (ver, site_id, part, recent, rpos, last_t, rules, fields, vs, ve, hb, clears) = _dec.decode(blob)
        if ver != _STATE_VERSION:
            raise ValueError(f"device state version {ver} is not supported")
        old = self.devices.get(device_id)
        if old is not None and old.site_id is not None:
            self.site_sizes[old.site_id] -= 1
        self.devices.pop(device_id, None)
        dev = self._device(device_id, site_id, part)
        dev.recent = bytearray(recent) if recent else b""
        if dev.recent and len(dev.recent) != 4 * self.recent_ids:  # recent_ids_per_device changed
            dev.recent, dev.rpos = bytearray(4 * self.recent_ids), 0
        dev.rpos = rpos
        dev.last_t = -INF if last_t is None else last_t
        for rid, (rver, inst) in rules.items():
            idx = self._rule_index.get((rid, rver))
            if idx is not None:
                dev.rules[idx] = self.kinds[idx].restore(inst)
        if fields:
            dev.fields = [None] * (2 * len(self.field_slot))
            for f, (ft, fv) in fields.items():
                if f in self.field_slot:
                    i = self.field_slot[f]
                    dev.fields[i], dev.fields[i + 1] = ft, fv
        dev.visit_start, dev.visit_end, dev.hb_reported = vs, ve, hb
        if clears:
            dev.clears = self.new_clears()
            slots = {self.rules[i].id: n for n, i in enumerate(self._clear_slots)}
            for rid, c in clears.items():
                if rid in slots:
                    dev.clears[slots[rid]] = c
        wake = min((self.kinds[i].deadline(dev, inst) for i, inst in dev.rules.items()), default=INF)
        dev.wake = INF
        if wake < INF:
            self.schedule(dev, wake)
        return dev

    def drop_devices(self, device_ids: Iterable[str]) -> None:
        """Forget devices (their partition was revoked); their heap entries go stale."""
        for d in device_ids:
            dev = self.devices.pop(d, None)
            if dev is not None and dev.site_id is not None:
                self.site_sizes[dev.site_id] -= 1
            self.dirty.discard(d)

    def encode_sites(self) -> bytes:
        rid = {i: (r.id, r.version) for i, r in enumerate(self.rules)}
        return _enc.encode({
            "off": [[*rid[i], s, offs] for (i, s), offs in self.site_off.items() if offs],
            "firing": [[*rid[i], s, f] for (i, s), f in self.site_firing.items()],
            "checks": [[at, *rid[int(i)], s] for at, name in self._heap if name[0] == "\x00"
                       for _, i, s in [name.split("\x00", 2)]],
            "watermark": None if self.watermark == -INF else self.watermark,
        })

    def restore_sites(self, blob: bytes) -> None:
        doc = _dec.decode(blob)
        for r_id, ver, site, offs in doc["off"]:
            idx = self._rule_index.get((r_id, ver))
            if idx is not None:
                self.site_off[(idx, site)] = offs
        for r_id, ver, site, f in doc["firing"]:
            idx = self._rule_index.get((r_id, ver))
            if idx is not None:
                self.site_firing[(idx, site)] = f
        for at, r_id, ver, site in doc["checks"]:
            idx = self._rule_index.get((r_id, ver))
            if idx is not None:
                self._push_site_check(at, idx, site)
        if doc.get("watermark") is not None:
            self.watermark = max(self.watermark, doc["watermark"])
            self.now = max(self.now, self.watermark)


_put_crc = struct.Struct("<I").pack_into  # one entry of DeviceState.recent, in place

_LOOKUP = re.compile(r"\bd\.get\(('[A-Za-z0-9_]+')\)")
_BOUND = re.compile(r"\(\(v := (P\d+)\) is v and ")
_V = re.compile(r"\bv\b")


def _hoist_lookups(lines: list[str]) -> list[str]:
    """``lines`` with every payload field looked up once, first, into a local.

    ``d.get('f')`` appears in the guards of every rule that reads ``f``; the payload is
    not changed while a handler runs, so one lookup into a local gives the same value.
    A predicate then tests the local itself instead of binding it to ``v`` first
    (``_unbind``).
    """
    seen: dict[str, int] = {}
    for line in lines:
        for f in _LOOKUP.findall(line):
            seen[f] = seen.get(f, 0) + 1
    names = {f: f"P{n}" for n, f in enumerate(sorted(seen))}
    if not names:
        return lines
    head = [f"{var} = d.get({f})" for f, var in names.items()]
    return head + [_unbind(_LOOKUP.sub(lambda m: names[m.group(1)], line)) for line in lines]


def _unbind(line: str) -> str:
    """``((v := P3) is v and EXPR(v))`` -> ``(EXPR(P3))``: a predicate over a local needs no binding.

    The binding is how a generated predicate (``rules.compile_where``) names the value it
    reads; EXPR is a balanced parenthesised expression whose only variable is ``v``.
    """
    while (m := _BOUND.search(line)) is not None:
        depth, i = 0, m.start()
        while True:  # the end of the group that opened at m.start()
            c = line[i]
            if c in "'\"":
                i = line.index(c, i + 1)  # field names and constants: no escaped quotes
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        body = _V.sub(m.group(1), line[m.end():i])
        line = f"{line[:m.start()]}({body}){line[i + 1:]}"
    return line


class _SafeView(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
