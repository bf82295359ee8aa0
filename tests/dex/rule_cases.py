"""Timelines for the DEX and fraud rules of the default pack (run by tests/detect/test_default_pack.py)."""

from __future__ import annotations

from typing import Any

from tests.detect.harness import Ev


def finding(t: float, kind: str, slot: str | None = "A1", **kw: Any) -> Ev:
    data = {"kind": kind, "read_id": "dex:abc", "period_end": "2026-01-01T00:00:00Z", "expected": 12, "actual": 7,
            "detail": "slot A1: audit counted 12 sales, telemetry reported 7", **kw}
    if slot is not None:
        data["slot"] = slot
    return Ev(t, "dex_finding", data)


def card(t: float, i: int, price: int = 100, status: str = "failure", method: str = "card") -> Ev:
    return Ev(t, "transaction", {"transaction_id": f"ct{i}", "product_id": "p1", "slot": "A1", "price_minor": price,
                                 "currency": "EUR", "payment_method": method, "payment_status": status,
                                 "vend_status": "not_attempted" if status == "failure" else "success"})


def paid(t: float, i: int, vended: bool) -> Ev:
    return Ev(t, "transaction", {"transaction_id": f"pv{i}", "product_id": "p1", "slot": "A1", "price_minor": 150,
                                 "currency": "EUR", "payment_method": "card", "payment_status": "success",
                                 "vend_status": "success" if vended else "failure"})


def refund(t: float, i: int) -> Ev:
    return Ev(t, "refund", {"refund_id": f"r{i}", "transaction_id": f"t{i}", "amount_minor": 150, "currency": "EUR"})


def dex_cases(case: Any) -> list[Any]:
    """The cases, built with the pack test's ``Case`` class."""
    return [
        case("dex_sales_exceed_telemetry", [finding(0, "sales_exceed_telemetry")],
             [("firing", 0), ("resolved", 1440)], [finding(0, "telemetry_exceeds_sales")], until=1500,
             key="dex_sales_exceed_telemetry/VM-1/A1"),
        case("dex_telemetry_exceeds_sales", [finding(0, "telemetry_exceeds_sales", expected=3, actual=9)],
             [("firing", 0), ("resolved", 1440)], [finding(0, "sales_exceed_telemetry")], until=1500,
             key="dex_telemetry_exceeds_sales/VM-1/A1"),
        case("cash_shortfall", [finding(0, "cash_shortfall", slot=None, expected=9000, actual=7000)],
             [("firing", 0), ("resolved", 4320)], [finding(0, "sales_exceed_telemetry")], until=4400),
        # 4 of 12 paid vends fail (33 %): fires at the 12th; at minute 32 the last 30 hold 3 failures (10 %): resolved
        case("paid_not_vended", [paid(i, i, vended=i not in (2, 5, 8, 11)) for i in range(12)]
             + [paid(12 + i, 12 + i, True) for i in range(30)],
             [("firing", 11), ("resolved", 32)],
             [paid(i, i, vended=i not in (2, 5, 8)) for i in range(12)], until=60),
        case("refunds_above_normal", [refund(m * 5, m) for m in range(6)], [("firing", 25), ("resolved", 60)],
             [refund(m * 12, m) for m in range(6)], until=120),
        case("card_testing", [card(m, m) for m in range(10)], [("firing", 9), ("resolved", 15)],
             # large amounts, or cash, or fewer than ten: not the pattern
             [card(m, m, price=500) for m in range(12)] + [card(m, 100 + m, method="cash") for m in range(12)]
             + [card(m, 200 + m) for m in range(9)], until=40),
    ]
