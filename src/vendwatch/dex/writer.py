"""Writes a :class:`DexRead` as an EVA-DTS file (CRLF, G85 CRC-16/ARC, counted SE).

Used by the simulator and by tests; the parser reads back exactly what this writes.
Options reproduce the quirks of real machines: LF-only line ends and a byte-swapped CRC.
"""

from __future__ import annotations

from typing import Any

from vendwatch.dex import model as dm
from vendwatch.dex.crc import crc16_arc, swap_bytes
from vendwatch.dex.layout import CURRENCY_EXPONENT, FIELDS, PRODUCT, SINGLE


class _Out:
    def __init__(self, read: dm.DexRead) -> None:
        money = read.money or dm.MoneyFormat()
        self.decimals = money.decimals if money.decimals is not None else 2
        cur = money.currency.upper() if money.currency else None
        self.exponent = CURRENCY_EXPONENT.get(cur, 2) if cur else self.decimals
        self.lines: list[str] = []

    def money(self, minor: int) -> str:
        shift = self.exponent - self.decimals
        if shift >= 0:
            q, r = divmod(minor, 10**shift)
            if r:
                raise ValueError(f"{minor} minor units cannot be written with {self.decimals} decimal places")
            return str(q)
        return str(minor * 10**-shift)

    def seg(self, tag: str, obj: Any, extra: list[str] | None = None) -> None:
        fields = []
        for name, kind in FIELDS[tag]:
            v = getattr(obj, name)
            fields.append("" if v is None else self.money(v) if kind == "m" else str(v))
        fields += extra or []
        while fields and fields[-1] == "":
            fields.pop()
        self.line(tag, fields)

    def line(self, tag: str, fields: list[str]) -> None:
        self.lines.append("*".join([tag, *fields]))


_ORDER = ("ID1", "ID4", "ID5", "CB1", "VA1", "VA2", "VA3", "CA1", "CA2", "CA3", "CA4", "CA8", "CA10")
_LATE = ("DA1", "DA2")


def write(read: dm.DexRead, *, control: str = "0001", sender: str | None = "VWSIM00001", lf_only: bool = False,
          swap_crc: bool = False) -> bytes:
    """The file for ``read``; ``sender`` None leaves out the DXS/DXE envelope."""
    o = _Out(read)
    o.line("ST", ["001", control])
    by_tag = {tag: getattr(read, attr) for tag, attr in SINGLE.items()}
    for tag in _ORDER:
        if by_tag[tag] is not None:
            o.seg(tag, by_tag[tag])
    if read.tube_contents is not None:
        o.line("CA15", [o.money(read.tube_contents)])
    for tag in _LATE:
        if by_tag[tag] is not None:
            o.seg(tag, by_tag[tag])
    for p in read.products:
        o.seg("PA1", p)
        for tag, attr in PRODUCT.items():
            v = getattr(p, attr)
            if v is not None:
                o.seg(tag, v)
        for s in p.other:
            o.line(s.tag, s.fields)
        for d in p.by_device:
            o.seg("PA7", d)
    for la in read.price_lists:
        o.seg("LA1", la)
    for e in read.events:
        o.seg("EA1", e, list(e.rest))
    for c in read.event_counts:
        o.seg("EA2", c)
    for tag in ("EA3", "EA7"):
        if by_tag[tag] is not None:
            o.seg(tag, by_tag[tag])
    for st in read.status:
        o.line("MA5", [st.status, *st.values])
    for s in read.other:
        o.line(s.tag, s.fields)
    eol = "\n" if lf_only else "\r\n"
    covered = "".join(ln + "\r\n" for ln in o.lines).encode("latin-1")  # the CRC is over CRLF lines
    crc = crc16_arc(covered)
    if swap_crc:
        crc = swap_bytes(crc)
    count = len(o.lines) + 2
    body = o.lines + [f"G85*{crc:04X}", f"SE*{count}*{control}"]
    if sender is not None:
        body = [f"DXS*{sender}*VA*V1/1*1", *body, "DXE*1*1"]
    return "".join(ln + eol for ln in body).encode("latin-1")
