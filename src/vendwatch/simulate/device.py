"""One simulated vending machine: a discrete-event model driven by named timers.

Every behaviour (heartbeat, telemetry, a customer arriving, a refill visit, a fault
starting or ending) is a timer. ``advance(until)`` fires the due timers in time order
and returns the events the machine emitted. The model draws from its own seeded
random generator only when a timer fires, so the event stream depends on the seed and
the start time, never on how often ``advance`` is called.
"""

from __future__ import annotations

import heapq
import math
import random
from datetime import UTC, datetime
from typing import Any

import msgspec

from vendwatch import events as ev
from vendwatch.simulate.audit import MachineAudit
from vendwatch.simulate.catalog import CURVE_MAX, Profile, Slot, daily_curve
from vendwatch.simulate.faults import FAULTS, FaultPlan, InjectedFault, ScheduledFault

_enc = msgspec.json.Encoder()

# normal-operation probabilities
PAYMENT_MIX = (("card", 0.45), ("cash", 0.25), ("mobile", 0.20), ("qr", 0.10))
PAYMENT_FAILURE_P = 0.02
VEND_FAILURE_P = 0.008
UPDATE_FAILURE_P = 0.08
REFILL_TRIGGER_FRACTION = 0.2  # a visit is booked when this share of slots is low or out

# refrigeration model: a thermostat with hysteresis around the 3-5 °C band
FRIDGE_ON_AT_C = 4.8
FRIDGE_OFF_AT_C = 3.2
COOLING_C_PER_S = 0.012  # compressor pull-down
LEAK_PER_S = 1 / 3600  # Newton cooling towards ambient, door closed
LEAK_DOOR_OPEN_PER_S = 1 / 1200
PHYSICS_STEP_S = 10.0


def _has_defaults(cls: type) -> bool:
    return any(f.default not in (None, msgspec.NODEFAULT) or f.default_factory is not msgspec.NODEFAULT
               for f in msgspec.structs.fields(cls))


# payload types with non-None defaults (fault state, refill phase, log level...)
_WITH_DEFAULTS = frozenset(cls for cls in ev.PAYLOADS.values() if _has_defaults(cls))


def _explicit(payload: Any) -> Any:
    """The payload with its defaults spelled out (``state: raised``, ``phase: completed``).

    The structs omit defaults when encoded; firmware usually sends them, and consumers
    matching raw JSON should not have to know the protocol's defaults to see them.
    """
    if type(payload) not in _WITH_DEFAULTS:
        return payload
    return {k: v for k, v in msgspec.structs.asdict(payload).items() if v is not None}


def to_datetime(t: float) -> datetime:
    return datetime.fromtimestamp(round(t, 3), tz=UTC)


class DeviceSim:
    """A machine's behaviour from simulated time ``start`` onwards."""

    def __init__(
        self,
        profile: Profile,
        *,
        seed: int,
        start: float,
        id_prefix: str,
        plan: FaultPlan,
        heartbeat_s: float = 300.0,
        telemetry_s: float = 60.0,
        connectivity_s: float = 900.0,
        inventory_s: float = 4 * 3600.0,
        initial_state: bool = True,
    ) -> None:
        self.p = profile
        self.device_id = profile.device_id
        self.rng = random.Random(f"vendwatch-sim-device:{seed}:{profile.index}:{id_prefix}:{start!r}")
        self.id_prefix = id_prefix
        self.heartbeat_s = heartbeat_s
        self.telemetry_s = telemetry_s
        self.connectivity_s = connectivity_s
        self.inventory_s = inventory_s
        self.now = start
        self.start = start
        self.counter = 0
        self.tx_counter = 0
        self.out: list[ev.DeviceEvent] = []
        self.injected: list[InjectedFault] = []
        # live machine state
        self.boot_at = start - self.rng.uniform(3600, 30 * 86400)
        self.firmware = profile.firmware_version
        self.config_version = profile.config_version
        self.door_open = False
        self.visit: dict[str, Any] | None = None  # refill visit in progress or booked
        self.active: dict[str, dict[str, Any]] = {}  # fault kind -> parameters
        self.silent: set[str] = set()  # reasons the machine sends nothing (offline, power)
        self.last_vend_at = -math.inf
        self.fridge_c = self.rng.uniform(FRIDGE_OFF_AT_C, FRIDGE_ON_AT_C)
        self.compressor_on = self.rng.random() < 0.4
        self.phys_t = start
        self.disk_base = self.rng.uniform(35, 70)
        self.cpu_base = self.rng.uniform(6, 25)
        self.mem_base = self.rng.uniform(30, 55)
        self.lam_max = profile.sales_per_day / 86400 * CURVE_MAX
        # timers: name -> simulated time it fires
        r = self.rng
        self.timers: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (time, name); entries whose time changed are stale
        for name, at in (
            ("heartbeat", start + r.uniform(0, heartbeat_s)),
            ("telemetry", start + r.uniform(0, telemetry_s)),
            ("connectivity", start + r.uniform(0, connectivity_s)),
            ("inventory", start + r.uniform(0, inventory_s)),
            ("sale", start + r.expovariate(self.lam_max)),
            ("applog", start + r.expovariate(1 / 3600)),
            ("update", start + r.expovariate(1 / (3 * 86400))),
        ):
            self._at(name, at)
        self._rates = dict(plan.rates)
        for kind, rate in sorted(plan.rates.items()):
            if rate > 0 and self._applicable(kind):
                self._at(f"fault:{kind}", start + r.expovariate(rate / 86400))
        self.audit = MachineAudit(self.device_id, [(s.slot, s.product_id, s.price_minor) for s in profile.slots],
                                  f"{seed}:{id_prefix}", [i for i in plan.dex if i.device_id == self.device_id])
        self._scheduled: list[ScheduledFault] = [s for s in plan.scheduled if s.device_id == self.device_id]
        for i, s in enumerate(self._scheduled):
            self._at(f"sched:{i}", start + s.start_s)
        if initial_state:
            self._initial_state()
        self._maybe_book_refill()

    # -- driving ------------------------------------------------------------------
    def advance(self, until: float) -> list[ev.DeviceEvent]:
        """Fire every timer due at or before ``until``; return the events emitted."""
        timers, heap = self.timers, self._heap
        while heap:
            at, name = heap[0]
            if timers.get(name) != at:
                heapq.heappop(heap)  # superseded by a later _at for the same name
                continue
            if at > until:
                break
            heapq.heappop(heap)
            del timers[name]
            self._physics(at)
            self.now = at
            kind, _, arg = name.partition(":")
            getattr(self, f"_on_{kind}")(arg)
        out, self.out = self.out, []
        return out

    def _at(self, name: str, at: float) -> None:
        """(Re)arm timer ``name``; ties fire in name order, so the order is deterministic."""
        self.timers[name] = at
        heapq.heappush(self._heap, (at, name))

    def _applicable(self, kind: str) -> bool:
        return FAULTS[kind].fits(self.p.refrigerated, self.p.smart)

    def _emit(self, type_: str, payload: Any) -> None:
        if self.silent:
            return  # the machine is off or cut off: nothing reaches the collector
        self.counter += 1
        self.out.append(ev.DeviceEvent(
            event_id=f"{self.id_prefix}-{self.device_id}-{self.counter}",
            device_id=self.device_id,
            type=type_,  # type: ignore[arg-type]
            occurred_at=to_datetime(self.now),
            seq=self.counter,
            data=msgspec.Raw(_enc.encode(_explicit(payload))),
        ))

    def _local_hour(self, t: float) -> float:
        return ((t / 3600.0) + self.p.site.utc_offset_h) % 24

    def _ambient(self, t: float) -> float:
        return self.p.site.ambient_c + 2.0 * math.sin(2 * math.pi * (self._local_hour(t) - 9) / 24)

    # -- physics ------------------------------------------------------------------
    def _physics(self, t: float) -> None:
        """Integrate the refrigerated compartment up to ``t`` (fixed steps, deterministic)."""
        if not self.p.refrigerated:
            return
        cooling = "cooling_failure" not in self.active and not ({"power_off", "power_cut"} & self.active.keys())
        k = LEAK_DOOR_OPEN_PER_S if self.door_open else LEAK_PER_S
        ambient = self._ambient(self.phys_t)  # changes by a few degrees a day: constant over one interval
        while self.phys_t < t:
            dt = min(PHYSICS_STEP_S, t - self.phys_t)
            self.fridge_c += k * (ambient - self.fridge_c) * dt
            if self.compressor_on and cooling:
                self.fridge_c -= COOLING_C_PER_S * dt
            if self.fridge_c >= FRIDGE_ON_AT_C:
                self.compressor_on = True
            elif self.fridge_c <= FRIDGE_OFF_AT_C:
                self.compressor_on = False
            self.phys_t += dt

    # -- payloads -----------------------------------------------------------------
    def _telemetry(self) -> ev.Telemetry:
        r = self.rng
        ambient = self._ambient(self.now)
        cabinet = ambient + 4.0 + (1.5 if self.compressor_on and self.p.refrigerated else 0.0) + r.gauss(0, 0.3)
        if "overheating" in self.active:
            f = self.active["overheating"]
            ramp = min(1.0, (self.now - f["since"]) / 600)
            cabinet += ramp * (f["target"] - cabinet)
        volts = self.p.site.nominal_v + r.gauss(0, 1.8)
        if "voltage" in self.active:
            volts = self.active["voltage"]["level"] + r.gauss(0, 1.5)
        motor = "jammed" if "motor_jam" in self.active else ("running" if self.now - self.last_vend_at < 15 else "idle")
        failed = self.active.get("sensor_malfunction", {}).get("component")
        t = ev.Telemetry(
            cabinet_temp_c=round(cabinet, 2),
            refrigeration_temp_c=round(self.fridge_c + r.gauss(0, 0.08), 2) if self.p.refrigerated else None,
            power_on=True,
            voltage_v=round(volts, 1),
            door_open=self.door_open,
            motor_status=motor,  # type: ignore[arg-type]
            coin_sensor="failed" if failed == "coin_sensor" else "ok",
            bill_validator="failed" if failed == "bill_validator" else "ok",
            product_sensor="failed" if failed == "product_sensor" else "ok",
        )
        if self.p.smart:
            if "resource_pressure" in self.active:
                t.cpu_pct, t.mem_pct, t.disk_pct = (round(r.uniform(lo, 99.5), 1) for lo in (92, 93, 96))
            else:
                t.cpu_pct = round(min(100, max(0, self.cpu_base + r.gauss(0, 4) + (30 if motor == "running" else 0))), 1)
                t.mem_pct = round(min(100, max(0, self.mem_base + r.gauss(0, 2))), 1)
                t.disk_pct = round(min(100, self.disk_base + (self.now - self.start) / 86400 * 0.05), 1)
        return t

    def _connectivity(self) -> ev.Connectivity:
        r = self.rng
        if "bad_connectivity" in self.active:
            signal, latency = r.uniform(-120, -112), r.uniform(1500, 6000)
        else:
            signal = min(-30.0, self.p.signal_dbm + r.gauss(0, 3))
            latency = self.p.latency_ms * r.lognormvariate(0, 0.3)
        return ev.Connectivity(
            location_id=self.p.site.site_id,
            gps=ev.Gps(lat=self.p.site.lat, lon=self.p.site.lon),
            network=self.p.network,  # type: ignore[arg-type]
            signal_dbm=round(signal, 1),
            latency_ms=round(latency, 1),
        )

    def _inventory(self) -> ev.Inventory:
        return ev.Inventory(slots=[
            ev.SlotState(slot=s.slot, product_id=s.product_id, count=s.count, capacity=s.capacity,
                         low_threshold=s.low_threshold, price_minor=s.price_minor)
            for s in self.p.slots
        ])

    def _initial_state(self) -> None:
        """What a controller reports when it (re)connects: versions, network, planogram, health."""
        self._emit("config", ev.Config(firmware_version=self.firmware, config_version=self.config_version,
                                       feature_flags={"cashless": True, "remote_price": self.p.smart}))
        self._emit("connectivity", self._connectivity())
        self._emit("inventory", self._inventory())
        for s in self.p.slots:
            if s.level != "ok":
                self._emit("stock_alert", ev.StockAlert(slot=s.slot, product_id=s.product_id, level=s.level, count=s.count))  # type: ignore[arg-type]

    # -- periodic timers ----------------------------------------------------------
    def _on_heartbeat(self, _: str) -> None:
        self._emit("heartbeat", ev.Heartbeat(uptime_s=int(self.now - self.boot_at), firmware_version=self.firmware,
                                             interval_s=int(self.heartbeat_s)))
        self._at("heartbeat", self.now + self.heartbeat_s * self.rng.uniform(0.99, 1.01))

    def _on_telemetry(self, _: str) -> None:
        self._emit("telemetry", self._telemetry())
        cf = self.active.get("cooling_failure")
        if cf is not None and not cf["raised"] and self.fridge_c > 8.0:
            # the controller's own alarm: warm compartment while the compressor runs
            cf["raised"] = True
            self._emit("fault", ev.Fault(code="cooling_failure", component="refrigeration",
                                         detail=f"compartment at {self.fridge_c:.1f} °C with compressor running"))
        self._at("telemetry", self.now + self.telemetry_s * self.rng.uniform(0.98, 1.02))

    def _on_connectivity(self, _: str) -> None:
        self._emit("connectivity", self._connectivity())
        every = 300.0 if "bad_connectivity" in self.active else self.connectivity_s
        self._at("connectivity", self.now + every * self.rng.uniform(0.95, 1.05))

    def _on_inventory(self, _: str) -> None:
        self._emit("inventory", self._inventory())
        self._at("inventory", self.now + self.inventory_s)

    def _on_applog(self, _: str) -> None:
        level, message = self.rng.choice((
            ("info", "daily sales report uploaded"), ("info", "price table refreshed"),
            ("info", "card reader settlement batch closed"), ("warning", "bill validator recalibrated"),
            ("warning", "dispense retry succeeded on second attempt"),
        ))
        self._emit("log", ev.Log(kind="application", level=level, message=message))  # type: ignore[arg-type]
        self._at("applog", self.now + self.rng.expovariate(1 / 3600))

    def _on_update(self, arg: str) -> None:
        self._start_update(force_failure=False)
        self._at("update", self.now + self.rng.expovariate(1 / (3 * 86400)))

    def _start_update(self, force_failure: bool) -> None:
        major, minor, patch = (int(x) for x in self.firmware.split("."))
        target = f"{major}.{minor}.{patch + 1}"
        self._emit("config", ev.Config(firmware_version=self.firmware, update_status="started", target_version=target))
        fail = force_failure or self.rng.random() < UPDATE_FAILURE_P
        self._at(f"updatedone:{target}:{int(fail)}", self.now + self.rng.uniform(120, 300))

    def _on_updatedone(self, arg: str) -> None:
        target, _, fail = arg.partition(":")
        if fail == "1":
            self._emit("config", ev.Config(firmware_version=self.firmware, update_status="failure", target_version=target,
                                           error=self.rng.choice(("signature verification failed", "download timed out",
                                                                  "not enough flash space"))))
            return
        self.firmware = target
        self.boot_at = self.now
        self._emit("log", ev.Log(kind="startup", message=f"booted firmware {target}"))
        self._emit("config", ev.Config(firmware_version=target, config_version=self.config_version,
                                       update_status="success", target_version=target, last_update_at=to_datetime(self.now)))

    # -- sales --------------------------------------------------------------------
    def _sales_rate(self, t: float) -> float:
        return self.p.sales_per_day / 86400 * daily_curve(self._local_hour(t))

    def _on_sale(self, _: str) -> None:
        # thinning: candidates at the peak rate, kept with probability rate(t)/peak
        if self.rng.random() < self._sales_rate(self.now) / self.lam_max:
            self._customer()
        self._at("sale", self.now + self.rng.expovariate(self.lam_max))

    def _customer(self, retry: bool = False) -> None:
        r = self.rng
        if self.visit and self.visit.get("started") or {"power_off", "power_cut"} & self.active.keys():
            return
        stocked = [s for s in self.p.slots if s.count > 0]
        if not stocked:
            return
        slot = r.choices(stocked, weights=[s.popularity for s in stocked])[0]
        method = r.choices([m for m, _ in PAYMENT_MIX], weights=[w for _, w in PAYMENT_MIX])[0]
        self.tx_counter += 1
        tx_id = f"{self.device_id}-{self.id_prefix}-T{self.tx_counter}"
        reason = self._payment_failure(method)
        vend = "not_attempted"
        if reason is None:
            reason = self._vend_failure(slot)
            vend = "failure" if reason else "success"
        self._emit("transaction", ev.Transaction(
            transaction_id=tx_id, product_id=slot.product_id, slot=slot.slot, price_minor=slot.price_minor,
            currency="EUR", payment_method=method,  # type: ignore[arg-type]
            payment_status="failure" if vend == "not_attempted" else "success",
            vend_status=vend,  # type: ignore[arg-type]
            failure_reason=reason,
        ))
        if vend == "failure":
            self._emit("refund", ev.Refund(refund_id=f"{tx_id}-R", transaction_id=tx_id, amount_minor=slot.price_minor,
                                           currency="EUR", reason=reason))
            if not retry and r.random() < 0.5:
                self._customer(retry=True)  # the customer tries another product
        elif vend == "success":
            self.last_vend_at = self.now
            self.audit.sale(slot.slot, slot.price_minor, method)
            slot.count -= 1
            self._stock_level(slot)

    def _payment_failure(self, method: str) -> str | None:
        failed = self.active.get("sensor_malfunction", {}).get("component")
        if method in ("card", "qr", "mobile") and "payment_device_failure" in self.active:
            return "payment_device_offline"
        if method == "cash" and failed == "coin_sensor":
            return "coin_mech_failure"
        if method == "cash" and failed == "bill_validator":
            return "bill_validator_failure"
        if self.rng.random() < PAYMENT_FAILURE_P:
            return self.rng.choice(("card_declined", "insufficient_funds", "payment_timeout")) if method != "cash" else "coin_rejected"
        return None

    def _vend_failure(self, slot: Slot) -> str | None:
        jam = self.active.get("motor_jam")
        if jam is not None and jam["slot"] == slot.slot:
            return "motor_jam"
        if "failed_vends" in self.active and self.rng.random() < 0.5:
            return "product_stuck"
        if self.active.get("sensor_malfunction", {}).get("component") == "product_sensor" and self.rng.random() < 0.3:
            return "dispense_not_confirmed"
        if self.rng.random() < VEND_FAILURE_P:
            return "product_stuck"
        return None

    # -- inventory and refill visits ----------------------------------------------
    def _stock_level(self, slot: Slot) -> None:
        level = slot.level_for(slot.count)
        if level != slot.level and level != "ok":
            self._emit("stock_alert", ev.StockAlert(slot=slot.slot, product_id=slot.product_id, level=level, count=slot.count))  # type: ignore[arg-type]
        slot.level = level
        self._maybe_book_refill()

    def _maybe_book_refill(self) -> None:
        if self.visit is not None:
            return
        short = sum(1 for s in self.p.slots if s.level != "ok")
        outs = sum(1 for s in self.p.slots if s.level == "out")
        if short < REFILL_TRIGGER_FRACTION * len(self.p.slots) and outs < 3:
            return
        at = self.now + self.rng.uniform(0.1, 4.0) * 3600
        hour = self._local_hour(at)
        if not 7 <= hour < 20:  # technicians work daytime: move to the next morning
            at += ((7 - hour) % 24) * 3600 + self.rng.uniform(0, 2) * 3600
        self.visit = {"id": f"{self.device_id}-{self.id_prefix}-V{int(at)}", "started": False,
                      "technician": f"TECH-{self.p.site.site_id}-{self.rng.randint(1, 3)}"}
        self._at("visitstart", at)

    def _on_visitstart(self, _: str) -> None:
        assert self.visit is not None
        self.visit["started"] = True
        self.audit.read(self.now)  # the technician's handheld reads the audit data first
        self._emit("refill", ev.Refill(visit_id=self.visit["id"], phase="started", technician_id=self.visit["technician"]))
        self.door_open = True
        self._emit("telemetry", self._telemetry())
        self._at("visitdone", self.now + self.rng.uniform(480, 1200))

    def _on_visitdone(self, _: str) -> None:
        assert self.visit is not None
        filled = []
        back_ok = []
        for s in self.p.slots:
            added = s.capacity - s.count
            if added > 0:
                s.count = s.capacity
                filled.append(ev.RefillSlot(slot=s.slot, product_id=s.product_id, added=added, count_after=s.count))
            if s.level != "ok":
                back_ok.append(s)
            s.level = "ok"
        self._emit("refill", ev.Refill(visit_id=self.visit["id"], phase="completed",
                                       technician_id=self.visit["technician"], slots=filled,
                                       cash_collected_minor=self.audit.collect()))
        for s in back_ok:
            self._emit("stock_alert", ev.StockAlert(slot=s.slot, product_id=s.product_id, level="ok", count=s.count))
        self._emit("inventory", self._inventory())
        self._at("visitclose", self.now + self.rng.uniform(30, 120))

    def _on_visitclose(self, _: str) -> None:
        self.door_open = False
        self._emit("telemetry", self._telemetry())
        self.visit = None
        self._maybe_book_refill()

    # -- faults -------------------------------------------------------------------
    def _on_fault(self, kind: str) -> None:
        if kind not in self.active:
            self.start_fault(kind)
        rate = self._rates.get(kind, 0.0)
        if rate > 0:
            self._at(f"fault:{kind}", self.now + self.rng.expovariate(rate / 86400))

    def _on_sched(self, i: str) -> None:
        s = self._scheduled[int(i)]
        if s.kind not in self.active and self._applicable(s.kind) and not self.start_fault(s.kind, s.duration_s):
            self._at(f"sched:{i}", self.now + 900)  # not possible right now (door open for a refill): retry

    def start_fault(self, kind: str, duration_s: float | None = None) -> bool:
        """Inject ``kind`` now, for ``duration_s`` (default: the kind's range; ignored for instant kinds).

        False when the machine's state rules it out (an unauthorized opening while the
        door is already open).
        """
        lo, hi = FAULTS[kind].duration_s
        if kind == "door_unauthorized" and (self.visit and self.visit.get("started") or self.door_open):
            return False
        duration = 0.0 if hi == 0 else (duration_s if duration_s is not None else self.rng.uniform(lo, hi))
        params: dict[str, Any] = {"since": self.now}
        getattr(self, f"_fault_{kind}")(params)
        self.injected.append(InjectedFault(kind, self.device_id, self.now, self.now + duration, str(params.get("detail", ""))))
        if duration > 0:
            self.active[kind] = params
            self._at(f"end:{kind}", self.now + duration)
        return True

    def _on_end(self, kind: str) -> None:
        params = self.active.pop(kind, None)
        if params is None:
            return
        end = getattr(self, f"_end_{kind}", None)
        if end is not None:
            end(params)

    # each _fault_<kind> emits what the machine reports when the fault begins;
    # _end_<kind> what it reports when it is over
    def _fault_offline(self, p: dict[str, Any]) -> None:
        self.silent.add("offline")

    def _end_offline(self, p: dict[str, Any]) -> None:
        self.silent.discard("offline")
        self._emit("log", ev.Log(kind="system", level="warning", message="network link restored after outage"))
        self._emit("connectivity", self._connectivity())

    def _fault_cooling_failure(self, p: dict[str, Any]) -> None:
        p["raised"] = False

    def _end_cooling_failure(self, p: dict[str, Any]) -> None:
        if p["raised"]:
            self._emit("fault", ev.Fault(code="cooling_failure", state="cleared", component="refrigeration"))

    def _fault_overheating(self, p: dict[str, Any]) -> None:
        p["target"] = self.rng.uniform(55, 65)
        p["detail"] = f"target {p['target']:.0f} °C"

    def _fault_voltage(self, p: dict[str, Any]) -> None:
        p["level"] = self.rng.uniform(180, 195) if self.rng.random() < 0.5 else self.rng.uniform(258, 268)
        p["detail"] = f"{p['level']:.0f} V"
        self._emit("telemetry", self._telemetry())

    def _end_voltage(self, p: dict[str, Any]) -> None:
        self._emit("telemetry", self._telemetry())

    def _power_lost(self, reason: str) -> None:
        t = self._telemetry()
        t.power_on, t.voltage_v = False, 0.0
        self._emit("telemetry", t)
        self.silent.add(reason)

    def _power_back(self, reason: str, message: str) -> None:
        self.silent.discard(reason)
        self.boot_at = self.now
        self._emit("log", ev.Log(kind="startup", message=message))
        self._emit("telemetry", self._telemetry())

    def _fault_power_off(self, p: dict[str, Any]) -> None:
        self._power_lost("power_off")

    def _end_power_off(self, p: dict[str, Any]) -> None:
        self._power_back("power_off", "power restored; controller booted")

    def _fault_power_cut(self, p: dict[str, Any]) -> None:
        self._emit("security", ev.Security(kind="power_cut", detail="mains lost while the machine was closed; on backup battery"))
        self._power_lost("power_cut")

    def _end_power_cut(self, p: dict[str, Any]) -> None:
        self._power_back("power_cut", "power restored after cut; controller booted")

    def _fault_motor_jam(self, p: dict[str, Any]) -> None:
        stocked = [s for s in self.p.slots if s.count > 0] or self.p.slots
        p["slot"] = self.rng.choice(stocked).slot
        p["detail"] = p["slot"]
        self._emit("fault", ev.Fault(code="motor_jam", component="motor", slot=p["slot"], detail="spiral motor stalled"))
        self._emit("telemetry", self._telemetry())

    def _end_motor_jam(self, p: dict[str, Any]) -> None:
        self._emit("fault", ev.Fault(code="motor_jam", state="cleared", component="motor", slot=p["slot"]))
        self._emit("telemetry", self._telemetry())

    def _fault_sensor_malfunction(self, p: dict[str, Any]) -> None:
        p["component"] = p["detail"] = self.rng.choice(("coin_sensor", "bill_validator", "product_sensor"))
        self._emit("fault", ev.Fault(code="sensor_malfunction", component=p["component"], detail="self-test failed"))
        self._emit("telemetry", self._telemetry())

    def _end_sensor_malfunction(self, p: dict[str, Any]) -> None:
        self._emit("fault", ev.Fault(code="sensor_malfunction", state="cleared", component=p["component"]))
        self._emit("telemetry", self._telemetry())

    def _fault_payment_device_failure(self, p: dict[str, Any]) -> None:
        self._emit("fault", ev.Fault(code="payment_device_failure", component="card_reader", detail="reader not responding"))

    def _end_payment_device_failure(self, p: dict[str, Any]) -> None:
        self._emit("fault", ev.Fault(code="payment_device_failure", state="cleared", component="card_reader"))

    def _fault_payment_failures(self, p: dict[str, Any]) -> None:
        p["attempts"] = 0
        self._at("payattempt", self.now)

    def _on_payattempt(self, _: str) -> None:
        p = self.active.get("payment_failures")
        if p is None:
            return
        slot = self.rng.choice(self.p.slots)
        self.tx_counter += 1
        p["attempts"] += 1
        self._emit("transaction", ev.Transaction(
            transaction_id=f"{self.device_id}-{self.id_prefix}-T{self.tx_counter}", product_id=slot.product_id,
            slot=slot.slot, price_minor=slot.price_minor, currency="EUR", payment_method="card",
            payment_status="failure", vend_status="not_attempted", failure_reason="card_declined"))
        if p["attempts"] % 3 == 0:
            self._emit("security", ev.Security(kind="payment_attempts_failed", attempts=p["attempts"],
                                               detail="repeated declined card payments"))
        self._at("payattempt", self.now + self.rng.uniform(20, 60))

    def _fault_failed_vends(self, p: dict[str, Any]) -> None:
        pass  # _vend_failure consults self.active

    def _fault_door_unauthorized(self, p: dict[str, Any]) -> None:
        self.door_open = True
        self._emit("telemetry", self._telemetry())
        self._emit("security", ev.Security(kind="door_unauthorized", detail="door opened without a service visit"))

    def _close_door(self, p: dict[str, Any]) -> None:
        if not (self.visit and self.visit.get("started")):
            self.door_open = False
            self._emit("telemetry", self._telemetry())

    _end_door_unauthorized = _close_door
    _end_door_forced = _close_door

    def _fault_door_forced(self, p: dict[str, Any]) -> None:
        self.door_open = True
        g = round(self.rng.uniform(3, 9), 2)
        self._emit("security", ev.Security(kind="door_forced", magnitude_g=g, detail="lock sensor tripped with door open"))
        self._emit("telemetry", self._telemetry())

    def _fault_shock(self, p: dict[str, Any]) -> None:
        kind = self.rng.choice(("shock", "vibration"))
        p["detail"] = kind
        self._emit("security", ev.Security(kind=kind, magnitude_g=round(self.rng.uniform(1.5, 8), 2)))  # type: ignore[arg-type]

    def _fault_firmware_integrity(self, p: dict[str, Any]) -> None:
        self._emit("security", ev.Security(kind="firmware_integrity_failed", detail=f"image {self.firmware}: sha256 mismatch"))
        self._emit("log", ev.Log(kind="system", level="critical", message="secure boot: firmware integrity check failed"))

    def _fault_bad_connectivity(self, p: dict[str, Any]) -> None:
        self.active["bad_connectivity"] = p  # so the report below already shows it
        self._emit("connectivity", self._connectivity())
        self._at("connectivity", self.now + 300)

    def _end_bad_connectivity(self, p: dict[str, Any]) -> None:
        self._emit("connectivity", self._connectivity())

    def _fault_failed_update(self, p: dict[str, Any]) -> None:
        self._start_update(force_failure=True)

    def _fault_crash_loop(self, p: dict[str, Any]) -> None:
        self._at("crash", self.now)

    def _on_crash(self, _: str) -> None:
        if "crash_loop" not in self.active:
            return
        pc = self.rng.randrange(0x400000, 0x4FFFFF)
        dump = (f"vmc-app {self.firmware} SIGSEGV at 0x{pc:08x}\n"
                f"#0 0x{pc:08x} in dispense_queue_pop () at dispense.c:{self.rng.randint(100, 900)}\n"
                "#1 0x00401a2c in vend_cycle () at vend.c:311\n#2 0x00400f10 in main () at main.c:88")
        self._emit("log", ev.Log(kind="crash", level="critical", message="vmc-app terminated by SIGSEGV", crash_dump=dump))
        self.boot_at = self.now
        self._emit("log", ev.Log(kind="startup", message="vmc-app restarted by watchdog"))
        self._at("crash", self.now + self.rng.uniform(480, 900))

    def _fault_resource_pressure(self, p: dict[str, Any]) -> None:
        self._emit("log", ev.Log(kind="system", level="warning", message="resource pressure: disk usage above 95%"))
