"""Small kill storms (bench/chaos.py, bounded): SIGKILL ``vendwatch serve`` (embedded), or
single role processes on Kafka + PostgreSQL, under simulated fleet load; then every promise
holds: acked = log = lake, each once; no signal id twice; one open incident per key;
device state counts = log; no stage dead letters."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from tests.contract.kafka_backend import kafka_address
from tests.contract.pg_backend import postgres_dsn

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _chaos():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("vendwatch_chaos", ROOT / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_a_few_sigkills_of_serve_under_load_break_no_promise(tmp_path: Path) -> None:
    chaos = _chaos()
    report = chaos.run(chaos.Options(kills=4, devices=40, speed=120, min_gap_s=1.5, max_gap_s=4.0,
                                     data_dir=tmp_path / "data"))
    assert report.kills == 4
    assert report.events_acked > 0 and report.requests > report.events_acked / 100
    assert "0" in report.http_statuses, "no request ever hit a dead server: the kills did not bite"
    assert report.signals > 0 and report.lake_rows == report.events_in_log
    assert report.failures == [], report


def test_sigkills_of_single_roles_on_kafka_and_postgres_break_no_promise(tmp_path: Path) -> None:
    chaos = _chaos()
    # seed 6 kills both kinds of process the bugs of issue #10 lived in: collectors (an
    # append not yet confirmed) and detectors (signals emitted after the last checkpoint)
    report = chaos.run(chaos.Options(kills=6, devices=30, speed=120, min_gap_s=3.0, max_gap_s=6.0, seed=6,
                                     data_dir=tmp_path / "data", kafka=kafka_address(), postgres=postgres_dsn()))
    assert report.kills_by_role.get("collector", 0) >= 1 and report.kills_by_role.get("detector", 0) >= 1, report
    assert report.events_acked > 0 and report.signals > 0
    assert report.lake_rows == report.events_in_log
    assert report.failures == [], report
