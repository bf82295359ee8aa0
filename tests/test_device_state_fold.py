"""The device-state fold against the plain reading of its rules: the stage looks event
types up in a table and returns a payload with known fields only as it is, and must give
the same document as filtering every payload key by key through an if/elif chain."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vendwatch.state import projector as p


def _known(data: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in fields and v is not None}


def _newer(doc: dict[str, Any], section: str, at: float) -> bool:
    prev = doc.get(section)
    return prev is None or prev.get("at") is None or at >= prev["at"]


def _reference_fold(doc: dict[str, Any], t: str, at: float, data: Any) -> None:  # noqa: C901
    """The rules as they read before the table (kept here as the specification)."""
    rank = lambda _k, v: v.get("at", 0)  # noqa: E731
    if t in ("heartbeat", "telemetry") and _newer(doc, "health", at):
        health = doc.setdefault("health", {})
        health.update(_known(data, p._HEALTH))
        health["at"] = at
    if t == "heartbeat" and data.get("firmware_version") and _newer(doc, "firmware", at):
        fw = doc.setdefault("firmware", {})
        fw["firmware_version"] = data["firmware_version"]
        fw["at"] = at
    elif t == "config" and _newer(doc, "firmware", at):
        fw = doc.setdefault("firmware", {})
        fw.update(_known(data, p._CONFIG))
        fw["at"] = at
    elif t == "connectivity" and _newer(doc, "connectivity", at):
        conn = doc.setdefault("connectivity", {})
        conn.update(_known(data, p._CONNECTIVITY))
        conn["at"] = at
    elif t == "inventory":
        stock = doc.setdefault("stock", {})
        for s in data.get("slots", []):
            prev = stock.get(s["slot"], {})
            if prev.get("at", 0) <= at:
                stock[s["slot"]] = {**prev, **_known(s, p._SLOT), "at": at}
        p._trim(stock, p.MAX_SLOTS, rank)
    elif t == "refill":
        stock = doc.setdefault("stock", {})
        for s in data.get("slots", []):
            prev = stock.get(s["slot"], {})
            if prev.get("at", 0) <= at and s.get("count_after") is not None:
                stock[s["slot"]] = {**prev, "slot": s["slot"], "count": s["count_after"], "at": at,
                                    **({"product_id": s["product_id"]} if s.get("product_id") else {})}
        p._trim(stock, p.MAX_SLOTS, rank)
        doc["last_refill_at"] = max(doc.get("last_refill_at") or 0, at)
    elif t == "stock_alert":
        stock = doc.setdefault("stock", {})
        prev = stock.get(data["slot"], {})
        if prev.get("at", 0) <= at:
            stock[data["slot"]] = {**prev, "slot": data["slot"], "level": data["level"], "at": at,
                                   **({"count": data["count"]} if data.get("count") is not None else {})}
        p._trim(stock, p.MAX_SLOTS, rank)
    elif t == "transaction" and _newer(doc, "last_transaction", at):
        doc["last_transaction"] = {**_known(data, p._TRANSACTION), "at": at}
    elif t == "fault":
        changed = doc.setdefault("fault_changed_at", {})
        code = data["code"]
        if at >= changed.get(code, float("-inf")):
            changed[code] = at
            faults = doc.setdefault("active_faults", {})
            if data.get("state") == "cleared":
                faults.pop(code, None)
            else:
                faults[code] = at
            p._trim(changed, p.MAX_FAULT_CODES, lambda k, v: (k in faults, v))
            for gone in [c for c in faults if c not in changed]:
                del faults[gone]
    elif t == "security" and _newer(doc, "last_security", at):
        doc["last_security"] = {**_known(data, p._SECURITY), "at": at}
    elif t == "log" and data.get("kind") == "crash":
        doc["last_crash_at"] = max(doc.get("last_crash_at") or 0, at)


_value = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5), st.sampled_from(["a", "b", ""]),
                   st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.sampled_from(["x", "at"]),
                                                                            st.integers(0, 3), max_size=2))
_ALL = sorted(p._HEALTH | p._CONFIG | p._CONNECTIVITY | p._TRANSACTION | p._SECURITY | p._SLOT
              | {"slots", "code", "state", "level", "count_after", "kind", "at", "extra", "nested"})
_flat = st.dictionaries(st.sampled_from(_ALL), _value, max_size=6)
_slot = st.fixed_dictionaries({"slot": st.sampled_from(["A1", "A2", "B1"])}, optional={
    "count": st.integers(0, 9), "count_after": st.one_of(st.none(), st.integers(0, 9)),
    "product_id": st.one_of(st.none(), st.sampled_from(["p1", "p2"])), "capacity": st.none(), "extra": _value})


@st.composite
def _event(draw: st.DrawFn) -> tuple[str, float, dict[str, Any]]:
    t = draw(st.sampled_from([*p._FOLD, "refund", "dex_read", "unknown_type"]))
    data = draw(_flat)
    if t in ("inventory", "refill"):
        data["slots"] = draw(st.lists(_slot, max_size=3))
    if t == "stock_alert":
        data |= {"slot": draw(st.sampled_from(["A1", "B1"])), "level": draw(st.sampled_from(["low", "out"])),
                 "count": draw(st.one_of(st.none(), st.integers(0, 9)))}
    if t == "fault":
        data |= {"code": draw(st.sampled_from(["c1", "c2"])), "state": draw(st.sampled_from(["raised", "cleared"]))}
    if t == "log":
        data["kind"] = draw(st.sampled_from(["crash", "system"]))
    return t, float(draw(st.integers(0, 6))), data


@settings(max_examples=400, deadline=None)
@given(st.lists(_event(), max_size=25))
def test_the_fold_table_gives_the_documents_of_the_rules_read_plainly(events: list[Any]) -> None:
    doc: dict[str, Any] = {}
    ref: dict[str, Any] = {}
    for t, at, data in events:
        p._fold(doc, t, at, data)
        _reference_fold(ref, t, at, data)
        assert doc == ref
    assert "extra" not in str(doc) and "nested" not in str(doc)  # unknown keys never reach the document
