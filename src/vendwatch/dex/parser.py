"""EVA-DTS (DEX/UCS) parser: bytes in, a :class:`DexFile` or a :class:`DexError` out. No I/O.

What is checked, in order: the ``ST``/``G85``/``SE`` frame, the G85 CRC-16/ARC over the
bytes from ``ST`` through the line end before ``G85``, the ``SE`` segment count and
control number, the ``DXS``/``DXE`` envelope when present, then every interpreted
field. Tolerated and flagged: line ends rewritten to LF only (``lf_line_ends``), and a
CRC written least significant byte first by pre-6.0 machines (``crc_byte_swapped``).
Segments vendwatch does not interpret are kept verbatim, never an error.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from vendwatch.dex import model as dm
from vendwatch.dex.crc import crc16_arc, swap_bytes
from vendwatch.dex.layout import CURRENCY_EXPONENT, FIELDS, PRODUCT, SINGLE

_LINE = re.compile(rb"[^\n]*(?:\n|$)")
_HEX4 = re.compile(r"^[0-9A-Fa-f]{4}$")
_INT = re.compile(r"^\d+$")
_MONEY = re.compile(r"^\d+(?:\.\d+)?$")


class DexError(ValueError):
    """A file vendwatch refuses; ``code`` is machine-readable, ``line`` is 1-based when known."""

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        self.code = code
        self.line = line
        self.reason = f"line {line}: {message}" if line is not None else message
        super().__init__(self.reason)


class _Line:
    __slots__ = ("no", "start", "raw", "text", "tag", "fields")

    def __init__(self, no: int, start: int, raw: bytes) -> None:
        self.no = no
        self.start = start
        self.raw = raw
        self.text = raw.rstrip(b"\r\n").decode("latin-1")
        parts = self.text.split("*")
        self.tag = parts[0].strip()
        self.fields = parts[1:]


def _lines(data: bytes) -> list[_Line]:
    out = []
    for no, m in enumerate(_LINE.finditer(data), start=1):
        if m.start() == len(data):
            break
        out.append(_Line(no, m.start(), m.group()))
    return out


def _find(lines: list[_Line], tag: str, start: int = 0) -> int | None:
    for i in range(start, len(lines)):
        if lines[i].tag == tag:
            return i
    return None


def _check_crc(data: bytes, st: _Line, g85: _Line) -> list[str]:
    if not g85.fields or not _HEX4.match(g85.fields[0].strip()):
        raise DexError("bad_crc_field", f"G85 must hold 4 hex digits, found {g85.text!r}", g85.no)
    written = int(g85.fields[0].strip(), 16)
    covered = data[st.start:g85.start]
    crc = crc16_arc(covered)
    if written == crc:
        return []
    if written == swap_bytes(crc):
        return ["crc_byte_swapped"]
    if re.search(rb"(?<!\r)\n", covered):
        crlf = re.sub(rb"(?<!\r)\n", b"\r\n", covered)
        crc2 = crc16_arc(crlf)
        if written == crc2:
            return ["lf_line_ends"]
        if written == swap_bytes(crc2):
            return ["lf_line_ends", "crc_byte_swapped"]
    raise DexError("crc_mismatch", f"G85 integrity check failed: the file says {g85.fields[0].strip().upper()},"
                   f" its content gives {crc:04X}; the file was altered or damaged in transfer", g85.no)


def _envelope(lines: list[_Line], first: int, last: int) -> dm.Transmission | None:
    head = [ln for ln in lines[:first] if ln.tag]
    tail = [ln for ln in lines[last + 1:] if ln.tag]
    dxs = next((ln for ln in head if ln.tag == "DXS"), None)
    if dxs is None:
        if head or tail:
            bad = (head or tail)[0]
            raise DexError("frame", f"unexpected {bad.tag!r} outside the ST...SE transaction set", bad.no)
        return None
    if len(head) > 1:
        raise DexError("frame", f"unexpected {head[1].tag!r} between DXS and ST", head[1].no)
    if not tail or tail[0].tag != "DXE":
        raise DexError("frame", "DXS without a DXE after SE", (tail[0].no if tail else lines[last].no))
    dxe = tail[0]
    if len(tail) > 1:
        raise DexError("frame", "more than one transaction set, or text after DXE; send one read per file",
                       tail[1].no)
    f = dxs.fields + [""] * 4
    t = dm.Transmission(sender=f[0] or None, function=f[1] or None, version=f[2] or None, control=f[3] or None)
    e = dxe.fields + [""] * 2
    if t.control and e[0] and e[0] != t.control:
        raise DexError("frame", f"DXE control number {e[0]!r} does not match DXS {t.control!r}", dxe.no)
    if e[1] and e[1] != "1":
        raise DexError("frame", f"DXE announces {e[1]} transaction sets; send one read per file", dxe.no)
    return t


class _Fields:
    """Converts one segment's fields by the layout table, naming the line on errors."""

    def __init__(self, decimals: int, exponent: int) -> None:
        self.decimals = decimals
        self.exponent = exponent

    def money(self, raw: str, ln: _Line, pos: int) -> int:
        if not _MONEY.match(raw):
            raise DexError("bad_number", f"{ln.tag} field {pos} {raw!r} is not an amount", ln.no)
        if "." in raw:  # some handhelds write the point themselves: it wins over ID4
            whole, frac = raw.split(".")
            units, places = int(whole + frac), len(frac)
        else:
            units, places = int(raw), self.decimals
        shift = self.exponent - places
        if shift >= 0:
            return units * 10**shift
        q, r = divmod(units, 10**-shift)
        if r:
            raise DexError("bad_number", f"{ln.tag} field {pos} {raw!r} has more decimal places than the"
                           f" currency's minor unit", ln.no)
        return q

    def convert(self, ln: _Line) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pos, ((name, kind), raw) in enumerate(zip(FIELDS[ln.tag], ln.fields, strict=False), start=1):
            raw = raw.strip()
            if raw == "":
                continue
            if kind == "s":
                out[name] = raw
            elif kind == "i":
                if not _INT.match(raw):
                    raise DexError("bad_number", f"{ln.tag} field {pos} {raw!r} is not a whole number", ln.no)
                out[name] = int(raw)
            else:
                out[name] = self.money(raw, ln, pos)
        return out


def _money_format(body: list[_Line]) -> tuple[int, int]:
    id4 = next((ln for ln in body if ln.tag == "ID4"), None)
    decimals, currency = 2, None
    if id4 is not None and id4.fields:
        d = id4.fields[0].strip()
        if d:
            if not _INT.match(d) or int(d) > 6:
                raise DexError("bad_number", f"ID4 decimal places {d!r} must be 0-6", id4.no)
            decimals = int(d)
        if len(id4.fields) > 2 and id4.fields[2].strip():
            currency = id4.fields[2].strip().upper()
    exponent = CURRENCY_EXPONENT.get(currency, 2) if currency else decimals
    return decimals, exponent


def _interpret(body: list[_Line]) -> dm.DexRead:
    conv = _Fields(*_money_format(body))
    read: dict[str, Any] = {"products": [], "price_lists": [], "events": [], "event_counts": [], "status": [],
                            "other": []}
    product: dict[str, Any] | None = None
    seen: dict[str, int] = {}

    def close_product() -> None:
        if product is not None:
            read["products"].append(dm.Product(**product))

    for ln in body:
        tag = ln.tag
        if tag in SINGLE:
            if tag in seen:
                raise DexError("duplicate_segment", f"{tag} appears twice (first on line {seen[tag]})", ln.no)
            seen[tag] = ln.no
            read[SINGLE[tag]] = _CLASSES[SINGLE[tag]](**conv.convert(ln))
        elif tag == "PA1":
            close_product()
            f = conv.convert(ln)
            if "selection" not in f:
                raise DexError("missing_field", "PA1 without a product (selection) number", ln.no)
            product = {**f, "by_device": [], "other": []}
        elif tag in PRODUCT or tag == "PA7" or (tag.startswith("PA") and product is not None):
            if product is None:
                raise DexError("frame", f"{tag} before any PA1", ln.no)
            if tag == "PA7":
                f = conv.convert(ln)
                f.setdefault("selection", product["selection"])
                product["by_device"].append(dm.DeviceSales(**f))
            elif tag in PRODUCT:
                attr = PRODUCT[tag]
                if attr in product:
                    raise DexError("duplicate_segment", f"{tag} appears twice for product {product['selection']}",
                                   ln.no)
                product[attr] = (dm.LastSale if tag == "PA5" else dm.Counter)(**conv.convert(ln))
            else:
                product["other"].append(dm.Segment(tag, list(ln.fields)))
        elif tag == "LA1":
            read["price_lists"].append(dm.PriceListSales(**conv.convert(ln)))
        elif tag == "EA1":
            f = conv.convert(ln)
            if "code" not in f:
                raise DexError("missing_field", "EA1 without an event identifier", ln.no)
            rest = list(ln.fields[len(FIELDS["EA1"]):])
            while rest and not rest[-1].strip():
                rest.pop()
            read["events"].append(dm.MachineEvent(**f, rest=rest))
        elif tag == "EA2":
            f = conv.convert(ln)
            if "code" not in f:
                raise DexError("missing_field", "EA2 without an event identifier", ln.no)
            read["event_counts"].append(dm.EventCount(**f))
        elif tag == "MA5":
            f = conv.convert(ln)
            vals = [x.strip() for x in ln.fields[1:]]
            while vals and not vals[-1]:
                vals.pop()
            read["status"].append(dm.MachineStatus(status=f.get("status", ""), values=vals))
        elif tag == "CA15":
            if ln.fields and ln.fields[0].strip():
                read["tube_contents"] = conv.money(ln.fields[0].strip(), ln, 1)
        else:
            read["other"].append(dm.Segment(tag, list(ln.fields)))
    close_product()
    return dm.DexRead(**read)


_CLASSES: dict[str, type] = {
    "machine": dm.Machine, "money": dm.MoneyFormat, "clock": dm.Clock, "board": dm.Board,
    "paid": dm.Counter, "test": dm.Counter, "free": dm.Counter, "coin_mech": dm.Board,
    "cash_sales": dm.Counter, "cash_in": dm.CashIn, "cash_out": dm.CashOut, "overpay": dm.ResetInit,
    "tubes_filled": dm.ResetInit, "cashless_device": dm.Board, "cashless_sales": dm.Counter,
    "reads": dm.Reads, "power_outages": dm.ResetInit,
}


def parse(data: bytes) -> dm.DexFile:
    """Parse and check one DEX file; raises :class:`DexError` with the reason (and line) when refused."""
    if not data.strip():
        raise DexError("empty", "the file is empty")
    if b"\x00" in data:
        raise DexError("not_text", "the file contains NUL bytes: it is not a DEX text file")
    lines = _lines(data)
    st_i = _find(lines, "ST")
    if st_i is None:
        raise DexError("frame", "no ST segment: this is not an EVA-DTS audit file")
    g85_i = _find(lines, "G85", st_i + 1)
    se_i = _find(lines, "SE", st_i + 1)
    if se_i is None:
        raise DexError("frame", "no SE segment closing the transaction set (file truncated?)")
    if g85_i is None or g85_i > se_i:
        raise DexError("missing_crc", "no G85 integrity check before SE; vendwatch refuses audit data it cannot"
                       " check", lines[se_i].no)
    st, g85, se = lines[st_i], lines[g85_i], lines[se_i]
    flags = _check_crc(data, st, g85)
    body_lines = [ln for ln in lines[st_i + 1:g85_i] if ln.tag]
    between = [ln for ln in lines[g85_i + 1:se_i] if ln.tag]
    if between:
        raise DexError("frame", f"unexpected {between[0].tag!r} between G85 and SE", between[0].no)
    count = len(body_lines) + 3  # ST, G85 and SE count themselves
    se_f = se.fields + ["", ""]
    if not _INT.match(se_f[0].strip()):
        raise DexError("bad_number", f"SE segment count {se_f[0]!r} is not a number", se.no)
    if int(se_f[0]) != count:
        raise DexError("segment_count", f"SE says {int(se_f[0])} segments, the set has {count}", se.no)
    control = (st.fields + ["", ""])[1].strip()
    if se_f[1].strip() != control:
        raise DexError("frame", f"SE control number {se_f[1].strip()!r} does not match ST {control!r}", se.no)
    transmission = _envelope(lines, st_i, se_i)
    return dm.DexFile(read=_interpret(body_lines), control=control, crc=g85.fields[0].strip(), segments=count,
                      transmission=transmission, flags=flags)


def read_time(read: dm.DexRead) -> datetime | None:
    """The machine's clock at the read (ID5, else EA3), naive local time; None when absent or unreadable."""
    candidates = []
    if read.clock is not None:
        candidates.append((read.clock.date, read.clock.time))
    if read.reads is not None:
        candidates.append((read.reads.date, read.reads.time))
    for d, t in candidates:
        parsed = parse_datetime(d, t)
        if parsed is not None:
            return parsed
    return None


def parse_datetime(d: str | None, t: str | None) -> datetime | None:
    """EVA-DTS dates are YYMMDD or YYYYMMDD, times HHMM or HHMMSS."""
    if not d or not _INT.match(d) or len(d) not in (6, 8):
        return None
    t = t if t and _INT.match(t) and len(t) in (4, 6) else "0000"
    fmt = ("%y%m%d" if len(d) == 6 else "%Y%m%d") + ("%H%M" if len(t) == 4 else "%H%M%S")
    try:
        return datetime.strptime(d + t, fmt)
    except ValueError:
        return None
