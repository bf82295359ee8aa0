"""The rule loader: any YAML gives a clean RuleError naming file/rule/field, or a rule set
the detector can run and checkpoint; never an exception (issue 10, item 8 + fuzzing)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import vendwatch_cmd

from vendwatch.detect.engine import Engine
from vendwatch.detect.rules import RuleError, RuleSet, parse_rules

HEAD = "format: vendwatch.rules/v1\nrules:\n"
VALID: dict[str, Any] = {"id": "hot", "type": "sustained", "severity": "major",
                         "when": {"type": "telemetry", "where": {"refrigeration_temp_c": {"gt": 5}}}, "for": "10m"}


def _doc(**rule: Any) -> str:
    return yaml.safe_dump({"format": "vendwatch.rules/v1", "rules": [{**VALID, **rule}]})


def _absence(**more: Any) -> str:
    return yaml.safe_dump({"format": "vendwatch.rules/v1", "rules": [
        {"id": "offline", "type": "absence", "severity": "major", "after": "15m", **more}]})


CASES = {
    "empty where": (_doc(when={"type": "telemetry", "where": {}}), "where"),
    "dict as event type": (_doc(when={"type": {"a": 1}, "where": {"refrigeration_temp_c": 5}}), "type"),
    "list of dicts as type": (_doc(when={"type": [{"a": 1}], "where": {"refrigeration_temp_c": 5}}), "type"),
    "dict as rule type": (_doc(type={"x": 1}), "type"),
    "numeric site_rule_id": (_absence(site_correlation=True, site_rule_id=123), "site_rule_id"),
    "400-digit duration": (_doc(**{"for": int("9" * 400)}), "for"),
    "400-digit duration string": (_doc(**{"for": "9" * 400 + "s"}), "for"),
    "infinite duration": (_doc(**{"for": float("inf")}), "for"),
    "NaN duration": (_doc(**{"for": float("nan")}), "for"),
    "huge version": (_doc(version=10**30), "version"),
    "id with newline": (_doc(id="hot\n"), "id"),
    "huge format width": (_doc(summary="{device_id:>999999999}"), "summary"),
    "attribute access in template": (_doc(summary="{device_id.__class__.__mro__}"), "summary"),
    "dict as operator": (_doc(when={"type": "telemetry", "where": {"refrigeration_temp_c": {"gt": {"a": 1}}}}), "gt"),
    "unhashable where key": (HEAD + "- {id: a, type: match, severity: info, match: {type: fault, where: {[1]: 2}}}\n", "where"),
    "null key in outside_visit": (yaml.safe_dump({"format": "vendwatch.rules/v1", "rules": [
        {"id": "m", "type": "match", "severity": "info", "match": {"type": "fault"},
         "outside_visit": {None: None}}]}), "outside_visit"),  # found by the fuzz below
    "huge threshold": (yaml.safe_dump({"format": "vendwatch.rules/v1", "rules": [
        {"id": "c", "type": "count", "severity": "info", "count": {"type": "fault"}, "threshold": 10**30,
         "window": "1h"}]}), "threshold"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_rule_is_a_clean_error_naming_the_field(name: str) -> None:
    text, fname = CASES[name]
    with pytest.raises(RuleError) as e:
        parse_rules(text, "r.yaml")
    assert "r.yaml" in str(e.value) and fname in str(e.value), str(e.value)


def test_deep_nesting_is_a_clean_error() -> None:
    deep = "[" * 50_000 + "]" * 50_000
    with pytest.raises(RuleError, match="r.yaml"):
        parse_rules(HEAD + f"- {{id: a, type: match, severity: info, match: {deep}}}\n", "r.yaml")


def test_rules_check_cli_names_the_file_and_exits_1(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(CASES["dict as event type"][0])
    r = subprocess.run(vendwatch_cmd("rules", "check", str(p)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(p) in r.stderr, r.stderr[-2000:]


# -- fuzz ------------------------------------------------------------------------
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["telemetry", "fault", "10m", "1h30m", "hot", "gt", "where", "type",
                                     "{device_id}", "{event[slot]}", "major", "count", "absence", "match"]))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(st.text(max_size=8), _scalar),
                                                                       inner, max_size=4)), max_leaves=20)
_FIELDS = ["id", "type", "severity", "when", "for", "where", "match", "clear", "version", "summary", "dedupe_key",
           "labels", "of", "after", "count", "threshold", "window", "bad", "last", "above", "field",
           "site_correlation", "site_rule_id", "resolve_after", "outside_visit", "while", "unless"]


@st.composite
def _rule(draw: st.DrawFn) -> dict[str, Any]:
    rule = dict(draw(st.sampled_from([VALID, {"id": "m", "type": "match", "severity": "info",
                                               "match": {"type": "fault"}},
                                              {"id": "a", "type": "absence", "severity": "major", "after": "5m"}])))
    for k in draw(st.lists(st.sampled_from(_FIELDS), max_size=4)):
        rule[k] = draw(_json)
    return rule


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rule(), max_size=3))
def test_any_rule_document_is_a_rule_set_or_a_rule_error(rules: list[dict[str, Any]]) -> None:
    try:
        text = yaml.safe_dump({"format": "vendwatch.rules/v1", "rules": rules})
    except (yaml.YAMLError, ValueError, TypeError):
        return  # not representable as YAML
    _load_and_run(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_rule_set_or_a_rule_error(text: str) -> None:
    _load_and_run(HEAD + text)


def _load_and_run(text: str) -> None:
    try:
        rules = parse_rules(text, "fuzz.yaml")
    except RuleError:
        return
    engine = Engine(RuleSet(rules, ["fuzz.yaml"]))
    from datetime import UTC, datetime
    t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for etype, data in (("telemetry", {"refrigeration_temp_c": 9.0}), ("fault", {"code": "E1"})):
        engine.process("e1", "VM-1", "S1", etype, t, data)
    for device_id, dev in list(engine.devices.items()):
        engine.restore_device(device_id, engine.encode_device(dev))
