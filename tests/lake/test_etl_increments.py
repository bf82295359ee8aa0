"""Incremental ETL runs give exactly the tables of one run over all of raw.

Raw rows are committed the way the lake writer commits them (``commit_batch``: rows,
files and log offsets in one commit) in random increments: late events of earlier
days, copies of an event received again (sometimes before the copy that counted),
transactions retried with a fresh event id, device clocks far ahead, compaction
moving raw files between runs. After the increments, every analytics table must equal
the table a fresh lake builds from the same raw rows in one run.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.lake.conftest import make_settings

from vendwatch.lake import etl as etl_mod
from vendwatch.lake import schemas
from vendwatch.lake.catalog import ensure_table, open_catalog
from vendwatch.lake.etl import run_etl
from vendwatch.lake.maintain import compact
from vendwatch.lake.writer import commit_batch, committed_offsets

DAY0 = datetime(2026, 11, 20, tzinfo=UTC)
DEVICES = {"d1": 0, "d2": 1, "d3": 0}  # device -> log partition (keyed by device, as the log is)
TYPES = ["transaction", "telemetry", "heartbeat", "inventory", "stock_alert", "refill", "fault", "security", "log",
         "config"]
CATEGORY = {"transaction": "sales", "telemetry": "health", "heartbeat": "health", "inventory": "inventory",
            "stock_alert": "inventory", "refill": "inventory", "fault": "fault", "security": "security",
            "log": "log", "config": "config"}


def _payload(rng: random.Random, type_: str) -> dict[str, Any]:
    if type_ == "transaction":
        paid = rng.random() > 0.2
        return {"transaction_id": f"tx{rng.randrange(5)}", "product_id": rng.choice(["cola", "tea"]), "slot": "A1",
                "price_minor": rng.choice([150, 250, -5]), "currency": rng.choice(["EUR", "JPY"]),
                "payment_method": "card", "payment_status": "success" if paid else "failure",
                "vend_status": rng.choice(["success", "failure"]) if paid else "not_attempted"}
    if type_ == "telemetry":
        return {"cabinet_temp_c": rng.choice([3.5, 4.25, 6.0, 900.0]), "refrigeration_temp_c": rng.random() * 4,
                "voltage_v": rng.choice([229.5, 231.0]), "door_open": rng.random() < 0.3, "power_on": rng.random() > 0.1}
    if type_ in ("heartbeat", "config"):
        return {"uptime_s": 5, "firmware_version": rng.choice(["1.0", "1.1", "2.0"])}
    if type_ == "inventory":
        return {"slots": [{"slot": s, "product_id": "cola", "count": rng.choice([0, 0, 2]), "capacity": 5}
                          for s in ("A1", "A2")]}
    if type_ == "stock_alert":
        return {"slot": rng.choice(["A1", "A2"]), "level": "out", "count": 0}
    if type_ == "refill":
        return {"slots": [{"slot": "A1", "added": 3, "count_after": 3}]}
    if type_ == "fault":
        return {"code": "motor_jam", "state": rng.choice(["raised", "cleared"])}
    if type_ == "security":
        return {"kind": "door_forced", "magnitude_g": 1.5}
    return {"kind": "application", "level": "warn", "message": "m"}


def _event(rng: random.Random, n: int) -> dict[str, Any]:
    dev = rng.choice(sorted(DEVICES))
    type_ = rng.choice(TYPES)
    occurred = DAY0 + timedelta(days=rng.randrange(3), minutes=rng.randrange(0, 1440, 7), seconds=rng.randrange(60))
    received = occurred + timedelta(seconds=rng.uniform(0.5, 30))
    if rng.random() < 0.1:
        received = occurred - timedelta(hours=rng.choice([2, 30]))  # the device clock is hours ahead
    return {"event_id": f"{dev}-{n}", "device_id": dev, "site_id": rng.choice(["s1", "s1", "s2"]), "type": type_,
            "category": CATEGORY[type_], "occurred_at": occurred, "received_at": received,
            "event_date": occurred.date(), "seq": None, "schema_version": 1, "late": False,
            "payload": json.dumps(_payload(rng, type_))}


def _increments(seed: int, batches: int) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    out: list[list[dict[str, Any]]] = []
    sent: list[dict[str, Any]] = []
    n = 0
    for _ in range(batches):
        batch = []
        for _ in range(rng.randrange(4, 20)):
            if (sent or batch) and rng.random() < 0.2:
                # the same event again (a retry, a second collector), received before or after the first
                # copy, which may be in an earlier increment or in this one
                copy = dict(rng.choice(sent + batch))
                copy["received_at"] = copy["received_at"] + timedelta(seconds=rng.choice([-20, 5, 900]))
                batch.append(copy)
            else:
                n += 1
                batch.append(_event(rng, n))
        sent.extend(batch)
        out.append(batch)
    return out


def _commit(raw, rows: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    """Rows with log positions, committed as the lake writer commits a batch."""
    start = committed_offsets(raw)
    nxt = {p: start.get(("events", p), 0) for p in (0, 1)}
    placed = []
    for r in rows:
        p = DEVICES[r["device_id"]]
        placed.append({**r, "log_partition": p, "log_offset": nxt[p]})
        nxt[p] += 1
    commit_batch(raw, pa.Table.from_pylist(placed, schema=schemas.RAW_EVENTS.arrow_schema()),
                 {("events", p): start.get(("events", p), 0) for p in (0, 1)}, {("events", p): o for p, o in nxt.items()},
                 "test")


def _tables(s) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
    cat = open_catalog(s)
    out = {}
    for name in schemas.ANALYTICS:
        rows = cat.load_table(name).scan().to_arrow().to_pylist()
        # averages are merged from sums: equal up to floating-point rounding
        out[name] = sorted((tuple((k, round(v, 6) if isinstance(v, float) else v) for k, v in sorted(r.items()))
                            for r in rows), key=repr)
    return out


def _rebuilt(tmp: Path, batches: list[list[dict[str, Any]]]) -> dict[str, list[tuple]]:
    """The same raw rows (same log positions) in a fresh lake, one ETL run."""
    s = make_settings(tmp)
    raw = ensure_table(open_catalog(s), "raw.events")
    for b in batches:
        _commit(raw, b)
    run_etl(s)
    return _tables(s)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), batches=st.integers(2, 4), compact_between=st.booleans())
def test_increments_equal_a_rebuild(tmp_path_factory: pytest.TempPathFactory, seed: int, batches: int,
                                    compact_between: bool) -> None:
    inc = _increments(seed, batches)
    s = make_settings(tmp_path_factory.mktemp("inc"))
    raw = ensure_table(open_catalog(s), "raw.events")
    for i, b in enumerate(inc):
        _commit(raw, b)
        if compact_between and i % 2 == 1:
            raw.refresh()
            compact(raw, 1 << 30, 2)  # raw rows move to new files; nothing is new because of that
        run_etl(s)
    assert _tables(s) == _rebuilt(tmp_path_factory.mktemp("full"), inc)
    again = run_etl(s)
    assert set(again.tables.values()) == {"unchanged"}


def test_increment_reads_only_new_rows(tmp_path: Path) -> None:
    inc = _increments(7, 3)
    s = make_settings(tmp_path)
    raw = ensure_table(open_catalog(s), "raw.events")
    _commit(raw, inc[0] + inc[1])
    run_etl(s)
    _commit(raw, inc[2])
    cpu = time.process_time()
    rep = run_etl(s)
    cpu = time.process_time() - cpu
    assert rep.new_events == len(inc[2])
    # the report says where the CPU went; nested steps are not counted twice
    assert {"plan", "new rows", "commits", "whole tables"} <= set(rep.cpu_s) <= {
        "plan", "new rows", "days rebuilt", "commits", "whole tables", "stock-outs"}
    assert sum(rep.cpu_s.values()) <= cpu + 0.01


def test_interrupted_run_is_repaired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed between two tables' commits: the next run brings every table to a rebuild's content."""
    inc = _increments(11, 3)
    s = make_settings(tmp_path / "a")
    raw = ensure_table(open_catalog(s), "raw.events")
    _commit(raw, inc[0])
    run_etl(s)
    _commit(raw, inc[1])
    real = etl_mod.Etl._commit
    calls = {"n": 0}

    def dies_after_three(self, *a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # the process is killed here
        return real(self, *a, **kw)

    monkeypatch.setattr(etl_mod.Etl, "_commit", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_etl(s)
    monkeypatch.setattr(etl_mod.Etl, "_commit", real)
    _commit(raw, inc[2])
    run_etl(s)
    assert _tables(s) == _rebuilt(tmp_path / "b", inc)


def test_days_rebuilt_a_few_at_a_time_equal_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inc = _increments(5, 3)
    whole = _rebuilt(tmp_path / "a", inc)
    monkeypatch.setattr(etl_mod, "_CHUNK_ROWS", 1)  # one day per chunk
    assert _rebuilt(tmp_path / "b", inc) == whole



def _two_runs(tmp: Path, inc: list[list[dict[str, Any]]]) -> tuple[Any, dict[str, list[tuple]]]:
    s = make_settings(tmp)
    raw = ensure_table(open_catalog(s), "raw.events")
    rep = None
    for b in inc:
        _commit(raw, b)
        rep = run_etl(s)
    return rep, _tables(s)


def test_copies_in_one_increment_count_the_first_received(tmp_path: Path) -> None:
    """Two copies of a new event among one run's new rows: the one received first counts, whatever
    its log position, and no day is rebuilt for it."""
    rng = random.Random(3)
    first = [_event(rng, n) for n in range(1, 30)]
    fresh = [e for e in (_event(rng, n) for n in range(100, 160)) if e["received_at"] > e["occurred_at"]]
    second: list[dict[str, Any]] = []
    for k, e in enumerate(fresh):
        later = {**e, "received_at": e["received_at"] + timedelta(seconds=9)}
        second += [e, later] if k % 2 else [later, e]  # the first received at the lower or the higher offset
    rep, tables = _two_runs(tmp_path / "a", [first, second])
    assert rep.rebuilt == [] and rep.new_events == len(second)
    assert tables == _rebuilt(tmp_path / "b", [first, second])
    counted = {(r["event_id"], r["received_at"]) for r in
               open_catalog(make_settings(tmp_path / "a")).load_table("analytics.device_logs").scan().to_arrow().to_pylist()}
    logs = {(e["event_id"], e["received_at"]) for e in fresh if e["type"] == "log"}
    assert logs and logs <= counted


def test_copies_in_one_increment_of_an_event_counted_before(tmp_path: Path) -> None:
    """Copies of an already counted event among one run's new rows, one received before the counted
    copy: the days are rebuilt and equal a rebuild."""
    rng = random.Random(4)
    first = [_event(rng, n) for n in range(1, 30)]
    old = first[5]
    second = [{**old, "received_at": old["received_at"] + timedelta(seconds=60)},
              {**old, "received_at": old["received_at"] - timedelta(seconds=60)}, _event(rng, 99)]
    rep, tables = _two_runs(tmp_path / "a", [first, second])
    assert rep.rebuilt
    assert tables == _rebuilt(tmp_path / "b", [first, second])
