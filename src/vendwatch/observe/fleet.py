"""Fleet and business figures for Prometheus, read from the state store.

The device-state documents hold what every machine last reported (temperatures,
active faults, firmware, stock). ``FleetCollector`` turns them into gauges when
Prometheus scrapes the console, at most once per ``ttl_s`` (one pass over the
table). Labels that come from devices (fault codes, firmware versions) are kept
to the ``TOP_LABELS`` most frequent values plus ``other``: device text must never
multiply the series count.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from vendwatch.state.db import Database

TOP_LABELS = 50
TEMP_BUCKETS = (-20.0, -10.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 25.0, 40.0)
_LABEL_OK = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class _Health(msgspec.Struct):
    cabinet_temp_c: float | None = None


class _Firmware(msgspec.Struct):
    firmware_version: str | None = None


class _Doc(msgspec.Struct):
    # only what the gauges need: decoding a whole state document per device would cost more
    health: _Health | None = None
    firmware: _Firmware | None = None
    active_faults: dict[str, Any] = {}
    stock: dict[str, dict[str, Any]] = {}


_doc = msgspec.json.Decoder(_Doc)


def _top(tally: Tally[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    other = 0
    for value, n in tally.most_common():
        if len(out) < TOP_LABELS and _LABEL_OK.match(value):
            out[value] = n
        else:
            other += n
    if other:
        out["other"] = other
    return out


class FleetCollector(Collector):
    """``vendwatch_fleet_*`` gauges computed from the state store (cached ``ttl_s``)."""

    def __init__(self, db: Database, ttl_s: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.db, self.ttl_s, self.clock = db, ttl_s, clock
        self._lock = threading.Lock()
        self._cached: list[Any] = []
        self._at = -float("inf")

    def describe(self) -> list[Any]:
        return self._families({}, [], Tally(), Tally(), Tally(), [])

    def collect(self) -> Iterator[Any]:
        with self._lock:
            now = self.clock()
            if now - self._at >= self.ttl_s:
                try:
                    self._cached = self._compute(now)
                except Exception as e:  # noqa: BLE001 - a scrape must never fail for the fleet gauges
                    # (a closed pool, a store not migrated yet): keep the last figures
                    logging.getLogger("vendwatch.observe").debug("fleet gauges not refreshed: %s", e)
                self._at = now
            yield from self._cached

    def _compute(self, now: float) -> list[Any]:
        from vendwatch.console.fleet import site_summary, slot_level

        summary = site_summary(self.db, now)
        temps: list[float] = []
        faults: Tally[str] = Tally()
        firmware: Tally[str] = Tally()
        slots: Tally[str] = Tally()
        for (raw,) in self.db.query("SELECT doc FROM device_state"):
            try:
                d = _doc.decode(raw or "{}")
            except msgspec.DecodeError:
                continue
            if d.health and d.health.cabinet_temp_c is not None:
                temps.append(d.health.cabinet_temp_c)
            faults.update(d.active_faults.keys())
            if d.firmware and d.firmware.firmware_version:
                firmware[d.firmware.firmware_version] += 1
            for s in d.stock.values():
                slots[slot_level(s)] += 1
        return self._families(summary, summary.get("sites", []), faults, firmware, slots, temps)

    @staticmethod
    def _families(summary: dict[str, Any], sites: list[dict[str, Any]], faults: Tally[str],
                  firmware: Tally[str], slots: Tally[str], temps: list[float]) -> list[Any]:
        devices = GaugeMetricFamily("vendwatch_fleet_devices", "Machines by connectivity class",
                                    labels=["connectivity"])
        for cls, n in (summary.get("connectivity") or {}).items():
            devices.add_metric([cls], n)
        by_site = GaugeMetricFamily("vendwatch_fleet_site_devices",
                                    "Machines by site and connectivity (the sites with most machines not online)",
                                    labels=["site", "connectivity"])
        for s in sites:
            for cls in ("online", "stale", "offline", "never", "disabled"):
                by_site.add_metric([s["site_id"] or "none", cls], s.get(cls, 0))
        fault_g = GaugeMetricFamily("vendwatch_fleet_active_faults", "Machines with an active fault, by fault code",
                                    labels=["code"])
        for code, n in _top(faults).items():
            fault_g.add_metric([code], n)
        fw = GaugeMetricFamily("vendwatch_fleet_firmware_devices", "Machines by reported firmware version",
                               labels=["version"])
        for version, n in _top(firmware).items():
            fw.add_metric([version], n)
        slot_g = GaugeMetricFamily("vendwatch_fleet_slots", "Product slots by stock level (ok, low, out)",
                                   labels=["level"])
        for level, n in slots.items():
            slot_g.add_metric([level], n)
        buckets, acc = [], 0
        ordered = sorted(temps)
        i = 0
        for b in TEMP_BUCKETS:
            while i < len(ordered) and ordered[i] <= b:
                i += 1
            acc = i
            buckets.append((str(b), acc))
        buckets.append(("+Inf", len(ordered)))
        # buckets below zero (freezers): the client then exports no _sum/_count; the +Inf bucket counts
        temp = HistogramMetricFamily("vendwatch_fleet_cabinet_temp_celsius",
                                     "Last reported cabinet temperature across the fleet (machines per bucket)",
                                     buckets=buckets)
        return [devices, by_site, fault_g, fw, slot_g, temp]


class IncidentCollector(Collector):
    """``vendwatch_incidents_open{severity}``: active incidents (open or acknowledged) by severity."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Any]:
        return [GaugeMetricFamily("vendwatch_incidents_open", "Active incidents by severity", labels=["severity"])]

    def collect(self) -> Iterator[Any]:
        g = GaugeMetricFamily("vendwatch_incidents_open", "Active incidents by severity", labels=["severity"])
        counts = dict.fromkeys(("critical", "major", "minor", "warning", "info"), 0)
        try:
            rows = self.db.query("SELECT severity, count(*) FROM incidents WHERE status IN ('open', 'acknowledged')"
                                 " GROUP BY severity")
        except Exception:  # noqa: BLE001 - no incidents table yet (orchestrator never ran): all zero
            rows = []
        for sev, n in rows:
            counts[str(sev)] = int(n)
        for sev, n in counts.items():
            g.add_metric([sev], n)
        yield g
