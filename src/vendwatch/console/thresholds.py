"""Telemetry thresholds of the loaded rules, for drawing on the device page's charts.

Only simple threshold rules are drawn: ``when: {type: telemetry, where: {FIELD: {gt|ge|lt|le: N}}}``;
the chart shows the line where the rule starts to count (its duration is in the rule).
"""

from __future__ import annotations

from typing import Any

import yaml

from vendwatch.config import Settings

_OPS = ("gt", "ge", "lt", "le")


def telemetry_thresholds(settings: Settings) -> list[dict[str, Any]]:
    """[{field, op, value, rule_id, severity}] from the default pack and the configured rule files."""
    from vendwatch.detect.rules import default_pack_text

    texts = [default_pack_text()] if settings.detect.default_pack else []
    for path in settings.detect.rule_files:
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            continue  # the detector reports unreadable rule files; the chart just draws fewer lines
    out: list[dict[str, Any]] = []
    for text in texts:
        doc = yaml.safe_load(text) or {}
        for rule in doc.get("rules", []) if isinstance(doc, dict) else []:
            out += _from_rule(rule)
    return out


def _from_rule(rule: Any) -> list[dict[str, Any]]:
    when = rule.get("when") if isinstance(rule, dict) else None
    if not isinstance(when, dict) or when.get("type") != "telemetry" or not isinstance(when.get("where"), dict):
        return []
    found = []
    for field, cond in when["where"].items():
        if not isinstance(cond, dict):
            continue
        for op in _OPS:
            value = cond.get(op)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.append({"field": field, "op": op, "value": value, "rule_id": rule.get("id"),
                              "severity": rule.get("severity")})
    return found
