"""Reconciliation core: exactly the discrepancies, nothing on consistent data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vendwatch.dex.reconcile import (
    DexPeriodSales,
    Read,
    Sale,
    Visit,
    reconcile_cash,
    reconcile_sales,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(days=7)


def _period(units: int, slot: str = "A1") -> DexPeriodSales:
    return DexPeriodSales("VM-1", "S", "dex:r2", slot, None, T0, T1, units, units * 150, units // 2, units - units // 2)


def _sales(n: int, slot: str = "A1", start: datetime = T0) -> list[Sale]:
    return [Sale("VM-1", start + timedelta(hours=1 + i), slot, "cash" if i % 2 else "card", 150) for i in range(n)]


def test_consistent_period_has_no_finding() -> None:
    rows, found = reconcile_sales([_period(12)], _sales(12))
    assert found == [] and rows[0]["dex_units"] == rows[0]["telemetry_units"] == 12 and rows[0]["finding"] is None


def test_sales_outside_the_period_or_other_slot_do_not_count() -> None:
    sales = _sales(12) + _sales(3, start=T1) + _sales(4, slot="B1") + [Sale("VM-1", T0, "A1", "card", 150)]
    assert reconcile_sales([_period(12)], sales)[1] == []


def test_missing_telemetry_and_extra_telemetry_are_findings() -> None:
    (f,) = reconcile_sales([_period(12)], _sales(7))[1]
    assert (f.kind, f.slot, f.expected, f.actual) == ("sales_exceed_telemetry", "A1", 12, 7)
    (f,) = reconcile_sales([_period(3)], _sales(9))[1]
    assert f.kind == "telemetry_exceeds_sales"
    assert reconcile_sales([_period(12)], _sales(11))[1] == []  # one sale on the boundary second is noise


def test_cash_shortfall_against_the_collection_at_the_visit() -> None:
    reads = [Read("VM-1", "S", "dex:r1", T0, None, 0), Read("VM-1", "S", "dex:r2", T1, T0, 9000)]
    visit = Visit("VM-1", "S", "v2", T1 + timedelta(minutes=5), 7000)
    rows, (f,) = reconcile_cash(reads, [visit])
    assert (f.kind, f.expected, f.actual) == ("cash_shortfall", 9000, 7000) and rows[0]["difference_minor"] == 2000
    rows, found = reconcile_cash(reads, [Visit("VM-1", "S", "v2", T1, 8950)])
    assert found == [] and rows[0]["finding"] is None
    rows, found = reconcile_cash(reads, [Visit("VM-1", "S", "v9", T1 + timedelta(days=1), 10)])
    assert found == [] and rows[0]["finding"] == "no_audit_read_at_visit"


def test_daily_reads_between_collections_add_up() -> None:
    reads = [Read("VM-1", "S", "r0", T0, None, 0)] + [
        Read("VM-1", "S", f"r{d}", T0 + timedelta(days=d), T0 + timedelta(days=d - 1), 1000) for d in range(1, 8)]
    visits = [Visit("VM-1", "S", "v0", T0, 0), Visit("VM-1", "S", "v1", T1, 7000)]
    rows, found = reconcile_cash(reads, visits)
    assert found == [] and rows[1]["expected_minor"] == 7000


def test_a_visit_without_read_carries_its_collection_to_the_next() -> None:
    t2 = T1 + timedelta(days=7)
    reads = [Read("VM-1", "S", "r1", T0, None, 0), Read("VM-1", "S", "r3", t2, T0, 9000)]  # r2 refused (bad CRC)
    visits = [Visit("VM-1", "S", "v1", T0, 0), Visit("VM-1", "S", "v2", T1, 4000), Visit("VM-1", "S", "v3", t2, 5000)]
    rows, found = reconcile_cash(reads, visits)
    assert found == [] and [r["finding"] for r in rows] == ["baseline_read", "no_audit_read_at_visit", None]


def test_counter_reset_slot_is_reported_not_compared() -> None:
    p = _period(2)
    p.counter_reset = True
    rows, found = reconcile_sales([p], _sales(12))
    assert found == [] and rows[0]["finding"] == "counter_reset"
