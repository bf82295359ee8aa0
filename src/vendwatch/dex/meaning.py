"""What changed between two audit reads of one machine (pure).

EVA-DTS counters are cumulative: since initialisation of the board, and since the
last reset (a read-with-reset by a route driver). Sales in a period are differences of
counters, which go wrong in three known ways; each is detected and reported, never
turned into negative sales:

- the board was replaced (ID1/CB1 serial changed): counters start over; the read
  becomes a new baseline and the period's sales are reported as unknown;
- a counter went backwards without a board change (counter reset, memory loss): the
  current value is counted (sales since the restart) and the slot is flagged;
- reads were taken that vendwatch never received (EA3 read counter jumped): the
  lifetime counters still give the right totals; the gap is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vendwatch.dex import model as dm

CARD_DEVICES = ("DA", "DB")  # cashless 1 and 2


@dataclass(frozen=True, slots=True)
class Amount:
    units: int = 0
    value: int = 0

    def __add__(self, o: Amount) -> Amount:
        return Amount(self.units + o.units, self.value + o.value)


@dataclass(slots=True)
class SlotSales:
    """One slot's sales in the period, by payment method where the machine reports it (PA7)."""

    slot: str
    product_id: str | None
    price: int | None
    total: Amount
    cash: Amount | None = None
    card: Amount | None = None
    counter_reset: bool = False


@dataclass(slots=True)
class Period:
    """The meaning of a read given the previous one (``baseline`` when there is nothing to subtract)."""

    baseline: bool
    findings: list[str] = field(default_factory=list)  # first_read, board_replaced, counter_reset, missed_reads
    missed_reads: int = 0
    slots: list[SlotSales] = field(default_factory=list)
    paid: Amount = Amount()
    cash_sales: Amount = Amount()
    cashless_sales: Amount = Amount()
    cash_in: int = 0  # coins and bills taken (CA3)
    cash_to_box: int = 0  # to the cash box: what the collector should find (CA3)
    cash_dispensed: int = 0  # change paid out (CA4)
    events: dict[str, int] = field(default_factory=dict)  # EA2 code -> occurrences in the period


def serial(read: dm.DexRead) -> tuple[str | None, str | None]:
    return (read.machine.serial if read.machine else None, read.board.serial if read.board else None)


def _diff(prev: int | None, cur: int | None) -> tuple[int, bool]:
    """(delta, reset?) of a lifetime counter; a missing previous value counts from zero."""
    if cur is None:
        return 0, False
    if prev is None:
        return cur, False
    if cur < prev:
        return cur, True
    return cur - prev, False


def _counter(prev: dm.Counter | None, cur: dm.Counter | None, was_reset: bool = False) -> tuple[Amount, bool]:
    """Sales between two counters; ``was_reset``: a read-with-reset zeroed the since-reset ones in between."""
    if cur is None:
        return Amount(), False
    p = prev or dm.Counter()
    if cur.count_init is None and cur.value_init is None:  # only since-reset counters
        if was_reset:
            return Amount(cur.count_reset or 0, cur.value_reset or 0), False
        u, ru = _diff(p.count_reset, cur.count_reset)
        v, rv = _diff(p.value_reset, cur.value_reset)
        return Amount(u, v), ru or rv
    u, ru = _diff(p.count_init, cur.count_init)
    v, rv = _diff(p.value_init, cur.value_init)
    return Amount(u, v), ru or rv


def _by_device(p: dm.Product | None, c: dm.Product, methods: tuple[str, ...]) -> Amount | None:
    cur = [d for d in c.by_device if d.device in methods]
    if not cur:
        return None
    prev = {d.device: d for d in (p.by_device if p else []) if d.device in methods}
    total = Amount()
    for d in cur:
        pd = prev.get(d.device)
        a, _ = _counter(dm.Counter(count_init=pd.count_init, value_init=pd.value_init) if pd else None,
                        dm.Counter(count_init=d.count_init, value_init=d.value_init))
        total = total + a
    return total


def compare(prev: dm.DexRead | None, cur: dm.DexRead) -> Period:
    """The period between ``prev`` (the previous read received, or None) and ``cur``."""
    if prev is None:
        return Period(baseline=True, findings=["first_read"])
    if serial(prev) != serial(cur):
        return Period(baseline=True, findings=["board_replaced"])
    out = Period(baseline=False)
    if prev.reads and cur.reads and prev.reads.reads_init is not None and cur.reads.reads_init is not None:
        gap = cur.reads.reads_init - prev.reads.reads_init - 1
        if gap > 0:
            out.missed_reads = gap
            out.findings.append("missed_reads")
    was_reset = _reset_between(prev, cur)
    before = {p.selection: p for p in prev.products}
    any_reset = False
    for c in cur.products:
        p = before.get(c.selection)
        total, reset = _counter(p.paid if p else None, c.paid, was_reset)
        any_reset |= reset
        out.slots.append(SlotSales(slot=c.selection, product_id=c.product_id, price=c.price, total=total,
                                   cash=_by_device(p, c, ("CA",)), card=_by_device(p, c, CARD_DEVICES),
                                   counter_reset=reset))
    for attr in ("paid", "cash_sales", "cashless_sales"):
        amount, reset = _counter(getattr(prev, attr), getattr(cur, attr), was_reset)
        any_reset |= reset
        setattr(out, attr, amount)
    pin, cin = prev.cash_in or dm.CashIn(), cur.cash_in or dm.CashIn()
    out.cash_in, r1 = _diff(pin.in_init, cin.in_init)
    out.cash_to_box, r2 = _diff(pin.to_box_init, cin.to_box_init)
    pout, cout = prev.cash_out or dm.CashOut(), cur.cash_out or dm.CashOut()
    out.cash_dispensed, r3 = _diff(pout.dispensed_init, cout.dispensed_init)
    any_reset |= r1 or r2 or r3
    before_ev = {e.code: e for e in prev.event_counts}
    for e in cur.event_counts:
        n, _ = _diff(before_ev[e.code].count_init if e.code in before_ev else None, e.count_init)
        if n:
            out.events[e.code] = n
    if any_reset:
        out.findings.append("counter_reset")
    return out


def _reset_between(prev: dm.DexRead, cur: dm.DexRead) -> bool:
    """A read-with-reset happened since ``prev`` (EA3 counts them; since-reset counters restarted)."""
    if prev.reads is None or cur.reads is None:
        return False
    for attr in ("resets_init", "resets_read_init"):
        a, b = getattr(prev.reads, attr), getattr(cur.reads, attr)
        if a is not None and b is not None:
            return bool(b > a)
    return False
