"""Rule kinds: how each rule type turns events and timer ticks into transitions.

A kind keeps its per-device state as plain lists/dicts (cheap, and encodable as-is in
a checkpoint) in ``DeviceState.rules[index]``, only while it has something to remember.
``deadline(dev, inst)`` says when ``tick`` must run next; the engine guarantees ``tick``
runs at or after it, with ``now`` = the event time or watermark that reached it.
"""

from __future__ import annotations

import bisect
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vendwatch.detect.rules import Rule, render
from vendwatch.signals import signal_id

if TYPE_CHECKING:
    from vendwatch.detect.engine import DeviceState, Engine

INF = math.inf


class _Safe(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


class Kind:
    """Base: one compiled rule bound to an engine."""

    types: frozenset[str] | None = frozenset()  # event types routed to on_event (None: all)

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        self.idx = idx
        self.rule = rule
        self.eng = eng
        self.p = rule.params
        # the common template is built by concatenation: keys are made for every match
        self.prefix = f"{rule.id}/" if rule.dedupe_key == "{rule_id}/{device_id}" else None

    def key(self, dev: DeviceState, data: dict[str, Any] | None = None) -> str:
        if self.prefix is not None:
            return self.prefix + dev.device_id
        values: dict[str, Any] = {"rule_id": self.rule.id, "device_id": dev.device_id, "site_id": dev.site_id or ""}
        if data is not None:
            values["event"] = _Safe(data)
        return render(self.rule.dedupe_key, values)

    def tracked_fields(self) -> dict[str, tuple[str, ...]]:
        return {}

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        """Source lines the engine inlines for ``etype`` (variables: dev, etype, t, d, eid, R).

        The default calls ``on_event``; kinds add a cheap guard so that the common case
        (the event cannot change this rule's state) costs no call at all.
        """
        return [f"{name}.on_event(dev, etype, t, d, eid)"], {}

    def _guarded(self, preds: list[Any], name: str, extra: str | None = None) -> tuple[list[str], dict[str, Any]]:
        if not preds or any(p is None for p in preds):
            return Kind.fast_src(self, "", name)
        env: dict[str, Any] = {}
        for p in preds:
            env.update(p.env)
        guard = " or ".join(f"({p.src})" for p in preds)
        if extra:
            guard = f"{extra} or {guard}"
        return [f"if {guard}:", f"    {name}.on_event(dev, etype, t, d, eid)"], env

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        raise NotImplementedError

    def deadline(self, dev: DeviceState, inst: Any) -> float:
        return INF

    def tick(self, dev: DeviceState, inst: Any, now: float) -> None:
        """Fire what is due at or before ``now``."""

    def restore(self, inst: Any) -> Any:
        return inst


# --- match ---------------------------------------------------------------------------
class MatchKind(Kind):
    """Fires on a matching event, resolves on a clear event or after a quiet period.

    inst: {dedupe_key: [firing_since, last_match_at]} (firing keys only). The time of
    the newest clear is kept per device and rule (``DeviceState.clears``) so that a
    raise arriving out of order after a newer clear does not fire.
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.match = self.p["match"]
        self.clear = self.p["clear"]
        self.resolve_after = self.p["resolve_after"]
        self.visit = "visit_grace" in self.p
        self.types = frozenset().union(*(m.types for m in (*self.match, *self.clear)))
        self.slot = eng.clear_slot(idx) if self.clear else -1
        # per event type: the clear and match predicates that apply (routing done once)
        self.route = {
            t: (tuple((m.pred, m.all_keys) for m in self.clear if t in m.types),
                tuple(m.pred for m in self.match if t in m.types))
            for t in self.types
        }

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        clears, matches = self.route[etype]
        if any(p is None for p, _a in clears) or any(p is None for p in matches):
            return super().fast_src(etype, name)
        env: dict[str, Any] = {"NEW_CLEARS": self.eng.new_clears}
        lines: list[str] = []
        kw = "if"
        for pred, all_keys in clears:
            # a clear is recorded even when nothing fires (out-of-order raises check it)
            env.update(pred.env)
            lines += [f"{kw} {pred.src}:", "    if C is None:", "        C = dev.clears = NEW_CLEARS()",
                      f"    if t > C[{self.slot}]:", f"        C[{self.slot}] = t",
                      f"    if {self.idx} in R:"]
            if all_keys or self.prefix is None:
                lines.append(f"        {name}._clear_recorded(dev, {all_keys}, t, d, eid)")
            else:  # ``_clear_recorded`` inlined for the one key the event can clear
                lines += [f"        i = R[{self.idx}]", f"        k = {self.prefix!r} + dev.device_id",
                          "        st = i.get(k)", "        if st is not None and t > st[0]:",
                          f"            {name}._resolve(dev, i, k, t, eid)"]
            kw = "elif"
        if matches:
            for p in matches:
                env.update(p.env)
            lines += [f"{kw} " + " or ".join(f"({p.src})" for p in matches) + ":", f"    {name}._on_match(dev, t, d, eid)"]
        return lines, env

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        clears, matches = self.route[etype]
        for pred, all_keys in clears:
            if pred is None or pred(data):
                self._on_clear(dev, all_keys, t, data, event_id)
                return
        for pred in matches:
            if pred is None or pred(data):
                self._on_match(dev, t, data, event_id)
                return

    def _on_clear(self, dev: DeviceState, all_keys: bool, t: float, data: dict[str, Any], event_id: str) -> None:
        self._record_clear(dev, t)
        self._clear_recorded(dev, all_keys, t, data, event_id)

    def _clear_recorded(self, dev: DeviceState, all_keys: bool, t: float, data: dict[str, Any], event_id: str) -> None:
        """A clear event whose time ``_record_clear`` has already kept: resolve what it ends."""
        inst = dev.rules.get(self.idx)
        if not inst:
            return
        for key in list(inst) if all_keys else (self.key(dev, data),):
            st = inst.get(key)
            # strictly later: a state report at the very instant of the raise (often
            # taken just before it) must not cancel it
            if st is not None and t > st[0]:
                self._resolve(dev, inst, key, t, event_id)

    def _record_clear(self, dev: DeviceState, t: float) -> None:
        clears = dev.clears
        if clears is None:
            clears = dev.clears = self.eng.new_clears()
        if t > clears[self.slot]:
            clears[self.slot] = t

    def _on_match(self, dev: DeviceState, t: float, data: dict[str, Any], event_id: str) -> None:
        eng = self.eng
        if self.visit and eng.in_visit(dev, t, self.p["visit_grace"], self.p["visit_max"]):
            return
        if not eng.in_order and dev.clears is not None and t <= dev.clears[self.slot]:
            return  # older than a clear we already saw
        inst = dev.rules.get(self.idx)
        if inst is None:
            inst = dev.rules[self.idx] = {}
        key = self.key(dev, data)
        st = inst.get(key)
        if st is not None:
            if t > st[1]:
                st[1] = t  # still firing: extends the quiet period
        else:
            st = inst[key] = [t, t]
            eng.emit(self.rule, dev, "firing", t, key, {}, (event_id,), event=data)
        if self.resolve_after is not None:
            eng.schedule(dev, st[1] + self.resolve_after)

    def _resolve(self, dev: DeviceState, inst: dict[str, list[Any]], key: str, at: float, event_id: str | None) -> None:
        del inst[key]
        if not inst:
            del dev.rules[self.idx]
        self.eng.emit(self.rule, dev, "resolved", at, key, {}, (event_id,) if event_id else ())

    def deadline(self, dev: DeviceState, inst: dict[str, list[Any]]) -> float:
        if self.resolve_after is None:
            return INF
        return min(st[1] for st in inst.values()) + self.resolve_after

    def tick(self, dev: DeviceState, inst: dict[str, list[Any]], now: float) -> None:
        if self.resolve_after is None:
            return
        for key, st in sorted(inst.items()):
            if st[1] + self.resolve_after <= now:
                self._resolve(dev, inst, key, st[1] + self.resolve_after, None)


# --- sustained -------------------------------------------------------------------------
class SustainedKind(Kind):
    """A condition true for ``for`` fires; false for ``clear_for`` resolves.

    inst: [state, since, value, last_observed_at] with state 1 = pending (true since),
    2 = firing, 3 = clearing (false since, still firing).
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.types = self.p["when"].types
        self.pred = self.p["when"].pred
        self.fields = self.p["fields"]
        self.first = self.fields[0]
        self.while_checks = self.p["while_checks"]
        self.while_fields = self.p["while_fields"]
        self.dur = self.p["for"]
        self.clear_for = self.p["clear_for"]
        thr = self.p["threshold"][self.first]
        self.threshold = " ".join(f"{k} {v}" for k, v in thr.items()) if isinstance(thr, dict) else f"= {thr}"

    def tracked_fields(self) -> dict[str, tuple[str, ...]]:
        return {t: self.while_fields for t in self.types} if self.while_fields else {}

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        # idle and the condition is false: nothing to do
        return self._guarded([self.pred], name, extra=f"{self.idx} in R")

    def _while_ok(self, dev: DeviceState) -> bool:
        known = dev.fields
        if known is None:
            return True
        slots = self.eng.field_slot
        for f, pred in self.while_checks:
            i = slots[f]
            if known[i] is not None and not pred({f: known[i + 1]}):
                return False
        return True

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        for f in self.fields:
            if data.get(f) is None:
                return
        inst = dev.rules.get(self.idx)
        if inst is not None and t < inst[3]:
            return  # older than the observation that set the current state
        cond = self.pred(data) and self._while_ok(dev)  # type: ignore[misc]
        value = data.get(self.first)
        if inst is None:
            if cond and self.eng.in_order:  # an out-of-order observation never starts a countdown
                inst = dev.rules[self.idx] = [1, t, value, t]
                if self.dur <= 0:
                    self._fire(dev, inst, t)
                else:
                    self.eng.schedule(dev, t + self.dur)
            return
        inst[3] = t
        state = inst[0]
        if state == 1:
            if cond:
                inst[2] = value
            else:
                del dev.rules[self.idx]
        elif state == 2:
            inst[2] = value
            if not cond:
                inst[0], inst[1] = 3, t
                if self.clear_for <= 0:
                    self._resolve(dev, t)
                else:
                    self.eng.schedule(dev, t + self.clear_for)
        elif cond:  # clearing, true again: firing continues
            inst[0], inst[2] = 2, value

    def _fire(self, dev: DeviceState, inst: list[Any], at: float) -> None:
        inst[0] = 2
        self.eng.emit(self.rule, dev, "firing", at, self.key(dev),
                      {"value": inst[2], "threshold": self.threshold, "for": self.dur})

    def _resolve(self, dev: DeviceState, at: float) -> None:
        inst = dev.rules.pop(self.idx)
        self.eng.emit(self.rule, dev, "resolved", at, self.key(dev),
                      {"value": inst[2], "threshold": self.threshold, "for": self.clear_for})

    def deadline(self, dev: DeviceState, inst: list[Any]) -> float:
        if inst[0] == 1:
            return inst[1] + self.dur
        if inst[0] == 3:
            return inst[1] + self.clear_for
        return INF

    def tick(self, dev: DeviceState, inst: list[Any], now: float) -> None:
        if inst[0] == 1 and inst[1] + self.dur <= now:
            self._fire(dev, inst, inst[1] + self.dur)
        elif inst[0] == 3 and inst[1] + self.clear_for <= now:
            self._resolve(dev, inst[1] + self.clear_for)


# --- absence ---------------------------------------------------------------------------
class AbsenceKind(Kind):
    """No (matching) event for a timeout: offline. Resolves with the next event.

    inst: [last_seen, offline_since | None, back_at | None, emitted, caused_by]
    It fires at the deadline; with site correlation the site decision is made at the
    fixed event-time instant offline_since + ``site.wait_s`` (0 by default: the deadline
    itself), identical on every replay, and the firing waits for it. An event older
    than the deadline that arrives after the firing retracts it (``_retract``).
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.of = self.p["of"]
        self.types = None if self.of is None else self.of.types
        self.after = self.p["after"]
        self.mult = self.p["multiplier"]
        self.meta_key = self.p["meta_key"]
        self.correlate = self.p["site_correlation"]
        self.wait = eng.site.wait_s if self.correlate else 0.0

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        if self.of is not None and self.of.pred is not None:
            return super().fast_src(etype, name)
        # the hot path (online device, newer event) inlined: it runs for every event
        return [f"i = R.get({self.idx})", "if i is not None and i[1] is None:", "    if t > i[0]:", "        i[0] = t",
                "else:", f"    {name}.on_event(dev, etype, t, d, eid)"], {}

    def timeout(self, dev: DeviceState) -> float:
        if self.meta_key and dev.meta:
            v = dev.meta.get(self.meta_key)
            if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
                return float(v)
        if self.mult:
            iv = dev.hb_interval or dev.hb_reported
            if iv:
                return iv * self.mult
        return self.after

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        if self.of is not None and not self.of(etype, data):
            return
        inst = dev.rules.get(self.idx)
        if inst is None:
            dev.rules[self.idx] = [t, None, None, False, None]
            self.eng.schedule(dev, t + self.timeout(dev))
            return
        if inst[1] is None:
            if t > inst[0]:
                inst[0] = t
            return
        if t <= inst[1]:
            # a late event shows it was not silent: retract the offline, pending or emitted
            # (emitted: only within the allowed lateness; an older event changes nothing,
            # the next current one resolves it)
            emitted = inst[3]
            if emitted and (inst[2] is not None or t <= inst[0] or not self.eng.late_enough_to_retract(t)):
                return
            if emitted:
                self._retract(dev, inst, t, event_id)
            inst[0], inst[1], inst[2], inst[3], inst[4] = max(inst[0], t), None, None, False, None
            self.eng.site_retract(self.idx, dev, emitted)
            self.eng.schedule(dev, self.deadline(dev, inst))
            return
        if inst[2] is None:
            inst[2] = t
            self.eng.site_back(self.idx, dev, t)
            if inst[3]:
                self._resolve(dev, inst)
                self.eng.schedule(dev, self.deadline(dev, inst))  # the timer runs again
            return
        if t > inst[0]:
            inst[0] = t

    def _retract(self, dev: DeviceState, inst: list[Any], t: float, event_id: str) -> None:
        key = self.key(dev)
        firing = signal_id(self.rule.id, key, "firing", datetime.fromtimestamp(inst[1], UTC))
        self.eng.emit(self.rule, dev, "resolved", inst[1], key,
                      {"silent_for": 0, "last_seen": t, "false_alarm": True}, (event_id,),
                      caused_by=inst[4], retracts=firing)

    def _resolve(self, dev: DeviceState, inst: list[Any]) -> None:
        back = inst[2]
        self.eng.emit(self.rule, dev, "resolved", back, self.key(dev),
                      {"silent_for": round(back - inst[1] + self.timeout(dev), 3), "last_seen": back},
                      caused_by=inst[4])
        inst[0], inst[1], inst[2], inst[3], inst[4] = max(inst[0], back), None, None, False, None

    def deadline(self, dev: DeviceState, inst: list[Any]) -> float:
        if inst[1] is None:
            return inst[0] + self.timeout(dev)
        if not inst[3]:
            return inst[1] + self.wait
        return INF

    def tick(self, dev: DeviceState, inst: list[Any], now: float) -> None:
        for _ in range(4):  # an offline interval can end and a new one start within one tick
            if inst[1] is None:
                d = inst[0] + self.timeout(dev)
                if d > now:
                    return
                inst[1] = d
                if self.correlate:
                    self.eng.site_offline(self.idx, dev, d)
            if inst[3] or inst[1] + self.wait > now:
                return
            if self.correlate and self.eng.from_event:
                return  # the site decision needs every device's timers up to then: the watermark's job
            cause = self.eng.site_cause(self.idx, dev, inst[1] + self.wait) if self.correlate else None
            inst[3], inst[4] = True, cause
            ev = {"silent_for": self.timeout(dev), "last_seen": inst[0]}
            if self.correlate and dev.site_id is not None:
                # a site-level signal may still come and take this one over: the incident
                # layer holds its notification for a grouping delay (incidents.group_wait_s)
                ev["site_rule_id"] = self.p["site_rule_id"]
            self.eng.emit(self.rule, dev, "firing", inst[1], self.key(dev), ev, caused_by=cause)
            if inst[2] is None:
                return
            self._resolve(dev, inst)


class ActiveAbsenceKind(AbsenceKind):
    """``require_activity: true``: no matching event for a timeout *while other events arrive*.

    A machine that is entirely silent is the job of an ordinary absence rule (offline);
    this one fires only when evidence of life arrives after the deadline, with
    occurred_at = the deadline. No timer is needed: an event decides.

    inst: [last_seen, offline_since | None, back_at | None, emitted, caused_by, deadline]
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.of_types = self.types
        self.types = None  # every event may be the evidence of life
        self.wait = 0.0

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        own = self.of_types is None or etype in self.of_types
        if own and (self.of is None or self.of.pred is None):
            # its own event on a device that is not silent (the usual case) moves the deadline
            return [f"i = R.get({self.idx})", "if i is not None and i[1] is None:", "    if t > i[0]:",
                    "        i[0] = t", f"        i[5] = t + {name}.timeout(dev)",
                    "else:", f"    {name}.on_event(dev, etype, t, d, eid)"], {}
        return [f"i = R.get({self.idx})", f"if {own} or (i is not None and (i[1] is not None or t >= i[5])):",
                f"    {name}.on_event(dev, etype, t, d, eid)"], {}

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        inst = dev.rules.get(self.idx)
        if self.of is None or self.of(etype, data):
            if inst is None:
                dev.rules[self.idx] = [t, None, None, False, None, t + self.timeout(dev)]
            elif inst[1] is not None and t > inst[1]:
                inst[2] = t
                self._resolve(dev, inst)
                inst[5] = inst[0] + self.timeout(dev)
            elif inst[1] is None and t > inst[0]:
                inst[0], inst[5] = t, t + self.timeout(dev)
            return
        if inst is None or inst[1] is not None or t < inst[5]:
            return
        inst[1], inst[3] = inst[5], True
        self.eng.emit(self.rule, dev, "firing", inst[5], self.key(dev),
                      {"silent_for": self.timeout(dev), "last_seen": inst[0]}, (event_id,))

    def deadline(self, dev: DeviceState, inst: list[Any]) -> float:
        return INF

    def tick(self, dev: DeviceState, inst: list[Any], now: float) -> None:
        return


# --- windows ---------------------------------------------------------------------------
class CountKind(Kind):
    """At least ``threshold`` matching events within a sliding event-time ``window``.

    inst: [sorted event times (bounded), firing_since | None, last event ids (<= threshold),
    time of the last resolve | None]

    A late event can make the window full again after the episode it belongs to was
    resolved. The condition then held from the resolve on (the resolve was early), so
    the new firing happens at the resolve's instant, never before it: firing at the
    newest event time instead would repeat the earlier firing's signal id (ids are
    deterministic). A late event whose window closed before the resolve belongs to an
    episode already reported and fires nothing.
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.m = self.p["count"]
        self.types = self.m.types
        self.thr = self.p["threshold"]
        self.window = self.p["window"]
        self.cap = self.thr  # firing and resolving depend only on the newest `threshold` times

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        return self._guarded([self.m.pred], name)

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        if not self.m(etype, data):
            return
        inst = dev.rules.get(self.idx)
        if inst is None:
            inst = dev.rules[self.idx] = [[], None, [], None]
        times = inst[0]
        if times and t <= times[-1] - self.window:
            return  # outside the window already
        bisect.insort(times, t)
        cut = times[-1] - self.window
        while times[0] <= cut:
            times.pop(0)
        if len(times) > self.cap:
            del times[: len(times) - self.cap]
        ids = inst[2]
        ids.append(event_id)
        if len(ids) > self.thr:
            del ids[0]
        if inst[1] is None and len(times) >= self.thr:
            at = times[-1]
            resolved = inst[3]
            if resolved is not None and at <= resolved:
                at = resolved
            if times[-self.thr] + self.window > at:  # the window is still full at `at`
                inst[1] = at
                self.eng.emit(self.rule, dev, "firing", at, self.key(dev),
                              {"count": len(times), "threshold": self.thr, "window": self.window}, ids)
        if inst[1] is not None:
            self.eng.schedule(dev, self.deadline(dev, inst))

    def deadline(self, dev: DeviceState, inst: list[Any]) -> float:
        if inst[1] is None or len(inst[0]) < self.thr:
            return INF if inst[1] is None else inst[1]
        return inst[0][-self.thr] + self.window

    def tick(self, dev: DeviceState, inst: list[Any], now: float) -> None:
        times = inst[0]
        d = times[-self.thr] + self.window if len(times) >= self.thr else now
        if d > now:
            return
        del times[: len(times) - self.thr + 1]
        inst[1] = None
        inst[3] = d
        self.eng.emit(self.rule, dev, "resolved", d, self.key(dev),
                      {"count": len(times), "threshold": self.thr, "window": self.window})
        if not times:
            del dev.rules[self.idx]

    def restore(self, inst: list[Any]) -> list[Any]:
        if len(inst) == 3:  # saved before the last resolve's time was kept
            inst.append(None)
        return inst


class RatioKind(Kind):
    """Share of 'bad' samples among matching events, over the last N or a time window.

    inst (last N): [bits, n, firing_since]; inst (window): [[t...], [bad...], firing_since]
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.m = self.p["of"]
        self.types = self.m.types
        self.bad = self.p["bad"]
        self.last = self.p["last"]
        self.window = self.p["window"]
        self.mask = (1 << self.last) - 1 if self.last else 0
        self.above = self.p["above"]
        self.clear_at = self.p["clear_at"]
        self.min_n = self.p["min_samples"]

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        if self.m.pred is None or not self.last:
            return self._guarded([self.m.pred], name)
        # ``sample_last`` inlined: every matching event is a sample
        env = dict(self.m.pred.env) | self.bad.env  # type: ignore[union-attr]
        i, last, lo = self.idx, self.last, self.min_n
        return [f"if {self.m.pred.src}:",
                f"    i = R.get({i})",
                "    if i is None:",
                f"        i = R[{i}] = [0, 0, None]",
                f"    b = i[0] = ((i[0] << 1) | (1 if ({self.bad.src}) else 0)) & {self.mask}",  # type: ignore[union-attr]
                "    n = i[1] + 1",
                f"    if n > {last}:",
                f"        n = {last}",
                "    i[1] = n",
                f"    if (i[2] is None and n >= {lo} and b and b.bit_count() > {self.above!r} * n) or"
                f" (i[2] is not None and (n < {lo} or b.bit_count() <= {self.clear_at!r} * n)):",
                f"        i[2] = {name}._judge(dev, i[2], b.bit_count(), n, t, eid)"], env

    def sample_last(self, dev: DeviceState, t: float, data: dict[str, Any], event_id: str) -> None:
        """One sample of a last-N ratio (the matcher already passed)."""
        inst = dev.rules.get(self.idx)
        if inst is None:
            inst = dev.rules[self.idx] = [0, 0, None]
        bits = inst[0] = ((inst[0] << 1) | (1 if self.bad(data) else 0)) & self.mask  # type: ignore[misc]
        n = inst[1] = min(inst[1] + 1, self.last)
        if inst[2] is None:
            if n >= self.min_n and bits and bits.bit_count() > self.above * n:
                inst[2] = self._judge(dev, None, bits.bit_count(), n, t, event_id)
        elif n < self.min_n or bits.bit_count() <= self.clear_at * n:
            inst[2] = self._judge(dev, inst[2], bits.bit_count(), n, t, event_id)

    def _evidence(self, bad: int, n: int) -> dict[str, Any]:
        return {"ratio": round(bad / n, 4) if n else 0.0, "bad": bad, "total": n, "threshold": self.above}

    def _judge(self, dev: DeviceState, firing: float | None, bad: int, n: int, at: float, eid: str | None) -> float | None:
        ratio = bad / n if n else 0.0
        if firing is None and n >= self.min_n and ratio > self.above:
            self.eng.emit(self.rule, dev, "firing", at, self.key(dev), self._evidence(bad, n), (eid,) if eid else ())
            return at
        if firing is not None and (ratio <= self.clear_at or n < self.min_n):
            self.eng.emit(self.rule, dev, "resolved", at, self.key(dev), self._evidence(bad, n), (eid,) if eid else ())
            return None
        return firing

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        if not self.m(etype, data):
            return
        is_bad = 1 if self.bad(data) else 0  # type: ignore[misc]
        inst = dev.rules.get(self.idx)
        if self.last:
            if inst is None:
                inst = dev.rules[self.idx] = [0, 0, None]
            inst[0] = ((inst[0] << 1) | is_bad) & self.mask
            inst[1] = min(inst[1] + 1, self.last)
            inst[2] = self._judge(dev, inst[2], inst[0].bit_count(), inst[1], t, event_id)
            return
        if inst is None:
            inst = dev.rules[self.idx] = [[], [], None]
        times, bads = inst[0], inst[1]
        if times and t <= times[-1] - self.window:
            return
        i = bisect.bisect_right(times, t)
        times.insert(i, t)
        bads.insert(i, is_bad)
        cut = times[-1] - self.window
        while times[0] <= cut:
            times.pop(0)
            bads.pop(0)
        if len(times) > 4096:
            del times[:-4096], bads[:-4096]
        inst[2] = self._judge(dev, inst[2], sum(bads), len(times), times[-1], event_id)
        if inst[2] is not None:
            self.eng.schedule(dev, times[0] + self.window)

    def deadline(self, dev: DeviceState, inst: list[Any]) -> float:
        if self.last or inst[2] is None or not inst[0]:
            return INF
        return inst[0][0] + self.window

    def tick(self, dev: DeviceState, inst: list[Any], now: float) -> None:
        times, bads = inst[0], inst[1]
        while times and times[0] + self.window <= now and inst[2] is not None:
            at = times.pop(0) + self.window
            bads.pop(0)
            inst[2] = self._judge(dev, inst[2], sum(bads), len(times), at, None)
        if not times:
            del dev.rules[self.idx]


# --- change ----------------------------------------------------------------------------
def _distance_m(a: Any, b: Any) -> float:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return INF if a != b else 0.0
    lat1, lon1, lat2, lon2 = (math.radians(x) for x in (a.get("lat", 0), a.get("lon", 0), b.get("lat", 0), b.get("lon", 0)))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


class ChangeKind(Kind):
    """A value changed (unless an 'expected change' event came shortly before); resolves after a quiet period.

    inst: [value, value_at, unless_at | None, firing_since | None, last_change_at]
    """

    def __init__(self, idx: int, rule: Rule, eng: Engine) -> None:
        super().__init__(idx, rule, eng)
        self.of = self.p["of"]
        self.get = self.p["get"]
        self.unless = self.p["unless"]
        self.types = self.of.types.union(*(m.types for m in self.unless))
        self.unless_by_type = {t: tuple(m for m in self.unless if t in m.types) for t in self.types}
        self.within = self.p["unless_within"]
        self.min_m = self.p["min_distance_m"]
        self.resolve_after = self.p["resolve_after"]

    def fast_src(self, etype: str, name: str) -> tuple[list[str], dict[str, Any]]:
        if self.unless_by_type.get(etype) or etype not in self.of.types:
            return super().fast_src(etype, name)
        if "." in self.p["field"] or self.min_m:
            # without the field (its top level) there is no value: nothing changes
            top = self.p["field"].split(".")[0]
            return [f"if d.get({top!r}) is not None:", f"    {name}.on_event(dev, etype, t, d, eid)"], {}
        env: dict[str, Any] = {}
        guard = "True"
        if self.of.pred is not None:
            guard, env = self.of.pred.src, dict(self.of.pred.env)
        # the common case, an unchanged value, only moves the value's time
        return [f"if {guard}:", f"    v = d.get({self.p['field']!r})", "    if v is not None:",
                f"        i = R.get({self.idx})",
                "        if i is not None and v == i[0] and t >= i[1]:", "            i[1] = t",
                "        else:", f"            {name}.on_event(dev, etype, t, d, eid)"], env

    def on_event(self, dev: DeviceState, etype: str, t: float, data: dict[str, Any], event_id: str) -> None:
        inst = dev.rules.get(self.idx)
        for m in self.unless_by_type.get(etype, ()):
            if m.pred is None or m.pred(data):
                if inst is None:
                    inst = dev.rules[self.idx] = [None, -INF, t, None, None]
                elif inst[2] is None or t > inst[2]:
                    inst[2] = t
        if etype not in self.of.types or (self.of.pred is not None and not self.of.pred(data)):
            return
        v = self.get(data)
        if v is None:
            return
        if inst is None:
            dev.rules[self.idx] = [v, t, None, None, None]
            return
        if t < inst[1]:
            return  # older than the value we hold
        old = inst[0]
        inst[0], inst[1] = v, t
        if old is None:
            return
        changed = _distance_m(old, v) >= self.min_m if self.min_m else v != old
        if not changed:
            return
        if inst[2] is not None and t - self.within <= inst[2] <= t:
            return  # announced by an update event
        inst[4] = t
        if inst[3] is None:
            inst[3] = t
            self.eng.emit(self.rule, dev, "firing", t, self.key(dev), {"old": old, "new": v}, (event_id,))
        self.eng.schedule(dev, t + self.resolve_after)

    def deadline(self, dev: DeviceState, inst: list[Any]) -> float:
        return INF if inst[3] is None else inst[4] + self.resolve_after

    def tick(self, dev: DeviceState, inst: list[Any], now: float) -> None:
        at = inst[4] + self.resolve_after
        if inst[3] is not None and at <= now:
            inst[3] = None
            self.eng.emit(self.rule, dev, "resolved", at, self.key(dev), {"old": None, "new": inst[0]})


def kind_for(rule: Rule) -> type[Kind]:
    """The class evaluating ``rule``."""
    if rule.type == "absence" and rule.params.get("require_activity"):
        return ActiveAbsenceKind
    return KINDS[rule.type]


KINDS: dict[str, type[Kind]] = {
    "match": MatchKind,
    "sustained": SustainedKind,
    "absence": AbsenceKind,
    "count": CountKind,
    "ratio": RatioKind,
    "change": ChangeKind,
}
