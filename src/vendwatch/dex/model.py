"""What an EVA-DTS audit read says, as typed structs (the parser's output, the writer's input).

Money is in minor units of the read's currency (ID4 decimal places already applied);
counters keep the two scopes EVA-DTS gives them: since initialisation (lifetime of the
board) and since the last reset (usually the last read-with-reset by a route driver).
Dates and times stay the strings the machine wrote (formats vary by maker); see
``read_time`` in :mod:`vendwatch.dex.parser` for the one place they are interpreted.
"""

from __future__ import annotations

from msgspec import Struct


class Segment(Struct, array_like=True):
    """A segment kept verbatim: its tag (``SA2``, ``CA7``...) and its fields."""

    tag: str
    fields: list[str]


class Machine(Struct, kw_only=True, omit_defaults=True):  # ID1
    serial: str | None = None
    model: str | None = None
    build: str | None = None
    location: str | None = None
    user_data: str | None = None
    asset: str | None = None
    dts_level: str | None = None
    dts_revision: str | None = None


class MoneyFormat(Struct, kw_only=True, omit_defaults=True):  # ID4
    decimals: int | None = None
    currency_numeric: str | None = None
    currency: str | None = None


class Clock(Struct, kw_only=True, omit_defaults=True):  # ID5
    date: str | None = None
    time: str | None = None


class Board(Struct, kw_only=True, omit_defaults=True):  # CB1, CA1, DA1
    serial: str | None = None
    model: str | None = None
    software: str | None = None


class Counter(Struct, kw_only=True, omit_defaults=True):
    """Units and value, lifetime ("init") and since last reset (VA1-3, CA2, DA2, PA2-4)."""

    count_init: int | None = None
    value_init: int | None = None
    count_reset: int | None = None
    value_reset: int | None = None


class CashIn(Struct, kw_only=True, omit_defaults=True):  # CA3
    in_reset: int | None = None
    to_box_reset: int | None = None
    to_tubes_reset: int | None = None
    bills_reset: int | None = None
    in_init: int | None = None
    to_box_init: int | None = None
    to_tubes_init: int | None = None
    bills_init: int | None = None


class CashOut(Struct, kw_only=True, omit_defaults=True):  # CA4
    dispensed_reset: int | None = None
    manual_dispensed_reset: int | None = None
    dispensed_init: int | None = None
    manual_dispensed_init: int | None = None


class ResetInit(Struct, kw_only=True, omit_defaults=True):  # CA8 overpay, CA10 tubes filled, EA7 outages
    reset: int | None = None
    init: int | None = None


class DeviceSales(Struct, kw_only=True, omit_defaults=True):  # PA7
    selection: str
    device: str | None = None  # CA cash, DA/DB cashless 1/2, TA token...
    price_list: str | None = None
    price: int | None = None
    count_init: int | None = None
    value_init: int | None = None
    count_reset: int | None = None
    value_reset: int | None = None


class LastSale(Struct, kw_only=True, omit_defaults=True):  # PA5
    date: str | None = None
    time: str | None = None
    sold_out_count: int | None = None


class Product(Struct, kw_only=True, omit_defaults=True):
    """One selection (slot): PA1 and the PA2-PA7 segments that follow it."""

    selection: str
    price: int | None = None
    product_id: str | None = None
    paid: Counter | None = None  # PA2
    test: Counter | None = None  # PA3
    free: Counter | None = None  # PA4
    last_sale: LastSale | None = None  # PA5
    by_device: list[DeviceSales] = []  # PA7
    other: list[Segment] = []  # PA6 and anything else between this PA1 and the next


class PriceListSales(Struct, kw_only=True, omit_defaults=True):  # LA1
    price_list: str | None = None
    selection: str | None = None
    price: int | None = None
    count_init: int | None = None
    count_reset: int | None = None


class MachineEvent(Struct, kw_only=True, omit_defaults=True):  # EA1
    code: str
    date: str | None = None
    time: str | None = None
    duration_min: int | None = None
    rest: list[str] = []


class EventCount(Struct, kw_only=True, omit_defaults=True):  # EA2
    code: str
    count_reset: int | None = None
    count_init: int | None = None
    active: str | None = None


class Reads(Struct, kw_only=True, omit_defaults=True):  # EA3
    resets_read_init: int | None = None
    date: str | None = None
    time: str | None = None
    terminal: str | None = None
    last_date: str | None = None
    last_time: str | None = None
    last_terminal: str | None = None
    user_data: str | None = None
    reads_init: int | None = None
    resets_init: int | None = None


class MachineStatus(Struct, kw_only=True, omit_defaults=True):  # MA5
    status: str
    values: list[str] = []


class DexRead(Struct, kw_only=True, omit_defaults=True):
    """The interpreted content of one transaction set (ST ... SE)."""

    machine: Machine | None = None
    money: MoneyFormat | None = None
    clock: Clock | None = None
    board: Board | None = None
    paid: Counter | None = None  # VA1
    test: Counter | None = None  # VA2
    free: Counter | None = None  # VA3
    coin_mech: Board | None = None  # CA1
    cash_sales: Counter | None = None  # CA2
    cash_in: CashIn | None = None  # CA3
    cash_out: CashOut | None = None  # CA4
    overpay: ResetInit | None = None  # CA8
    tubes_filled: ResetInit | None = None  # CA10
    tube_contents: int | None = None  # CA15
    cashless_device: Board | None = None  # DA1
    cashless_sales: Counter | None = None  # DA2
    products: list[Product] = []
    price_lists: list[PriceListSales] = []
    events: list[MachineEvent] = []
    event_counts: list[EventCount] = []
    reads: Reads | None = None
    power_outages: ResetInit | None = None  # EA7
    status: list[MachineStatus] = []
    other: list[Segment] = []  # SA*, CA5-CA17 not listed above, DA3-DA10, BA*, maker segments...


class Transmission(Struct, kw_only=True, omit_defaults=True):  # DXS
    sender: str | None = None
    function: str | None = None
    version: str | None = None
    control: str | None = None


class DexFile(Struct, kw_only=True, omit_defaults=True):
    """A whole accepted file: the read, its envelope and what was tolerated (``flags``)."""

    read: DexRead
    control: str  # ST02 / SE02
    crc: str  # the G85 value as written
    segments: int  # SE01
    transmission: Transmission | None = None
    flags: list[str] = []  # lf_line_ends, crc_byte_swapped
