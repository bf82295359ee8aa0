"""Field positions of the segments vendwatch interprets (EVA-DTS 6.x numbering, 1-based).

One table drives both the parser and the writer, so they cannot disagree. Kinds:
``s`` text, ``i`` whole number, ``m`` money (scaled by ID4 decimal places).
"""

from __future__ import annotations

_BOARD = (("serial", "s"), ("model", "s"), ("software", "s"))
_VALUE_FIRST = (("value_init", "m"), ("count_init", "i"), ("value_reset", "m"), ("count_reset", "i"))
_COUNT_FIRST = (("count_init", "i"), ("value_init", "m"), ("count_reset", "i"), ("value_reset", "m"))
_RESET_INIT_MONEY = (("reset", "m"), ("init", "m"))

FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "ID1": (("serial", "s"), ("model", "s"), ("build", "s"), ("location", "s"), ("user_data", "s"),
            ("asset", "s"), ("dts_level", "s"), ("dts_revision", "s")),
    "ID4": (("decimals", "i"), ("currency_numeric", "s"), ("currency", "s")),
    "ID5": (("date", "s"), ("time", "s")),
    "CB1": _BOARD,
    "VA1": _VALUE_FIRST,
    "VA2": _VALUE_FIRST,
    "VA3": _VALUE_FIRST,
    "CA1": _BOARD,
    "CA2": _VALUE_FIRST,
    "CA3": (("in_reset", "m"), ("to_box_reset", "m"), ("to_tubes_reset", "m"), ("bills_reset", "m"),
            ("in_init", "m"), ("to_box_init", "m"), ("to_tubes_init", "m"), ("bills_init", "m")),
    "CA4": (("dispensed_reset", "m"), ("manual_dispensed_reset", "m"), ("dispensed_init", "m"),
            ("manual_dispensed_init", "m")),
    "CA8": _RESET_INIT_MONEY,
    "CA10": _RESET_INIT_MONEY,
    "DA1": _BOARD,
    "DA2": _VALUE_FIRST,
    "PA1": (("selection", "s"), ("price", "m"), ("product_id", "s")),
    "PA2": _COUNT_FIRST,
    "PA3": _COUNT_FIRST,
    "PA4": _COUNT_FIRST,
    "PA5": (("date", "s"), ("time", "s"), ("sold_out_count", "i")),
    "PA7": (("selection", "s"), ("device", "s"), ("price_list", "s"), ("price", "m"), ("count_init", "i"),
            ("value_init", "m"), ("count_reset", "i"), ("value_reset", "m")),
    "LA1": (("price_list", "s"), ("selection", "s"), ("price", "m"), ("count_init", "i"), ("count_reset", "i")),
    "EA1": (("code", "s"), ("date", "s"), ("time", "s"), ("duration_min", "i")),
    "EA2": (("code", "s"), ("count_reset", "i"), ("count_init", "i"), ("active", "s")),
    "EA3": (("resets_read_init", "i"), ("date", "s"), ("time", "s"), ("terminal", "s"), ("last_date", "s"),
            ("last_time", "s"), ("last_terminal", "s"), ("user_data", "s"), ("reads_init", "i"),
            ("resets_init", "i")),
    "EA7": (("reset", "i"), ("init", "i")),
    "MA5": (("status", "s"),),
}

# segment -> attribute of DexRead holding it (single occurrence)
SINGLE: dict[str, str] = {
    "ID1": "machine", "ID4": "money", "ID5": "clock", "CB1": "board",
    "VA1": "paid", "VA2": "test", "VA3": "free",
    "CA1": "coin_mech", "CA2": "cash_sales", "CA3": "cash_in", "CA4": "cash_out", "CA8": "overpay",
    "CA10": "tubes_filled", "DA1": "cashless_device", "DA2": "cashless_sales",
    "EA3": "reads", "EA7": "power_outages",
}
# segments following a PA1 -> attribute of Product
PRODUCT: dict[str, str] = {"PA2": "paid", "PA3": "test", "PA4": "free", "PA5": "last_sale"}

# ISO 4217 minor-unit exponents that differ from 2 (the money in events is in minor units)
CURRENCY_EXPONENT: dict[str, int] = {
    "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "PYG": 0, "UGX": 0, "XOF": 0, "XAF": 0,
    "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
}
