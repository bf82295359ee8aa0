"""The EVA-DTS parser: frame, CRC, segment count, fields, quirks of real files."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.dex.strategies import reads

from vendwatch.dex import model as dm
from vendwatch.dex.crc import crc16_arc
from vendwatch.dex.parser import DexError, parse, read_time
from vendwatch.dex.writer import write


def _file(lines: list[str], eol: str = "\r\n", swap: bool = False, count: int | None = None) -> bytes:
    """A file around ``lines`` (the body between ST and G85), CRC computed over CRLF lines."""
    body = ["ST*001*0001", *lines]
    crc = crc16_arc("".join(x + "\r\n" for x in body).encode())
    if swap:
        crc = ((crc & 0xFF) << 8) | (crc >> 8)
    n = count if count is not None else len(body) + 2
    return eol.join(["DXS*XYZ1234567*VA*V0/6*1", *body, f"G85*{crc:04X}", f"SE*{n}*0001", "DXE*1*1", ""]).encode()


REAL = [
    "ID1*AB12345678*VENDO 721*0*Lobby 2**7103*6*1",
    "ID4*2*978*EUR",
    "ID5*260114*0931",
    "CB1*CB998877*VMC-3*1.20",
    "VA1*123450*9876*4500*300",
    "VA2*300*2*0*0",
    "VA3*0*0*0*0",
    "CA1*CM1*COINCO*0101",
    "CA2*80000*640*2500*20",
    "CA3*2800*1900*900*1200*91000*50000*41000*32000",
    "CA4*300*0*9100*200",
    "CA15*4250",
    "DA1*DA55*NAYAX*4.1",
    "DA2*43450*3236*2000*280",
    "PA1*A1*150*COLA330",
    "PA2*1200*180000*20*3000",
    "PA5*260114*0902*3",
    "PA7*A1*CA*0*150*700*105000*10*1500",
    "PA7*A1*DA*0*150*500*75000*10*1500",
    "PA1*A2*225",
    "PA2*50*11250*2*450",
    "PA6*1*2*3",
    "LA1*0*A1*150*1200*20",
    "EA1*EGS*260113*2212*14",
    "EA1*EJJ*260112*0300*95**1",
    "EA2*EGS*4*311*0",
    "EA3*57*260114*0931*HH01*260107*0815*HH01**412*57",
    "EA7*1*19",
    "MA5*TEMP*38*3",
    "SA2*SANITIZED*260110",
    "XY9*maker*specific",
]


def test_crc16_arc_check_value() -> None:
    assert crc16_arc(b"123456789") == 0xBB3D


def test_realistic_file_every_segment() -> None:
    f = parse(_file(REAL))
    r = f.read
    assert f.flags == [] and f.segments == len(REAL) + 3 and f.transmission and f.transmission.sender == "XYZ1234567"
    assert r.machine == dm.Machine(serial="AB12345678", model="VENDO 721", build="0", location="Lobby 2",
                                   asset="7103", dts_level="6", dts_revision="1")
    assert r.money == dm.MoneyFormat(decimals=2, currency_numeric="978", currency="EUR")
    assert read_time(r) is not None and read_time(r).isoformat() == "2026-01-14T09:31:00"
    assert r.board == dm.Board(serial="CB998877", model="VMC-3", software="1.20")
    # VA1 is value first: value of all paid vends since init, number since init, since reset
    assert r.paid == dm.Counter(value_init=123450, count_init=9876, value_reset=4500, count_reset=300)
    assert r.cash_sales == dm.Counter(value_init=80000, count_init=640, value_reset=2500, count_reset=20)
    assert r.cash_in is not None and r.cash_in.in_reset == 2800 and r.cash_in.bills_init == 32000
    assert r.cash_out is not None and r.cash_out.dispensed_init == 9100
    assert r.tube_contents == 4250
    assert r.cashless_sales == dm.Counter(value_init=43450, count_init=3236, value_reset=2000, count_reset=280)
    a1, a2 = r.products
    # PA2 is count first: products vended since init, value, since reset
    assert (a1.selection, a1.price, a1.product_id) == ("A1", 150, "COLA330")
    assert a1.paid == dm.Counter(count_init=1200, value_init=180000, count_reset=20, value_reset=3000)
    assert a1.last_sale == dm.LastSale(date="260114", time="0902", sold_out_count=3)
    assert [(d.device, d.count_init, d.value_init) for d in a1.by_device] == [("CA", 700, 105000), ("DA", 500, 75000)]
    assert a2.paid is not None and a2.paid.count_init == 50 and a2.other == [dm.Segment("PA6", ["1", "2", "3"])]
    assert r.price_lists[0].count_init == 1200
    assert [(e.code, e.duration_min, e.rest) for e in r.events] == [("EGS", 14, []), ("EJJ", 95, ["", "1"])]
    assert r.event_counts[0] == dm.EventCount(code="EGS", count_reset=4, count_init=311, active="0")
    assert r.reads is not None and r.reads.reads_init == 412 and r.reads.resets_init == 57
    assert r.power_outages == dm.ResetInit(reset=1, init=19)
    assert r.status == [dm.MachineStatus(status="TEMP", values=["38", "3"])]
    assert [s.tag for s in r.other] == ["SA2", "XY9"]  # kept, never an error


def test_decimal_places_apply_to_money() -> None:
    one = parse(_file(["ID1*S", "ID4*1**EUR", "PA1*A1*15", "PA2*2*30*0*0"])).read.products[0]
    assert one.price == 150 and one.paid is not None and one.paid.value_init == 300
    yen = parse(_file(["ID1*S", "ID4*0*392*JPY", "PA1*A1*150"])).read.products[0]
    assert yen.price == 150  # yen have no minor unit
    mils = parse(_file(["ID1*S", "ID4*3**USD", "PA1*A1*1250"])).read.products[0]
    assert mils.price == 125
    no_currency = parse(_file(["ID1*S", "ID4*0", "PA1*A1*100"])).read.products[0]
    assert no_currency.price == 100  # minor unit = the machine's unit
    with pytest.raises(DexError, match="line 5: PA1 field 2 '1255' has more decimal places"):
        parse(_file(["ID1*S", "ID4*3**USD", "PA1*A1*1255"]))


def test_lf_only_and_swapped_crc_are_accepted_but_flagged() -> None:
    assert parse(_file(REAL, eol="\n")).flags == ["lf_line_ends"]
    assert parse(_file(REAL, swap=True)).flags == ["crc_byte_swapped"]
    assert parse(_file(REAL, eol="\n", swap=True)).flags == ["lf_line_ends", "crc_byte_swapped"]


def test_wrong_crc_is_refused_with_its_reason() -> None:
    data = _file(REAL).replace(b"PA2*1200*", b"PA2*1201*")
    with pytest.raises(DexError) as e:
        parse(data)
    assert e.value.code == "crc_mismatch"
    assert e.value.line == len(REAL) + 3
    assert "G85 integrity check failed" in e.value.reason and e.value.reason.startswith(f"line {len(REAL) + 3}:")


@pytest.mark.parametrize(("mutate", "code", "line"), [
    (lambda b: b.replace(b"SE*5*", b"SE*6*"), "segment_count", 6),
    (lambda b: b.replace(b"SE*5*0001", b"SE*5*0002"), "frame", 6),
    (lambda b: b.replace(b"\r\nG85*", b"\r\nG86*"), "missing_crc", 6),
    (lambda b: b.replace(b"ST*", b"SX*"), "frame", None),
    (lambda b: b.split(b"SE*")[0], "frame", None),
    (lambda b: b.replace(b"DXE*1*1", b"DXE*2*1"), "frame", 7),
    (lambda b: b.replace(b"DXE*1*1\r\n", b""), "frame", 6),
    (lambda b: b"", "empty", None),
    (lambda b: b"\x00\x01", "not_text", None),
])
def test_frame_errors_name_the_line(mutate, code, line) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DexError) as e:
        parse(mutate(_file(["ID1*S", "PA1*A1*100"])))
    assert (e.value.code, e.value.line) == (code, line)


def test_field_errors_name_the_line() -> None:
    with pytest.raises(DexError, match=r"^line 5: PA2 field 1 'x12' is not a whole number"):
        parse(_file(["ID1*S", "PA1*A1*100", "PA2*x12*0"]))
    with pytest.raises(DexError, match=r"^line 4: VA1 appears twice \(first on line 3\)"):
        parse(_file(["VA1*1*1", "VA1*1*1"]))
    with pytest.raises(DexError, match=r"^line 3: PA2 before any PA1"):
        parse(_file(["PA2*1*1"]))


def test_file_without_envelope_is_accepted() -> None:
    data = _file(["ID1*S"]).split(b"\r\n", 1)[1].replace(b"DXE*1*1\r\n", b"")
    f = parse(data)
    assert f.transmission is None and f.read.machine == dm.Machine(serial="S")


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(reads(), st.booleans(), st.booleans(), st.booleans())
# serial S187 makes the CRC D0D0, which reads the same with its bytes swapped
@example(dm.DexRead(machine=dm.Machine(serial="S187"), money=dm.MoneyFormat(decimals=2, currency="EUR"),
                    clock=dm.Clock(date="260114", time="0930")), False, True, False)
def test_whatever_the_writer_writes_parses_back(read: dm.DexRead, lf: bool, swap: bool, envelope: bool) -> None:
    data = write(read, lf_only=lf, swap_crc=swap, sender="VW1" if envelope else None)
    f = parse(data)
    assert f.read == read
    g85 = data.index(b"G85*") + 4
    crc = data[g85 : g85 + 4].upper()
    # a CRC whose two bytes are equal (e.g. 1010) reads the same swapped: nothing to flag
    assert ("lf_line_ends" in f.flags) == lf and ("crc_byte_swapped" in f.flags) == (swap and crc[:2] != crc[2:])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(reads(), st.data())
def test_any_single_byte_change_is_caught(read: dm.DexRead, data: st.DataObject) -> None:
    """Every byte from ST to the end of SE is covered: by the CRC, the G85 value, or the SE count/control."""
    raw = write(read)
    start = raw.index(b"ST*")
    end = raw.index(b"\r\nDXE")
    pos = data.draw(st.integers(start, end - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    g85 = raw.index(b"G85*") + 4
    if g85 <= pos < g85 + 4 and chr(raw[pos]).isalpha() and chr(new).lower() == chr(raw[pos]).lower():
        new = ord("0")  # a hex digit's case is not a change of content
        if new == raw[pos]:
            return
    mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
    with pytest.raises(DexError):
        parse(mutated)
