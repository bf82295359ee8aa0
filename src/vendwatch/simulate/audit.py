"""The DEX audit side of a simulated machine: EVA-DTS counters kept by the board, read
by the technician's handheld at each service visit, with injectable discrepancies.

The counters count what really happened (every vend, every coin to the cash box),
including while the machine could not send telemetry, so a read agrees with the
telemetry of the same period unless something went wrong. Injections make it go wrong
on purpose, at the N-th read of one machine (read 0 is the first, a baseline):

- ``missing_telemetry``: AMOUNT vends (default 5) of slot A1 the platform never saw;
- ``skimmed_cash``: the collector takes AMOUNT cents (default 2000) before recording;
- ``counter_reset``: the board lost its counters just after the previous read;
- ``bad_crc``: the file is damaged in transfer (one byte changed), so it is refused.

Spec syntax: ``kind@DEVICE#N[=AMOUNT]``, e.g. ``skimmed_cash@VM-00002#2=1500``.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vendwatch.dex import model as dm
from vendwatch.dex.writer import write
from vendwatch.simulate.faults import FaultSpecError

DEX_KINDS = ("missing_telemetry", "skimmed_cash", "counter_reset", "bad_crc")
_DEFAULT_AMOUNT = {"missing_telemetry": 5, "skimmed_cash": 2000}


@dataclass(frozen=True)
class DexInjection:
    kind: str
    device_id: str
    read: int  # 0-based index of the machine's audit reads in this run
    amount: int = 0

    @classmethod
    def parse(cls, text: str) -> DexInjection:
        m = re.match(r"^([a-z_]+)@([^#]+)#(\d+)(?:=(\d+))?$", text.strip())
        if not m:
            raise FaultSpecError(f"bad DEX injection {text!r}: use kind@DEVICE#N[=AMOUNT], e.g. skimmed_cash@VM-00002#2=1500")
        kind = m.group(1)
        if kind not in DEX_KINDS:
            raise FaultSpecError(f"unknown DEX injection {kind!r}; known: {', '.join(DEX_KINDS)}")
        amount = int(m.group(4)) if m.group(4) else _DEFAULT_AMOUNT.get(kind, 0)
        return cls(kind, m.group(2), int(m.group(3)), amount)


@dataclass
class _SlotCounters:
    units: int
    value: int
    cash_units: int
    cash_value: int

    def as_product(self, slot: str, product_id: str, price: int) -> dm.Product:
        return dm.Product(
            selection=slot, price=price, product_id=product_id,
            paid=dm.Counter(count_init=self.units, value_init=self.value),
            by_device=[dm.DeviceSales(selection=slot, device="CA", count_init=self.cash_units, value_init=self.cash_value),
                       dm.DeviceSales(selection=slot, device="DA", count_init=self.units - self.cash_units,
                                      value_init=self.value - self.cash_value)])


@dataclass
class MachineAudit:
    """EVA-DTS counters of one machine and the reads taken from them."""

    device_id: str
    slots: list[tuple[str, str, int]]  # (slot, product_id, price)
    seed: str
    injections: list[DexInjection] = field(default_factory=list)
    reads: int = 0
    files: list[tuple[float, bytes]] = field(default_factory=list)  # (simulated time, file) not yet sent
    box_since_collection: int = 0
    _skim: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(f"vendwatch-sim-audit:{self.seed}:{self.device_id}")
        self.serial = f"SN{rng.randrange(10**9):09d}"
        # a board with a history: lifetime counters well above one visit's sales
        self.counters = {s: _SlotCounters(u := rng.randint(800, 4000), u * p, u // 3, u // 3 * p)
                         for s, _, p in self.slots}
        self.to_box = rng.randint(10**6, 10**7)
        self.at_last_read: dict[str, _SlotCounters] = {}
        self.to_box_at_last_read = self.to_box

    def sale(self, slot: str, price: int, method: str) -> None:
        c = self.counters[slot]
        c.units += 1
        c.value += price
        if method == "cash":
            c.cash_units += 1
            c.cash_value += price
            self.to_box += price  # exact change: all of it goes to the cash box
            self.box_since_collection += price

    def read(self, now: float) -> bytes:
        """The handheld's read at ``now`` (kept in ``files`` for sending)."""
        todo = [i for i in self.injections if i.read == self.reads]
        for inj in todo:
            if inj.kind == "missing_telemetry":
                slot, _, price = self.slots[0]
                c = self.counters[slot]
                c.units += inj.amount
                c.value += inj.amount * price
            elif inj.kind == "counter_reset":  # lost just after the previous read: only this period's sales remain
                for s, c in self.counters.items():
                    before = self.at_last_read.get(s, _SlotCounters(0, 0, 0, 0))
                    c.units, c.value = c.units - before.units, c.value - before.value
                    c.cash_units, c.cash_value = c.cash_units - before.cash_units, c.cash_value - before.cash_value
                self.to_box -= self.to_box_at_last_read
            elif inj.kind == "skimmed_cash":
                self._skim = inj.amount
        # machines stamp whole seconds; customers cannot buy during a visit, so rounding up loses nothing
        at = datetime.fromtimestamp(math.ceil(now), UTC)
        products = [self.counters[s].as_product(s, pid, price) for s, pid, price in self.slots]
        units = sum(c.units for c in self.counters.values())
        value = sum(c.value for c in self.counters.values())
        cash_u = sum(c.cash_units for c in self.counters.values())
        cash_v = sum(c.cash_value for c in self.counters.values())
        read = dm.DexRead(
            machine=dm.Machine(serial=self.serial, model="VX", asset=self.device_id),
            money=dm.MoneyFormat(decimals=2, currency_numeric="978", currency="EUR"),
            clock=dm.Clock(date=at.strftime("%Y%m%d"), time=at.strftime("%H%M%S")),
            paid=dm.Counter(count_init=units, value_init=value),
            cash_sales=dm.Counter(count_init=cash_u, value_init=cash_v),
            cashless_sales=dm.Counter(count_init=units - cash_u, value_init=value - cash_v),
            cash_in=dm.CashIn(in_init=self.to_box, to_box_init=self.to_box),
            products=products,
            reads=dm.Reads(reads_init=1000 + self.reads, date=at.strftime("%y%m%d"), time=at.strftime("%H%M")),
        )
        raw = write(read, sender=f"HH{self.device_id[-5:]}")
        if any(i.kind == "bad_crc" for i in todo):
            k = raw.index(b"PA2*") + 4
            raw = raw[:k] + (b"9" if raw[k:k + 1] != b"9" else b"8") + raw[k + 1:]
        self.at_last_read = {s: _SlotCounters(c.units, c.value, c.cash_units, c.cash_value)
                             for s, c in self.counters.items()}
        self.to_box_at_last_read = self.to_box
        self.reads += 1
        self.files.append((now, raw))
        return raw

    def collect(self) -> int:
        """Cash recorded as collected at the end of a visit (minus any injected skim)."""
        taken = max(0, self.box_since_collection - self._skim)
        self.box_since_collection, self._skim = 0, 0
        return taken


def showcase_dex(device_ids: list[str]) -> list[DexInjection]:
    """One DEX discrepancy of each kind on the first machines (``vendwatch demo``): a damaged
    first read, and the others at the second read (after the first service visit's baseline)."""
    kinds = [("bad_crc", 0), ("missing_telemetry", 1), ("skimmed_cash", 1), ("counter_reset", 1)]
    return [DexInjection(k, d, n, _DEFAULT_AMOUNT.get(k, 0)) for (k, n), d in zip(kinds, device_ids, strict=False)]
