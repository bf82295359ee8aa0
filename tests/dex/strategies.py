"""Hypothesis strategies for audit reads the writer can express."""

from __future__ import annotations

from hypothesis import strategies as st

from vendwatch.dex import model as dm

_text = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-/. ", min_size=1, max_size=12).map(str.strip).filter(bool)
_code = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=4)
_n = st.integers(0, 10**7)
_opt_n = st.none() | _n


def _counter() -> st.SearchStrategy[dm.Counter]:
    return st.builds(dm.Counter, count_init=_opt_n, value_init=_opt_n, count_reset=_opt_n, value_reset=_opt_n)


def _product(selection: str) -> st.SearchStrategy[dm.Product]:
    return st.builds(
        dm.Product, selection=st.just(selection), price=_opt_n, product_id=st.none() | _text,
        paid=st.none() | _counter(), test=st.none() | _counter(), free=st.none() | _counter(),
        by_device=st.lists(st.builds(dm.DeviceSales, selection=st.just(selection),
                                     device=st.sampled_from(["CA", "DA", "DB"]), count_init=_opt_n,
                                     value_init=_opt_n), max_size=2),
    )


@st.composite
def reads(draw: st.DrawFn) -> dm.DexRead:
    selections = draw(st.lists(st.sampled_from([f"{r}{c}" for r in "ABCDEF" for c in range(1, 9)]),
                               unique=True, max_size=6))
    return dm.DexRead(
        machine=draw(st.builds(dm.Machine, serial=_text, model=st.none() | _text, asset=st.none() | _text)),
        money=dm.MoneyFormat(decimals=2, currency=draw(st.sampled_from(["EUR", "USD", "GBP"]))),
        clock=dm.Clock(date=draw(st.sampled_from(["260114", "20260114"])), time="0930"),
        board=draw(st.none() | st.builds(dm.Board, serial=_text)),
        paid=draw(st.none() | _counter()),
        cash_sales=draw(st.none() | _counter()),
        cash_in=draw(st.none() | st.builds(dm.CashIn, in_reset=_opt_n, to_box_reset=_opt_n, in_init=_opt_n)),
        cashless_sales=draw(st.none() | _counter()),
        products=[draw(_product(s)) for s in selections],
        events=draw(st.lists(st.builds(dm.MachineEvent, code=_code, date=st.just("260113"),
                                       time=st.just("2210"), duration_min=_opt_n), max_size=3)),
        event_counts=draw(st.lists(st.builds(dm.EventCount, code=_code, count_reset=_opt_n), max_size=2)),
        other=draw(st.lists(st.builds(dm.Segment, st.sampled_from(["SA2", "CA7", "DA5", "ZZ1"]),
                                      st.lists(_text, max_size=3)), max_size=3)),
    )
