"""Routing rules files: validation errors name the rule (or target) and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vendwatch.route.envelope import from_signal
from vendwatch.route.rules import RulesError, load_rules, parse_rules

GOOD = """
targets:
  hook:
    type: webhook
    url: https://example.test/hook
    secret: ${HOOK_SECRET}
    retry: {max_attempts: 5, max_event_age_s: 600}
    rate_limit: {per_minute: 60, burst: 5}
rules:
  - name: critical
    pattern: {detail: {severity: [critical]}}
    targets: [hook, orchestrator]
  - name: everything
    pattern: {source: [{prefix: vendwatch}]}
    targets: [orchestrator]
    enabled: false
"""


def test_a_valid_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text(GOOD)
    rs = load_rules(f, environ={"HOOK_SECRET": "xyz"})
    assert [r.name for r in rs.rules] == ["critical", "everything"]
    assert rs.targets["hook"].secret == "xyz" and rs.targets["hook"].retry.max_attempts == 5
    assert rs.targets_for({"source": "vendwatch.detect", "detail": {"severity": "critical"}}) == ["hook", "orchestrator"]
    assert rs.targets_for({"source": "vendwatch.detect", "detail": {"severity": "minor"}}) == []  # disabled rule


def test_default_rules_send_incident_signals_to_the_orchestrator() -> None:
    from datetime import UTC, datetime

    from vendwatch.signals import Signal

    rs = load_rules(None)
    now = datetime.now(UTC)
    base: dict[str, Any] = {"signal_id": "s", "rule_id": "r", "status": "firing", "severity": "major",
                            "dedupe_key": "k", "occurred_at": now, "emitted_at": now}
    assert rs.to_orchestrator(from_signal(Signal(**base)))
    assert not rs.to_orchestrator(from_signal(Signal(**base, kind="business")))


BAD: list[tuple[dict[str, Any] | Any, str]] = [
    ([], "must be a mapping"),
    ({"rules": []}, "rules: must be a non-empty list"),
    ({"rules": [{"name": "a", "pattern": {"x": ["y"]}}]}, "rule a: Object missing required field `targets`"),
    ({"rules": [{"name": "a", "pattern": {"x": ["y"]}, "targets": ["nope"]}]}, "rule a: targets: unknown target 'nope'"),
    ({"rules": [{"name": "a", "pattern": {"x": "y"}, "targets": ["orchestrator"]}]},
     "rule a: pattern.x: must be an array"),
    ({"rules": [{"name": "a", "pattern": {"x": [{"numeric": [">", "1"]}]}, "targets": ["orchestrator"]}]},
     "rule a: pattern.x: numeric"),
    ({"rules": [{"name": "a", "pattern": {"x": ["y"]}, "targets": ["orchestrator"], "colour": "red"}]},
     "rule a: Object contains unknown field `colour`"),
    ({"rules": [{"pattern": {"x": ["y"]}, "targets": ["orchestrator"]}]}, "rule #1: Object missing required field `name`"),
    ({"rules": [{"name": "a", "pattern": {"x": ["y"]}, "targets": ["orchestrator"]},
                {"name": "a", "pattern": {"x": ["y"]}, "targets": ["orchestrator"]}]}, "rule a: name: duplicate"),
    ({"targets": {"h": {"type": "webhook", "url": "https://x"}}, "rules": [{"name": "a", "pattern": {"x": ["y"]},
                                                                          "targets": ["h"]}]},
     "target h: secret: required"),
    ({"targets": {"h": {"type": "webhook", "url": "ftp://x", "secret": "s"}}, "rules": []}, "target h: url"),
    ({"targets": {"h": {"type": "carrier-pigeon"}}, "rules": []}, "target h: type"),
    ({"targets": {"h": {"type": "log", "topic": "signals"}}, "rules": []}, "target h: topic: signals is read"),
    ({"targets": {"h": {"type": "slack", "url": "https://x", "retry": {"max_attempts": 0}}}, "rules": []},
     "target h: retry: max_attempts must be >= 1"),
    ({"targets": {"h": {"type": "webhook", "url": "https://x", "secret": "${NOPE_NOT_SET}"}}, "rules": []},
     "target h: secret: environment variable NOPE_NOT_SET is not set"),
    ({"targets": {"orchestrator": {"type": "log", "topic": "x"}}, "rules": []}, "reserved"),
    ({"rules": [], "extra": 1}, "unknown top-level key"),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m for _, m in BAD])
def test_invalid_rules_name_rule_and_field(doc: Any, message: str) -> None:
    with pytest.raises(RulesError) as e:
        parse_rules(doc, environ={})
    assert message in str(e.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("rules: [unclosed")
    with pytest.raises(RulesError, match="invalid YAML"):
        load_rules(f)
    with pytest.raises(RulesError, match="r2.yaml"):
        load_rules(tmp_path / "r2.yaml")
