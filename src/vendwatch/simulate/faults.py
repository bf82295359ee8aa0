"""Injectable faults: what each kind does, how often it happens, how to select them.

A fault is either random (a Poisson process per device with a rate in occurrences per
device per simulated day) or scheduled (``kind@DEVICE+START[/DURATION]`` in simulated
time from the start of the run). ``FAULTS`` is the catalogue; docs/simulator.md
documents the events each kind produces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# the parse error is a ValueError so the CLI can turn it into a usage error


class FaultSpecError(ValueError):
    """A ``--faults`` or ``--fault-at`` value cannot be understood; the message says why."""


@dataclass(frozen=True)
class FaultKind:
    name: str
    rate_per_day: float  # default occurrences per device per simulated day
    duration_s: tuple[float, float]  # uniform range; (0, 0) for instantaneous faults
    summary: str
    needs: str | None = None  # "refrigerated" or "smart": only machines with that feature

    def fits(self, refrigerated: bool, smart: bool) -> bool:
        """Whether a machine with these features can have this fault."""
        return self.needs is None or (self.needs == "refrigerated" and refrigerated) or (self.needs == "smart" and smart)


FAULTS: dict[str, FaultKind] = {k.name: k for k in [
    FaultKind("offline", 0.10, (1200, 3600), "machine silent (no events at all), then reconnects"),
    FaultKind("cooling_failure", 0.05, (3600, 10800),
              "compressor stops cooling: refrigeration temperature climbs above 5 °C with the door closed",
              needs="refrigerated"),
    FaultKind("overheating", 0.05, (1800, 5400), "cabinet (electronics) temperature climbs to 55-65 °C"),
    FaultKind("voltage", 0.10, (600, 2400), "supply voltage out of band (brown-out 180-195 V or surge 258-268 V)"),
    FaultKind("power_off", 0.03, (600, 1800), "power off: telemetry power_on=false, voltage 0, then silence until power returns"),
    FaultKind("motor_jam", 0.15, (1800, 7200), "a slot motor jams: fault motor_jam raised/cleared, motor_status=jammed, vends from that slot fail"),
    FaultKind("sensor_malfunction", 0.08, (3600, 14400), "coin, bill validator or product sensor failed + fault sensor_malfunction"),
    FaultKind("payment_device_failure", 0.08, (1800, 7200), "card reader down: fault payment_device_failure, cashless payments fail"),
    FaultKind("payment_failures", 0.10, (600, 1200), "repeated declined payments + security payment_attempts_failed"),
    FaultKind("failed_vends", 0.08, (3600, 7200), "half the vends fail (product stuck) and are refunded"),
    FaultKind("door_unauthorized", 0.05, (120, 360), "door opened outside a refill visit + security door_unauthorized"),
    FaultKind("door_forced", 0.02, (300, 900), "security door_forced and shock, door open"),
    FaultKind("shock", 0.05, (0, 0), "security shock or vibration with a magnitude in g"),
    FaultKind("power_cut", 0.03, (300, 1200), "security power_cut, silence, then a startup log"),
    FaultKind("firmware_integrity", 0.02, (0, 0), "security firmware_integrity_failed + critical log"),
    FaultKind("bad_connectivity", 0.10, (1800, 7200), "weak signal (-112..-120 dBm) and high latency (1.5-6 s)"),
    FaultKind("failed_update", 0.05, (0, 0), "a firmware update starts and fails (config update_status=failure)"),
    FaultKind("crash_loop", 0.04, (2400, 3600), "application crashes every 8-15 min (crash logs with dumps, restarts)"),
    FaultKind("resource_pressure", 0.08, (1800, 5400), "CPU, memory and disk near 100% on a smart machine", needs="smart"),
]}

_DUR_RE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    m = _DUR_RE.match(text.strip())
    if not m:
        raise FaultSpecError(f"bad duration {text!r}: use a number with an optional unit s, m, h or d (e.g. 15m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class ScheduledFault:
    """One fault on one device at a fixed simulated offset from the start of the run."""

    kind: str
    device_id: str
    start_s: float
    duration_s: float | None = None  # None: the kind's default range

    @classmethod
    def parse(cls, text: str) -> ScheduledFault:
        """``kind@DEVICE+START[/DURATION]``, e.g. ``cooling_failure@VM-00003+5m/2h``."""
        m = re.match(r"^([a-z_]+)@([^+]+)\+([^/]+)(?:/(.+))?$", text.strip())
        if not m:
            raise FaultSpecError(f"bad scheduled fault {text!r}: use kind@DEVICE+START[/DURATION], e.g. motor_jam@VM-00001+10m/1h")
        kind = m.group(1)
        if kind not in FAULTS:
            raise FaultSpecError(f"unknown fault kind {kind!r}; known: {', '.join(FAULTS)}")
        dur = parse_duration(m.group(4)) if m.group(4) else None
        return cls(kind, m.group(2), parse_duration(m.group(3)), dur)


@dataclass
class FaultPlan:
    """Which random faults run at which rate, plus faults at fixed times."""

    rates: dict[str, float] = field(default_factory=dict)
    scheduled: list[ScheduledFault] = field(default_factory=list)
    dex: list[Any] = field(default_factory=list)  # simulate.audit.DexInjection: audit-read discrepancies

    @classmethod
    def none(cls) -> FaultPlan:
        return cls()

    @classmethod
    def all(cls, scale: float = 1.0) -> FaultPlan:
        return cls({k.name: k.rate_per_day * scale for k in FAULTS.values()})

    @classmethod
    def parse(cls, spec: str, scale: float = 1.0) -> FaultPlan:
        """``all``, ``none`` or ``kind[=RATE],...`` (RATE: occurrences per device per simulated day)."""
        spec = spec.strip()
        if spec in ("", "none"):
            return cls.none()
        if spec == "all":
            return cls.all(scale)
        rates: dict[str, float] = {}
        for part in spec.split(","):
            name, _, rate = part.strip().partition("=")
            if name not in FAULTS:
                raise FaultSpecError(f"unknown fault kind {name!r}; known: all, none, {', '.join(FAULTS)}")
            try:
                r = float(rate) if rate else FAULTS[name].rate_per_day
            except ValueError:
                raise FaultSpecError(f"bad rate {rate!r} for {name}: a number of occurrences per device per day") from None
            if r < 0:
                raise FaultSpecError(f"rate for {name} must be >= 0, got {r}")
            rates[name] = r * scale
        return cls(rates)


@dataclass(frozen=True)
class InjectedFault:
    """Ground truth: a fault the simulator injected (for checking detection)."""

    kind: str
    device_id: str
    start: float  # epoch seconds, simulated
    end: float
    detail: str = ""
