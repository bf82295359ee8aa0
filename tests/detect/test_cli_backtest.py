"""``vendwatch rules check|list|backtest`` and the backtest core."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from tests.detect.harness import T0

from vendwatch import events as ev
from vendwatch.bus.base import EVENTS, SIGNALS
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.config import load_settings
from vendwatch.detect import backtest as bt
from vendwatch.detect.rules import load_ruleset
from vendwatch.runtime import Context

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "src/vendwatch/detect/rules/default.yaml"


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args), obj=Env(None, {}), catch_exceptions=False)
    return res.exit_code, res.output


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(T0 + minutes * 60, UTC)


def seed_warm_fridge(data_dir: Path) -> None:
    """VM-1's fridge sits at 6 °C from minute 0 to 40 (above 5 °C, below 7 °C)."""
    ctx = Context(load_settings(overrides={"data_dir": str(data_dir)}))
    ctx.log.create_topic(EVENTS)
    items = []
    for m in range(0, 60, 2):
        temp = 6.0 if m < 40 else 3.0
        se = ev.StoredEvent(event_id=f"t{m}", device_id="VM-1", type="telemetry", occurred_at=at(m), received_at=at(m),
                            data=msgspec.Raw(msgspec.json.encode({"refrigeration_temp_c": temp, "door_open": False})),
                            site_id="S1")
        items.append(("VM-1", ev.encode(se)))
    ctx.log.append(EVENTS, items)
    ctx.close()


def test_check_ok_and_failing(tmp_path: Path) -> None:
    code, out = invoke("rules", "check", str(DEFAULT_YAML))
    assert code == 0 and "rule(s) OK" in out and "food_safety_temperature" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: vendwatch.rules/v1\nrules:\n  - {id: x, type: match, severity: loud, match: {type: fault}}\n")
    code, out = invoke("rules", "check", str(bad))
    assert code == 1 and "rule 'x': field 'severity'" in out


def test_list_active_rules(tmp_path: Path) -> None:
    code, out = invoke("rules", "list", "--data-dir", str(tmp_path), "--json")
    assert code == 0
    rules = json.loads(out)
    assert {r["id"] for r in rules} >= {"offline", "food_safety_temperature", "low_stock"}
    assert all(r["source"] == "default.yaml" for r in rules)


def test_backtest_reports_the_diff_against_the_active_rules(tmp_path: Path) -> None:
    seed_warm_fridge(tmp_path)
    stricter = tmp_path / "stricter.yaml"
    text = DEFAULT_YAML.read_text().replace("refrigeration_temp_c: {gt: 5}", "refrigeration_temp_c: {gt: 7}")
    stricter.write_text(text)
    before = Context(load_settings(overrides={"data_dir": str(tmp_path)}))
    signals_before = before.log.end_offsets(SIGNALS)
    code, out = invoke("rules", "backtest", "--data-dir", str(tmp_path), "--rules", str(stricter),
                       "--from", at(0).isoformat(), "--to", at(50).isoformat(), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["events"] == 25
    only_active = [(s["rule_id"], s["status"], s["occurred_at"]) for s in doc["diff"]["only_active"]]
    assert only_active == [("food_safety_temperature", "firing", "2026-03-01T12:15:00Z"),
                           ("food_safety_temperature", "resolved", "2026-03-01T12:45:00Z")]
    assert doc["diff"]["only_candidate"] == []
    # no side effects: nothing was written to the signals topic
    assert before.log.end_offsets(SIGNALS) == signals_before
    code, out = invoke("rules", "backtest", "--data-dir", str(tmp_path), "--rules", str(stricter),
                       "--from", at(0).isoformat(), "--to", at(50).isoformat())
    assert code == 0 and "2 signal(s) only with the active rules" in out


def test_backtest_bad_arguments(tmp_path: Path) -> None:
    code, out = invoke("rules", "backtest", "--data-dir", str(tmp_path), "--rules", str(DEFAULT_YAML),
                       "--from", "yesterday-ish")
    assert code == 2 and "ISO 8601" in out
    code, out = invoke("rules", "backtest", "--data-dir", str(tmp_path), "--rules", str(DEFAULT_YAML),
                       "--from", "2026-03-02", "--to", "2026-03-01")
    assert code == 2 and "--to must be after --from" in out
    code, out = invoke("rules", "backtest", "--data-dir", str(tmp_path / "empty"), "--rules", str(DEFAULT_YAML),
                       "--from", "2026-03-01", "--to", "2026-03-02")
    assert code == 1 and "nothing to backtest" in out


def test_lake_source_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bt, "load", lambda ref: None)
    with pytest.raises(bt.BacktestError, match="vendwatch.lake.replay"):
        list(bt.lake_events(load_settings(), at(0), at(1)))


def test_lake_source_feeds_stored_events(tmp_path: Path) -> None:
    """Events written to the lake's raw zone by the real lake writer come back to the rules in order."""
    from tests.lake.conftest import drain, make_settings

    from vendwatch.bus.base import REJECTED

    ctx = Context(make_settings(tmp_path / "data"))
    try:
        ctx.log.create_topic(EVENTS)
        ctx.log.create_topic(REJECTED)
        stored = [ev.StoredEvent(event_id=f"f{m}", device_id="VM-9", type="fault", occurred_at=at(m), received_at=at(m),
                                 data=msgspec.Raw(b'{"code":"motor_jam","state":"%s"}' % s), site_id="S2")
                  for m, s in ((3, b"cleared"), (1, b"raised"), (9, b"raised"))]  # out of order in the log
        ctx.log.append(EVENTS, [(e.device_id, ev.encode(e)) for e in stored])
        drain(ctx)
        rows = list(bt.lake_events(ctx.settings, at(0), at(5)))
        assert [(r[0], r[4]) for r in rows] == [("f1", T0 + 60), ("f3", T0 + 180)]  # in the window, by event time
        [res] = bt.run(rows, [load_ruleset([])], T0 + 600)
        assert [(s.rule_id, s.status) for s in res.signals] == [("motor_jam", "firing"), ("motor_jam", "resolved")]
    finally:
        ctx.close()
