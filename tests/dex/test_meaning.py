"""Deltas between reads: never negative, every anomaly reported."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vendwatch.dex import model as dm
from vendwatch.dex.meaning import Amount, compare


def _read(units: int | None = None, value: int | None = None, *, serial: str = "S", reset: tuple[int, int] | None = None,
          resets: int | None = None, reads: int | None = None) -> dm.DexRead:
    paid = dm.Counter(count_init=units, value_init=value)
    if reset is not None:
        paid = dm.Counter(count_reset=reset[0], value_reset=reset[1])
    return dm.DexRead(machine=dm.Machine(serial=serial), products=[dm.Product(selection="A1", paid=paid)],
                      reads=dm.Reads(resets_init=resets, reads_init=reads))


def test_first_read_and_board_change_are_baselines() -> None:
    assert compare(None, _read(5, 500)).findings == ["first_read"]
    p = compare(_read(500, 50000), _read(3, 300, serial="T"))
    assert p.baseline and p.findings == ["board_replaced"] and p.slots == []


def test_lifetime_counters_give_the_period() -> None:
    p = compare(_read(10, 1500), _read(14, 2100))
    assert p.slots[0].total == Amount(4, 600) and p.findings == []


def test_counter_going_backwards_is_a_reset_not_negative_sales() -> None:
    p = compare(_read(10, 1500), _read(2, 300))
    assert p.slots[0].total == Amount(2, 300) and p.slots[0].counter_reset and p.findings == ["counter_reset"]


def test_read_with_reset_counters_are_not_an_anomaly() -> None:
    p = compare(_read(reset=(8, 1200), resets=4), _read(reset=(3, 450), resets=5))
    assert p.slots[0].total == Amount(3, 450) and p.findings == []
    p = compare(_read(reset=(8, 1200), resets=4), _read(reset=(11, 1650), resets=4))
    assert p.slots[0].total == Amount(3, 450) and p.findings == []


def test_missed_reads_are_counted() -> None:
    p = compare(_read(10, 1500, reads=7), _read(20, 3000, reads=10))
    assert p.missed_reads == 2 and p.findings == ["missed_reads"] and p.slots[0].total == Amount(10, 1500)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_never_negative(u1: int, v1: int, u2: int, v2: int) -> None:
    p = compare(_read(u1, v1), _read(u2, v2))
    assert all(s.total.units >= 0 and s.total.value >= 0 for s in p.slots)
