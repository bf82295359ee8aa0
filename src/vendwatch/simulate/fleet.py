"""A fleet of simulated machines over a simulated time range, without any HTTP.

``Fleet`` is the library entry point: the simulator CLI and ``vendwatch demo`` drive
it in real time, and tests of other parts use it to produce realistic data offline::

    fleet = Fleet(seed=7, n_devices=20, start=datetime(2026, 1, 5, tzinfo=timezone.utc))
    events = fleet.run_for(6 * 3600)               # DeviceEvent list, time ordered
    stored = fleet.stored(events)                  # as the collector writes them to the log
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime, timedelta

import msgspec

from vendwatch import events as ev
from vendwatch.simulate.catalog import Profile, make_profile, make_site
from vendwatch.simulate.device import DeviceSim
from vendwatch.simulate.faults import FAULTS, FaultPlan, InjectedFault, ScheduledFault


def device_id_for(index: int) -> str:
    return f"VM-{index + 1:05d}"


def site_id_for(k: int) -> str:
    return f"SITE-{k + 1:02d}"


def layout(n_devices: int, n_sites: int | None = None) -> list[tuple[str, str | None]]:
    """Default device ids and their sites: VM-00001.. round-robin over SITE-01.. (20 per site)."""
    n_sites = n_sites or max(1, (n_devices + 19) // 20)
    return [(device_id_for(i), site_id_for(i % n_sites)) for i in range(n_devices)]


def profiles_for(seed: int, devices: list[tuple[str, str | None]]) -> list[Profile]:
    """The fixed description (site, model, planogram...) of each machine of a fleet."""
    site_ids = sorted({s or "SITE-00" for _, s in devices})
    sites = {sid: make_site(seed, k, sid) for k, sid in enumerate(site_ids)}
    return [make_profile(seed, i, did, sites[sid or "SITE-00"]) for i, (did, sid) in enumerate(devices)]


class Fleet:
    """``n_devices`` machines spread over ``n_sites`` sites, simulated from ``start``.

    Same ``seed``, ``start`` and ``run_id`` give the same event stream (ids, times and
    payloads), however the time range is sliced into ``advance`` calls. ``run_id``
    namespaces event ids so that two runs of one fleet never reuse an id.
    """

    def __init__(
        self,
        seed: int = 0,
        n_devices: int = 10,
        *,
        n_sites: int | None = None,
        start: datetime | float | None = None,
        faults: FaultPlan | None = None,
        devices: list[tuple[str, str | None]] | None = None,
        run_id: str = "0",
        heartbeat_s: float = 300.0,
        telemetry_s: float = 60.0,
        initial_state: bool = True,
    ) -> None:
        if devices is None:
            devices = layout(n_devices, n_sites)
        if not devices:
            raise ValueError("a fleet needs at least one device")
        if start is None:
            start = ev.utcnow()
        self.start = start.timestamp() if isinstance(start, datetime) else float(start)
        self.seed = seed
        self.plan = faults or FaultPlan.none()
        unknown = {s.device_id for s in self.plan.scheduled} - {d for d, _ in devices}
        if unknown:
            raise ValueError(f"scheduled fault(s) for unknown device(s): {', '.join(sorted(unknown))}")
        self.profiles = profiles_for(seed, devices)
        prefix = f"s{seed}r{run_id}"
        self.devices: list[DeviceSim] = [
            DeviceSim(p, seed=seed, start=self.start, id_prefix=prefix, plan=self.plan, heartbeat_s=heartbeat_s,
                      telemetry_s=telemetry_s, initial_state=initial_state)
            for p in self.profiles
        ]
        self.now = self.start

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.devices]

    def site_of(self, device_id: str) -> str:
        for p in self.profiles:
            if p.device_id == device_id:
                return p.site.site_id
        raise KeyError(device_id)

    def advance_by_device(self, until: float) -> list[tuple[DeviceSim, list[ev.DeviceEvent]]]:
        """Advance every machine to ``until`` (epoch seconds); events grouped per machine."""
        self.now = max(self.now, until)
        return [(d, d.advance(until)) for d in self.devices]

    def advance(self, until: datetime | float) -> list[ev.DeviceEvent]:
        """Advance to ``until``; all machines' new events merged in time order."""
        t = until.timestamp() if isinstance(until, datetime) else float(until)
        per_device = [evs for _, evs in self.advance_by_device(t)]
        return list(heapq.merge(*per_device, key=lambda e: (e.occurred_at, e.device_id)))

    def run_for(self, seconds: float) -> list[ev.DeviceEvent]:
        """Events of the next ``seconds`` of simulated time."""
        return self.advance(self.now + seconds)

    def audit_files(self) -> list[tuple[str, float, bytes]]:
        """DEX files read at service visits since the last call: (device_id, simulated time, file)."""
        out = []
        for d in self.devices:
            out += [(d.device_id, t, raw) for t, raw in d.audit.files]
            d.audit.files = []
        return sorted(out, key=lambda x: (x[1], x[0]))

    @property
    def injected(self) -> list[InjectedFault]:
        """Every fault injected so far (ground truth for detection tests)."""
        return sorted((f for d in self.devices for f in d.injected), key=lambda f: (f.start, f.device_id))

    def stored(self, events: Iterable[ev.DeviceEvent], received_delay_s: float = 0.5) -> list[ev.StoredEvent]:
        """The events as the collector stores them (``received_at`` = occurred + delay)."""
        sites = {p.device_id: p.site.site_id for p in self.profiles}
        delay = timedelta(seconds=received_delay_s)
        return [
            ev.StoredEvent(event_id=e.event_id, device_id=e.device_id, type=e.type, occurred_at=e.occurred_at,
                           received_at=e.occurred_at + delay, data=e.data, seq=e.seq, site_id=sites.get(e.device_id))
            for e in events
        ]


def showcase_plan(profiles: list[Profile], start_offset_s: float = 60.0, spacing_s: float = 30.0) -> list[ScheduledFault]:
    """One scheduled fault of every kind, each on a different applicable machine, early in a run.

    ``vendwatch demo`` uses it so that a short run shows every kind of incident.
    """
    out: list[ScheduledFault] = []
    used: set[str] = set()
    for i, kind in enumerate(FAULTS.values()):
        for p in profiles:
            if kind.fits(p.refrigerated, p.smart) and p.device_id not in used:
                used.add(p.device_id)
                out.append(ScheduledFault(kind.name, p.device_id, start_offset_s + i * spacing_s))
                break
    return out


def encode_event(e: ev.DeviceEvent) -> bytes:
    """The event as one element of a request body's ``events`` array."""
    return msgspec.json.encode(e)


