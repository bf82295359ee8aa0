"""Realistic audit reads for tests, written by the product's writer."""

from __future__ import annotations

from datetime import UTC, datetime

from vendwatch.dex import model as dm
from vendwatch.dex.writer import write


def read(at: datetime, sales: dict[str, tuple[int, int]], *, serial: str = "SN-1", reads: int = 10,
         cash_units: int = 0, price: int = 150, to_box: int = 0, events: list[dm.MachineEvent] | None = None,
         temp_c: int | None = None) -> dm.DexRead:
    """A read at ``at`` with lifetime counters ``sales[slot] = (units, value)`` (half cash, half card)."""
    local = at.astimezone(UTC)
    products = []
    for slot, (units, value) in sales.items():
        cash = units // 2
        products.append(dm.Product(
            selection=slot, price=price, product_id=f"P-{slot}",
            paid=dm.Counter(count_init=units, value_init=value),
            by_device=[dm.DeviceSales(selection=slot, device="CA", count_init=cash, value_init=cash * price),
                       dm.DeviceSales(selection=slot, device="DA", count_init=units - cash,
                                      value_init=value - cash * price)]))
    total_u = sum(u for u, _ in sales.values())
    total_v = sum(v for _, v in sales.values())
    return dm.DexRead(
        machine=dm.Machine(serial=serial, model="VENDO 721"),
        money=dm.MoneyFormat(decimals=2, currency_numeric="978", currency="EUR"),
        clock=dm.Clock(date=local.strftime("%Y%m%d"), time=local.strftime("%H%M%S")),
        paid=dm.Counter(count_init=total_u, value_init=total_v),
        cash_sales=dm.Counter(count_init=cash_units, value_init=cash_units * price),
        cash_in=dm.CashIn(in_init=to_box, to_box_init=to_box),
        products=products,
        events=events or [],
        reads=dm.Reads(reads_init=reads, date=local.strftime("%y%m%d"), time=local.strftime("%H%M")),
        status=[dm.MachineStatus(status="TEMP", values=[str(round(temp_c * 9 / 5 + 32)), str(temp_c)])]
        if temp_c is not None else [],
    )


def file(at: datetime, sales: dict[str, tuple[int, int]], **kw: object) -> bytes:
    opts = {k: kw.pop(k) for k in ("lf_only", "swap_crc") if k in kw}
    return write(read(at, sales, **kw), **opts)  # type: ignore[arg-type]
