"""The rule format: validation errors name the rule and field; predicates mean what they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from vendwatch.detect.rules import (
    RuleError,
    compile_where,
    load_default_pack,
    load_ruleset,
    parse_duration,
    parse_rules,
)

HEAD = "format: vendwatch.rules/v1\nrules:\n"


def one(body: str) -> str:
    return HEAD + "  - " + body.strip().replace("\n", "\n    ") + "\n"


BAD = [
    ("id: hot\ntype: sustained\nseverity: major\nwhen: {type: telemetry, where: {cabinet_temp: {gt: 5}}}\nfor: 5m",
     ["rule 'hot'", "field 'when.where.cabinet_temp'", "unknown field", "cabinet_temp_c"]),
    ("id: hot\ntype: sustained\nseverity: major\nwhen: {type: telemetry, where: {cabinet_temp_c: {gt: 5}}}",
     ["rule 'hot'", "field 'for' is required"]),
    ("id: hot\ntype: sustained\nseverity: major\nwhen: {type: telemetry, where: {cabinet_temp_c: {gt: 5}}}\nfor: soon",
     ["rule 'hot'", "field 'for'", "duration"]),
    ("id: hot\ntype: sustained\nseverity: urgent\nwhen: {type: telemetry, where: {cabinet_temp_c: {gt: 5}}}\nfor: 5m",
     ["rule 'hot'", "field 'severity'", "critical"]),
    ("id: hot\ntype: sustained\nseverity: major\nwhen: {type: telemetry, where: {cabinet_temp_c: {gt: warm}}}\nfor: 5m",
     ["rule 'hot'", "field 'when.where.cabinet_temp_c.gt'", "number"]),
    ("id: hot\ntype: sustained\nseverity: major\nwhen: {type: telemetry, where: {cabinet_temp_c: {above: 5}}}\nfor: 5m",
     ["rule 'hot'", "unknown operator 'above'"]),
    ("id: jam\ntype: match\nseverity: major\nmatch: {type: faults}", ["rule 'jam'", "field 'match.type'", "unknown event type"]),
    ("id: jam\ntype: match\nseverity: major\nmatch: {type: fault}\nthreshold: 3", ["rule 'jam'", "unknown field(s) threshold"]),
    ("id: jam\ntype: match\nseverity: major\nmatch: {type: fault}\nsummary: 'jam {colour}'",
     ["rule 'jam'", "field 'summary'", "unknown placeholder {colour}"]),
    ("id: jam\ntype: match\nseverity: major\nmatch: {type: fault}\ndedupe_key: 'jam/{site_id}'",
     ["rule 'jam'", "field 'dedupe_key'", "{device_id}"]),
    ("id: jam\ntype: wobble\nseverity: major", ["rule 'jam'", "field 'type'", "absence"]),
    ("id: Bad-Id\ntype: match\nseverity: major\nmatch: {type: fault}", ["rules[0]", "field 'id'"]),
    ("id: fails\ntype: ratio\nseverity: minor\nof: {type: transaction}\nbad: {vend_status: failure}\nabove: 0.2",
     ["rule 'fails'", "exactly one of fields 'last'"]),
    ("id: fails\ntype: ratio\nseverity: minor\nof: {type: transaction}\nbad: {vend_status: failure}\nlast: 50\nabove: 20",
     ["rule 'fails'", "field 'above'", "fraction"]),
    ("id: many\ntype: count\nseverity: minor\ncount: {type: log}\nthreshold: 0\nwindow: 1h",
     ["rule 'many'", "field 'threshold'", "positive integer"]),
    ("id: fw\ntype: change\nseverity: minor\nof: {type: heartbeat}\nfield: colour\nresolve_after: 1h",
     ["rule 'fw'", "field 'field'", "'colour'"]),
    ("id: gone\ntype: absence\nseverity: major\nafter: 0", ["rule 'gone'", "field 'after'", "> 0"]),
    ("id: gone\ntype: absence\nseverity: major\nafter: 10m\nscope: site", ["rule 'gone'", "field 'scope'"]),
]


@pytest.mark.parametrize(("body", "needles"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_errors_name_the_rule_and_the_field(body: str, needles: list[str]) -> None:
    with pytest.raises(RuleError) as e:
        parse_rules(one(body), "mine.yaml")
    msg = str(e.value)
    assert msg.startswith("mine.yaml: ")
    for n in needles:
        assert n in msg, msg


def test_file_level_errors() -> None:
    with pytest.raises(RuleError, match="field 'format'"):
        parse_rules("rules: []\n", "x.yaml")
    with pytest.raises(RuleError, match="not valid YAML"):
        parse_rules("format: [\n", "x.yaml")
    with pytest.raises(RuleError, match="unknown top-level key"):
        parse_rules(HEAD + "extra: 1\n", "x.yaml")
    dup = HEAD + "  - {id: a, type: match, severity: info, match: {type: fault}}\n" * 2
    with pytest.raises(RuleError, match="rule 'a': duplicate id"):
        parse_rules(dup, "x.yaml")


def test_disabled_rules_are_validated_then_dropped() -> None:
    text = HEAD + "  - {id: a, type: match, severity: info, match: {type: fault}, enabled: false}\n"
    assert parse_rules(text, "x.yaml") == []
    bad = HEAD + "  - {id: a, type: match, severity: info, match: {type: nope}, enabled: false}\n"
    with pytest.raises(RuleError, match="rule 'a'"):
        parse_rules(bad, "x.yaml")


def test_extra_files_may_not_redefine_a_default_rule(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(HEAD + "  - {id: offline, type: match, severity: info, match: {type: fault}}\n")
    with pytest.raises(RuleError, match=r"mine.yaml: rule 'offline': id already defined in default.yaml"):
        load_ruleset([str(f)])
    assert [r.id for r in load_ruleset([str(f)], default_pack=False).rules] == ["offline"]
    with pytest.raises(RuleError, match="cannot read rule file"):
        load_ruleset([str(tmp_path / "missing.yaml")])


def test_default_pack_is_valid_and_versioned() -> None:
    rules = load_default_pack()
    assert len(rules) >= 30
    assert all(r.version >= 1 and r.summary and r.labels.get("category") for r in rules)
    assert {r.kind for r in rules if r.id in ("low_stock", "out_of_stock")} == {"business"}


@pytest.mark.parametrize(("text", "seconds"), [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("1h30m", 5400.0),
                                               ("2d", 172800.0), ("0.5h", 1800.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["soon", "", "5 minutes", -1, True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(RuleError):
        parse_duration(text, "x")


CASES = [
    ({"door_open": False}, {"door_open": False}, True),
    ({"door_open": False}, {"door_open": 0}, False),  # a number is not a boolean
    ({"door_open": False}, {}, False),
    ({"cpu_pct": {"gt": 90}}, {"cpu_pct": 90.5}, True),
    ({"cpu_pct": {"gt": 90}}, {"cpu_pct": 90}, False),
    ({"cpu_pct": {"gt": 90}}, {"cpu_pct": True}, False),
    ({"cpu_pct": {"gte": 90, "lt": 95}}, {"cpu_pct": 94}, True),
    ({"cpu_pct": {"gte": 90, "lt": 95}}, {"cpu_pct": 95}, False),
    ({"voltage_v": {"outside": [207, 253]}}, {"voltage_v": 206.9}, True),
    ({"voltage_v": {"outside": [207, 253]}}, {"voltage_v": 230}, False),
    ({"voltage_v": {"between": [207, 253]}}, {"voltage_v": 253}, True),
    ({"motor_status": ["idle", "running"]}, {"motor_status": "idle"}, True),
    ({"motor_status": {"not_in": ["idle", "running"]}}, {"motor_status": "jammed"}, True),
    ({"motor_status": {"not_in": ["idle", "running"]}}, {}, False),
    ({"motor_status": {"ne": "idle"}}, {"motor_status": "idle"}, False),
    ({"motor_status": {"exists": True}}, {"motor_status": "idle"}, True),
    ({"motor_status": {"exists": False}}, {"motor_status": "idle"}, False),
    ({"cpu_pct": {"in": [1, 2]}}, {"cpu_pct": [1]}, False),  # unhashable value: no match, no crash
]


@pytest.mark.parametrize(("where", "data", "expected"), CASES)
def test_predicates(where: dict[str, object], data: dict[str, object], expected: bool) -> None:
    pred, _ = compile_where(where, ("telemetry",), "t")
    assert pred is not None and pred(data) is expected


def test_nested_field_paths() -> None:
    pred, _ = compile_where({"gps.lat": {"gt": 50}}, ("connectivity",), "t")
    assert pred is not None
    assert pred({"gps": {"lat": 52.5, "lon": 13.4}}) is True
    assert pred({"gps": None}) is False and pred({}) is False
