"""Static fleet description: product catalogue, planograms and machine profiles.

A profile depends only on the seed and the machine's index, so the same seed always
describes the same fleet (sites, models, slots), whatever the run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# (product_id, price in cents, chilled?) - chilled products go in refrigerated machines
PRODUCTS: list[tuple[str, int, bool]] = [
    ("COLA-330", 250, True), ("COLA-ZERO-330", 250, True), ("LEMON-SODA-330", 230, True),
    ("WATER-500", 150, True), ("SPARKLING-500", 170, True), ("ICED-TEA-500", 260, True),
    ("ORANGE-JUICE-250", 280, True), ("ENERGY-250", 320, True), ("COLD-BREW-250", 350, True),
    ("SANDWICH-HAM", 450, True), ("SALAD-CUP", 480, True), ("YOGURT-PEACH", 220, True),
    ("CHIPS-SALT", 180, False), ("CHIPS-PAPRIKA", 180, False), ("PRETZELS", 160, False),
    ("CHOC-BAR-MILK", 150, False), ("CHOC-BAR-DARK", 170, False), ("PEANUTS", 190, False),
    ("GUM-MINT", 120, False), ("COOKIES", 210, False), ("GRANOLA-BAR", 200, False),
    ("CRACKERS", 170, False), ("GUMMY-BEARS", 160, False), ("TRAIL-MIX", 260, False),
]
NETWORKS = ("4g", "5g", "wifi", "ethernet")
MODELS = {True: ("VX-Chill 500", "Necta Snakky"), False: ("VX-Snack 300", "SnackMaster 2")}
ROWS, COLS = "ABCDE", 6  # 30 slots per machine


@dataclass
class Slot:
    slot: str
    product_id: str
    capacity: int
    low_threshold: int
    price_minor: int
    count: int
    popularity: float
    level: str = "ok"  # last stock level reported: ok, low, out

    def level_for(self, count: int) -> str:
        if count <= 0:
            return "out"
        return "low" if count <= self.low_threshold else "ok"


@dataclass
class Site:
    site_id: str
    utc_offset_h: int
    ambient_c: float
    nominal_v: float
    lat: float
    lon: float


@dataclass
class Profile:
    index: int
    device_id: str
    site: Site
    smart: bool
    refrigerated: bool
    model: str
    serial: str
    network: str
    signal_dbm: float
    latency_ms: float
    sales_per_day: float
    firmware_version: str
    config_version: str
    slots: list[Slot] = field(default_factory=list)


def make_site(seed: int, k: int, site_id: str) -> Site:
    rng = random.Random(f"vendwatch-sim-site:{seed}:{k}")
    return Site(
        site_id=site_id,
        utc_offset_h=rng.choice((0, 0, 1, 1, 2)),
        ambient_c=round(rng.uniform(18, 26), 1),
        nominal_v=230.0,
        lat=round(rng.uniform(45.0, 54.0), 5),
        lon=round(rng.uniform(2.0, 16.0), 5),
    )


def make_profile(seed: int, index: int, device_id: str, site: Site) -> Profile:
    """The fixed description of machine ``index`` of the fleet with this seed."""
    rng = random.Random(f"vendwatch-sim-profile:{seed}:{index}")
    refrigerated = rng.random() < 0.6
    smart = rng.random() < 0.7
    network = rng.choices(NETWORKS, weights=(5, 2, 2, 1))[0]
    base_signal = {"4g": -85.0, "5g": -80.0, "wifi": -60.0, "ethernet": -40.0}[network]
    products = [p for p in PRODUCTS if p[2] == refrigerated or not p[2]] if refrigerated else [p for p in PRODUCTS if not p[2]]
    prof = Profile(
        index=index,
        device_id=device_id,
        site=site,
        smart=smart,
        refrigerated=refrigerated,
        model=rng.choice(MODELS[refrigerated]),
        serial=f"SN{seed % 1000:03d}{index:06d}",
        network=network,
        signal_dbm=base_signal + rng.uniform(-10, 5),
        latency_ms=rng.uniform(30, 120) if network in ("4g", "5g") else rng.uniform(5, 30),
        # a busy station machine sells ~200/day, a quiet office one ~40
        sales_per_day=rng.choice((40, 60, 80, 120, 200)) * rng.uniform(0.8, 1.2),
        firmware_version=rng.choice(("3.4.1", "3.4.2", "3.5.0")),
        config_version=f"cfg-{rng.randint(10, 14)}",
    )
    for r, row in enumerate(ROWS):
        for c in range(1, COLS + 1):
            pid, price, _ = rng.choice(products)
            capacity = rng.choice((8, 10, 12)) if r < 3 else rng.choice((6, 8))
            # machines start anywhere in their refill cycle: some slots already low
            fill = rng.uniform(0.25, 1.0)
            prof.slots.append(Slot(
                slot=f"{row}{c}", product_id=pid, capacity=capacity, low_threshold=2 if capacity <= 8 else 3,
                price_minor=price, count=max(0, round(capacity * fill) - (1 if rng.random() < 0.1 else 0)),
                popularity=rng.lognormvariate(0, 0.6),
            ))
    for s in prof.slots:
        s.level = s.level_for(s.count)
    return prof


def _gauss(x: float, mu: float, sigma: float) -> float:
    return math.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _raw_curve(hour: float) -> float:
    # breakfast, lunch and evening commute peaks over a small night-time floor
    return 0.08 + 0.9 * _gauss(hour, 8.5, 1.2) + 1.6 * _gauss(hour, 12.5, 1.3) + 1.1 * _gauss(hour, 17.5, 1.8)


_MEAN = sum(_raw_curve(h / 10) for h in range(240)) / 240


def daily_curve(local_hour: float) -> float:
    """Relative sales rate at a local hour of day; averages 1.0 over a day."""
    return _raw_curve(local_hour % 24) / _MEAN


CURVE_MAX = max(daily_curve(h / 10) for h in range(240))
