"""Routing rules: which business events go to which targets (YAML, validated).

File layout (see docs/incidents.md for the full reference)::

    targets:
      ops-hook: {type: webhook, url: "https://...", secret: "${OPS_HOOK_SECRET}",
                 retry: {max_attempts: 10, max_event_age_s: 3600}}
    rules:
      - name: critical-to-ops
        pattern: {detail: {severity: [critical]}}
        targets: [ops-hook, orchestrator]

``orchestrator`` is a built-in target: the incident orchestrator. Errors raise
``RulesError`` naming the rule (or target) and the field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from vendwatch.bus import BUSINESS, SIGNALS
from vendwatch.delivery.config import CircuitBreaker, RateLimit, RetryPolicy
from vendwatch.route.pattern import Pattern, PatternError, PatternIndex, compile_pattern

ORCHESTRATOR = "orchestrator"
RESERVED_TARGETS = (ORCHESTRATOR, "servicenow")  # servicenow: the orchestrator's own delivery target
TargetType = Literal["webhook", "slack", "pagerduty", "log", "orchestrator"]


class RulesError(ValueError):
    """The routing rules file is invalid; the message names the rule or target and the field."""


class TargetSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: TargetType
    url: str | None = None
    secret: str | None = None  # webhook HMAC key
    routing_key: str | None = None  # PagerDuty integration key
    topic: str | None = None  # log target
    timeout_s: float = 10.0
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    rate_limit: RateLimit | None = None
    circuit: CircuitBreaker = msgspec.field(default_factory=CircuitBreaker)


class RuleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    pattern: dict[str, Any]
    targets: list[str]
    description: str = ""
    enabled: bool = True


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Pattern
    targets: tuple[str, ...]
    description: str = ""
    enabled: bool = True

    def matches(self, event: dict[str, Any]) -> bool:
        return self.enabled and self.pattern.matches(event)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    targets: dict[str, TargetSpec]
    # enabled rules behind an index of their exact-value fields: routing sees every event,
    # so matching must not cost a full pattern test per rule
    _enabled: tuple[Rule, ...] = field(init=False, repr=False, compare=False)
    _index: PatternIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        enabled = tuple(r for r in self.rules if r.enabled)
        object.__setattr__(self, "_enabled", enabled)
        object.__setattr__(self, "_index", PatternIndex([r.pattern for r in enabled]))

    def targets_for(self, event: dict[str, Any]) -> list[str]:
        """Targets of every matching rule, each once, in rule order."""
        out: list[str] = []
        for i in self._index.matching(event):
            out.extend(t for t in self._enabled[i].targets if t not in out)
        return out

    def to_orchestrator(self, event: dict[str, Any]) -> bool:
        return ORCHESTRATOR in self.targets_for(event)


DEFAULT_RULES = {
    "rules": [{
        "name": "incidents-to-orchestrator",
        "description": "Every incident-kind signal goes to the incident orchestrator (business signals do not).",
        "pattern": {"detail": {"kind": ["incident"]}},
        "targets": [ORCHESTRATOR],
    }],
}

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, where: str, environ: dict[str, str]) -> str:
    def sub(mt: re.Match[str]) -> str:
        if mt.group(1) not in environ:
            raise RulesError(f"{where}: environment variable {mt.group(1)} is not set")
        return environ[mt.group(1)]

    return _ENV.sub(sub, value)


def _field_of(e: msgspec.ValidationError) -> str:
    msg = str(e)
    if " - at `$." in msg:
        text, _, where = msg.partition(" - at `$.")
        return f"{where.rstrip('`')}: {text}"
    return msg


def _target(name: str, raw: Any, environ: dict[str, str]) -> TargetSpec:
    where = f"target {name}"
    try:
        spec = msgspec.convert(raw, TargetSpec, strict=False)
    except msgspec.ValidationError as e:
        raise RulesError(f"{where}: {_field_of(e)}") from None
    need = {"webhook": ("url", "secret"), "slack": ("url",), "pagerduty": ("routing_key",), "log": ("topic",)}
    for f in need.get(spec.type, ()):
        if not getattr(spec, f):
            raise RulesError(f"{where}: {f}: required for type {spec.type}")
    if spec.url and not spec.url.startswith(("http://", "https://")):
        raise RulesError(f"{where}: url: must start with http:// or https://")
    if spec.type == "log" and spec.topic in (SIGNALS, BUSINESS):
        raise RulesError(f"{where}: topic: {spec.topic} is read by the router itself (it would loop)")
    if spec.timeout_s <= 0:
        raise RulesError(f"{where}: timeout_s: must be > 0")
    for f in ("url", "secret", "routing_key"):
        v = getattr(spec, f)
        if isinstance(v, str):
            setattr(spec, f, _expand(v, f"{where}: {f}", environ))
    return spec


def parse_rules(doc: Any, environ: dict[str, str] | None = None) -> RuleSet:
    """Validate a parsed rules document."""
    env = dict(os.environ) if environ is None else environ
    if not isinstance(doc, dict):
        raise RulesError("routing rules: the file must be a mapping with 'rules' (and optionally 'targets')")
    unknown = set(doc) - {"rules", "targets"}
    if unknown:
        raise RulesError(f"routing rules: unknown top-level key(s): {', '.join(sorted(unknown))}")
    raw_targets = doc.get("targets") or {}
    if not isinstance(raw_targets, dict):
        raise RulesError("targets: must be a mapping of target name -> settings")
    targets: dict[str, TargetSpec] = {ORCHESTRATOR: TargetSpec(type="orchestrator")}
    for name, raw in raw_targets.items():
        if name in RESERVED_TARGETS:
            raise RulesError(f"target {name}: the name is reserved (built-in target)")
        targets[str(name)] = _target(str(name), raw, env)
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesError("rules: must be a non-empty list")
    rules, seen = [], set()
    for i, raw in enumerate(raw_rules):
        label = raw.get("name") if isinstance(raw, dict) and isinstance(raw.get("name"), str) else f"#{i + 1}"
        where = f"rule {label}"
        try:
            spec = msgspec.convert(raw, RuleSpec, strict=True)
        except msgspec.ValidationError as e:
            raise RulesError(f"{where}: {_field_of(e)}") from None
        if spec.name in seen:
            raise RulesError(f"{where}: name: duplicate rule name")
        seen.add(spec.name)
        if not spec.targets:
            raise RulesError(f"{where}: targets: must name at least one target")
        for t in spec.targets:
            if t not in targets:
                raise RulesError(f"{where}: targets: unknown target {t!r} (defined: {', '.join(sorted(targets))})")
        try:
            pat = compile_pattern(spec.pattern)
        except PatternError as e:
            raise RulesError(f"{where}: pattern.{e}") from None
        rules.append(Rule(spec.name, pat, tuple(spec.targets), spec.description, spec.enabled))
    return RuleSet(tuple(rules), targets)


def load_rules(path: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> RuleSet:
    """Rules from a YAML file, or the default (incidents to the orchestrator) when None."""
    if path is None:
        return parse_rules(DEFAULT_RULES, environ)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RulesError(f"routing rules file {path}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RulesError(f"routing rules file {path}: invalid YAML: {e}") from None
    try:
        return parse_rules(doc, environ)
    except RulesError as e:
        raise RulesError(f"{path}: {e}") from None
