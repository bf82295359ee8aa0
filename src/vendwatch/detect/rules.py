"""Rules as data: the YAML rule format, its validation, and compilation into matchers.

A rule file is ``{format: vendwatch.rules/v1, rules: [...]}``. Every rule is checked
at load; an error names the file, the rule id and the field (``RuleError``). The
format is documented in docs/detection.md.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from vendwatch.events import PAYLOADS
from vendwatch.signals import SEVERITIES

FORMAT = "vendwatch.rules/v1"
# libyaml's parser (shipped in PyYAML's wheels) reads the default pack ~10x faster than the
# pure-Python one (0.1 s of every detector's start); same safe constructor, same values,
# and it refuses nesting deeper than 1,000 levels as a YAML error
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RULE_TYPES = ("match", "sustained", "absence", "count", "ratio", "change")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")  # \Z: "$" would accept a trailing newline
MAX_DURATION_S = 366 * 86_400.0  # longer windows and timers are typos; they also overflow arithmetic
MAX_VERSION = 2**31 - 1  # checkpoints and the lake store the version as a 32/64-bit integer
MAX_COUNT = 1_000_000_000  # thresholds and sample counts
# template fields: a name or name[key], optionally !r/!s and a short format spec ("{value:.1f}");
# no attribute access (it reaches Python internals) and no huge widths (memory)
_TEMPLATE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[A-Za-z0-9_]{1,64}\])?\Z")
_TEMPLATE_SPEC = re.compile(r"[<>=^]?[+\- ]?[0-9]{0,2}(\.[0-9]{1,2})?[bdefgosx%]?\Z")
_DUR_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


class RuleError(ValueError):
    """A rule file is invalid; the message names the file, rule id and field."""


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``."""
    if isinstance(value, bool):
        raise RuleError(f"{where}: expected a duration like 15m, got {value!r}")
    seconds: float | None = None
    if isinstance(value, int | float):
        if not value >= 0:  # NaN too
            raise RuleError(f"{where}: duration must be >= 0, got {value}")
        seconds = float(value) if value <= MAX_DURATION_S else MAX_DURATION_S + 1
    elif isinstance(value, str) and len(value) <= 64:
        m = _DUR_RE.match(value)
        if m and any(m.groups()):
            d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
            seconds = d * 86400 + h * 3600 + mi * 60 + s
    if seconds is None:
        raise RuleError(f"{where}: expected a duration like 30s, 15m, 1h, got {_short(value)}")
    if seconds > MAX_DURATION_S:
        raise RuleError(f"{where}: duration must be at most 366d, got {_short(value)}")
    return seconds


def _short(value: Any) -> str:
    """``repr`` of a value for an error message, cut to a readable length."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"a {len(str(value))}-digit number"
    return text if len(text) <= 80 else text[:77] + "..."


# --- predicates ------------------------------------------------------------------
Pred = Callable[[dict[str, Any]], bool]


_NUMBER = (int, float)
_SCALAR = (str, int, float, bool)
_CONST_IDS = itertools.count()


def _op_expr(op: str, arg: Any, where: str, consts: list[Any]) -> str:
    """A Python expression over ``v`` for one operator; constants go to ``consts``.

    Predicates run for every event, so they are generated as straight-line code rather
    than nested closures (about 4x faster on the benchmark).
    """

    def c(value: Any) -> str:
        consts.append(value)
        return f"_k{next(_CONST_IDS)}_{len(consts) - 1}"

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    if op == "eq":
        if isinstance(arg, bool) or arg is None:
            return f"v is {arg!r}"
        if number(arg):
            return f"(v.__class__ in NUM and v == {c(arg)})"
        return f"v == {c(arg)}"
    if op == "ne":
        if isinstance(arg, bool):
            return f"(v is not None and v is not {arg!r})"
        return f"(v is not None and v != {c(arg)})"
    if op in ("gt", "gte", "lt", "lte"):
        if not number(arg):
            raise RuleError(f"{where}.{op}: expected a number, got {arg!r}")
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        return f"(v.__class__ in NUM and v {sym} {c(arg)})"
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not arg or not all(isinstance(x, str | int | float) for x in arg):
            raise RuleError(f"{where}.{op}: expected a non-empty list of values, got {arg!r}")
        items = c(frozenset(arg))
        if op == "in":
            return f"(v.__class__ in SCALAR and v in {items})"
        return f"(v is not None and (v.__class__ not in SCALAR or v not in {items}))"
    if op in ("outside", "between"):
        if not isinstance(arg, list) or len(arg) != 2 or not all(number(x) for x in arg) or arg[0] > arg[1]:
            raise RuleError(f"{where}.{op}: expected [low, high] numbers, got {arg!r}")
        lo, hi = c(arg[0]), c(arg[1])
        if op == "outside":
            return f"(v.__class__ in NUM and (v < {lo} or v > {hi}))"
        return f"(v.__class__ in NUM and {lo} <= v <= {hi})"
    if op == "exists":
        if not isinstance(arg, bool):
            raise RuleError(f"{where}.exists: expected true or false, got {arg!r}")
        return "v is not None" if arg else "v is None"
    raise RuleError(f"{where}: unknown operator {op!r} (known: eq, ne, gt, gte, lt, lte, in, not_in, outside, between, exists)")


def _getter(path: str) -> Callable[[dict[str, Any]], Any]:
    parts = path.split(".")
    if len(parts) == 1:
        return lambda d: d.get(path)

    def get(d: dict[str, Any]) -> Any:
        cur: Any = d
        for p in parts:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(p)
        return cur

    return get


@functools.cache  # asked once per condition; the payload definitions do not change
def _payload_fields(types: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for t in types:
        out |= {f.encode_name for f in msgspec.structs.fields(PAYLOADS[t])}
    return frozenset(out)


def compile_where(where: Any, types: tuple[str, ...], ctx: str) -> tuple[Pred | None, tuple[str, ...]]:
    """A predicate over a payload dict from ``{field: value | [values] | {op: arg}}``; and the fields used."""
    if where is None:
        return None, ()
    if not isinstance(where, dict):
        raise RuleError(f"{ctx}: expected a mapping of field: condition, got {_short(where)}")
    if not where:
        raise RuleError(f"{ctx}: expected at least one field: condition (omit it to match every event)")
    known = _payload_fields(types)
    consts: list[Any] = []
    env: dict[str, Any] = {"NUM": _NUMBER, "SCALAR": _SCALAR}
    parts = []
    for fname, cond in where.items():
        fw = f"{ctx}.{fname}"
        if not isinstance(fname, str) or fname.split(".")[0] not in known:
            raise RuleError(f"{fw}: unknown field for event type {'/'.join(types)} (known: {', '.join(sorted(known))})")
        consts: list[Any] = []
        if isinstance(cond, dict):
            if not cond:
                raise RuleError(f"{fw}: empty condition")
            exprs = [_op_expr(str(op), arg, fw, consts) for op, arg in cond.items()]
        elif isinstance(cond, list):
            exprs = [_op_expr("in", cond, fw, consts)]
        else:
            exprs = [_op_expr("eq", cond, fw, consts)]
        for e in exprs:  # bind the constants each expression names
            for name in re.findall(r"_k\d+_\d+", e):
                env[name] = consts[int(name.rsplit("_", 1)[1])]
        if "." in fname:
            gname = f"_g{next(_CONST_IDS)}"
            env[gname] = _getter(fname)
            get = f"{gname}(d)"
        else:
            get = f"d.get({fname!r})"
        parts.append(f"((v := {get}) is v and {' and '.join(exprs)})")
    expr = " and ".join(parts)
    # predicates run for every event: generated straight-line code, and the same source
    # is inlined by the engine into its per-event-type dispatch (engine._build_handlers)
    pred = eval(compile(f"lambda d: {expr}", f"<rule predicate {ctx}>", "eval"), env)  # noqa: S307 - from validated rules
    pred.src = expr
    pred.env = env
    return pred, tuple(where)


@dataclass(frozen=True)
class Matcher:
    """Selects events: by type, then by a payload predicate."""

    types: frozenset[str]
    pred: Pred | None
    all_keys: bool = False  # a clear matcher that resolves every open key of the rule on the device

    def __call__(self, etype: str, data: dict[str, Any]) -> bool:
        return etype in self.types and (self.pred is None or self.pred(data))


def _types(raw: Any, ctx: str) -> tuple[str, ...]:
    types = raw if isinstance(raw, list) else [raw]
    if not types:
        raise RuleError(f"{ctx}.type: at least one event type needed")
    for t in types:
        if not isinstance(t, str) or t not in PAYLOADS:
            raise RuleError(f"{ctx}.type: unknown event type {_short(t)} (known: {', '.join(PAYLOADS)})")
    return tuple(types)


def compile_matcher(raw: Any, ctx: str, allow: tuple[str, ...] = ()) -> Matcher:
    if not isinstance(raw, dict):
        raise RuleError(f"{ctx}: expected a mapping with type and where, got {raw!r}")
    extra = set(raw) - {"type", "where", *allow}
    if extra:
        raise RuleError(f"{ctx}: unknown key(s) {', '.join(sorted(map(str, extra)))} (allowed: type, where{''.join(', ' + a for a in allow)})")
    if "type" not in raw:
        raise RuleError(f"{ctx}.type: required")
    types = _types(raw["type"], ctx)
    pred, _ = compile_where(raw.get("where"), types, f"{ctx}.where")
    return Matcher(frozenset(types), pred, bool(raw.get("all_keys", False)))


def compile_matchers(raw: Any, ctx: str, allow: tuple[str, ...] = ()) -> tuple[Matcher, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise RuleError(f"{ctx}: at least one matcher needed")
    return tuple(compile_matcher(m, f"{ctx}[{i}]" if isinstance(raw, list) else ctx, allow) for i, m in enumerate(items))


# --- templates ---------------------------------------------------------------------
class _Safe(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def render(template: str, values: dict[str, Any]) -> str:
    """Fill ``{name}`` / ``{event[field]}`` placeholders; a missing value renders as ``?``."""
    try:
        return template.format_map(_Safe(values))
    except (KeyError, IndexError, AttributeError, ValueError, TypeError):
        return template


def check_template(template: Any, allowed: set[str], ctx: str) -> str:
    if not isinstance(template, str):
        raise RuleError(f"{ctx}: expected a string template, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise RuleError(f"{ctx}: bad template {template!r}: {e}") from None
    if len(template) > 1000:
        raise RuleError(f"{ctx}: template longer than 1000 characters")
    for _lit, name, spec, _conv in parsed:
        if name is None:
            continue
        if not _TEMPLATE_FIELD.match(name) or not _TEMPLATE_SPEC.match(spec or ""):
            raise RuleError(f"{ctx}: placeholder {{{_short(name)[1:-1]}}} must be {{name}}, {{name[key]}} or"
                            " {name:.1f} (no attributes, short format specs)")
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if root not in allowed:
            raise RuleError(f"{ctx}: unknown placeholder {{{name}}} (allowed: {', '.join(sorted(allowed))})")
    return template


# --- the rule model ----------------------------------------------------------------
BASE_NAMES = {"rule_id", "device_id", "site_id"}
EVIDENCE_NAMES = {
    "match": {"event"},
    "sustained": {"value", "threshold", "for"},
    "absence": {"silent_for", "last_seen"},
    "count": {"count", "threshold", "window"},
    "ratio": {"ratio", "bad", "total", "threshold"},
    "change": {"old", "new"},
}

_COMMON = {"id", "version", "type", "severity", "kind", "scope", "summary", "dedupe_key", "labels",
           "description", "enabled"}
_PER_TYPE = {
    "match": {"match", "clear", "resolve_after", "outside_visit"},
    "sustained": {"when", "while", "for", "clear_for"},
    "absence": {"of", "after", "interval_multiplier", "meta_key", "site_correlation", "site_rule_id",
                "site_severity", "site_summary", "require_activity"},
    "count": {"count", "threshold", "window"},
    "ratio": {"of", "bad", "last", "window", "above", "clear_at_or_below", "min_samples"},
    "change": {"of", "field", "min_distance_m", "unless", "unless_within", "resolve_after"},
}


@dataclass
class Rule:
    """One validated rule. ``params`` holds the compiled, type-specific parts."""

    id: str
    version: int
    type: str
    severity: str
    kind: Literal["incident", "business"]
    scope: Literal["device", "site"]
    summary: str
    dedupe_key: str
    labels: dict[str, str]
    description: str
    source: str
    params: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # the rule as written (for listing and diffs)


def _req(raw: dict[str, Any], key: str, ctx: str) -> Any:
    if key not in raw:
        raise RuleError(f"{ctx}: field '{key}' is required for a {raw.get('type')} rule")
    return raw[key]


def _pos_number(v: Any, ctx: str, integer: bool = False) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok or not 0 < v <= MAX_COUNT:  # NaN and infinities too
        raise RuleError(f"{ctx}: expected a positive {'integer' if integer else 'number'} up to {MAX_COUNT},"
                        f" got {_short(v)}")
    return v


def _compile_params(r: dict[str, Any], ctx: str) -> dict[str, Any]:
    t = r["type"]
    p: dict[str, Any] = {}
    if t == "match":
        p["match"] = compile_matchers(_req(r, "match", ctx), f"{ctx}: field 'match'")
        p["clear"] = compile_matchers(r["clear"], f"{ctx}: field 'clear'", ("all_keys",)) if r.get("clear") else ()
        p["resolve_after"] = parse_duration(r["resolve_after"], f"{ctx}: field 'resolve_after'") if r.get("resolve_after") is not None else None
        ov = r.get("outside_visit")
        if ov is not None and not isinstance(ov, bool | dict):
            raise RuleError(f"{ctx}: field 'outside_visit': expected true or {{grace: 5m, max_duration: 4h}}")
        if ov:
            ovd = ov if isinstance(ov, dict) else {}
            bad = set(ovd) - {"grace", "max_duration"}
            if bad:
                raise RuleError(f"{ctx}: field 'outside_visit': unknown key(s) {', '.join(sorted(map(str, bad)))}")
            p["visit_grace"] = parse_duration(ovd.get("grace", "5m"), f"{ctx}: field 'outside_visit.grace'")
            p["visit_max"] = parse_duration(ovd.get("max_duration", "4h"), f"{ctx}: field 'outside_visit.max_duration'")
        if not p["clear"] and p["resolve_after"] is None and r.get("kind", "incident") == "incident":
            pass  # allowed: resolved by an operator in the incident layer
    elif t == "sustained":
        when = _req(r, "when", ctx)
        m = compile_matcher(when, f"{ctx}: field 'when'")
        if m.pred is None:
            raise RuleError(f"{ctx}: field 'when.where' is required (the condition to sustain)")
        p["when"] = m
        p["fields"] = tuple(when["where"])
        p["threshold"] = {k: v for k, v in when["where"].items()}
        types = tuple(m.types)
        wpred, wfields = compile_where(r.get("while"), types, f"{ctx}: field 'while'")
        p["while"], p["while_fields"] = wpred, wfields
        # one check per field: a field the device never reported does not block the rule
        p["while_checks"] = tuple(
            (f, compile_where({f: c}, types, f"{ctx}: field 'while'")[0]) for f, c in (r.get("while") or {}).items()
        )
        p["for"] = parse_duration(_req(r, "for", ctx), f"{ctx}: field 'for'")
        p["clear_for"] = parse_duration(r.get("clear_for", 0), f"{ctx}: field 'clear_for'")
    elif t == "absence":
        p["of"] = compile_matcher(r["of"], f"{ctx}: field 'of'") if r.get("of") is not None else None
        p["after"] = parse_duration(_req(r, "after", ctx), f"{ctx}: field 'after'")
        if p["after"] <= 0:
            raise RuleError(f"{ctx}: field 'after': must be > 0")
        p["multiplier"] = _pos_number(r["interval_multiplier"], f"{ctx}: field 'interval_multiplier'") if r.get("interval_multiplier") is not None else None
        mk = r.get("meta_key")
        if mk is not None and not isinstance(mk, str):
            raise RuleError(f"{ctx}: field 'meta_key': expected a string")
        p["meta_key"] = mk
        sc = r.get("site_correlation", False)
        if not isinstance(sc, bool):
            raise RuleError(f"{ctx}: field 'site_correlation': expected true or false, got {sc!r}")
        p["site_correlation"] = sc
        ra = r.get("require_activity", False)
        if not isinstance(ra, bool):
            raise RuleError(f"{ctx}: field 'require_activity': expected true or false, got {ra!r}")
        if ra and (sc or r.get("of") is None):
            raise RuleError(f"{ctx}: field 'require_activity': needs 'of' (other events are the activity)"
                            " and cannot be combined with site_correlation")
        p["require_activity"] = ra
        p["site_rule_id"] = r.get("site_rule_id") or f"site_{r['id']}"
        if not isinstance(p["site_rule_id"], str) or not _ID_RE.match(p["site_rule_id"]):
            raise RuleError(f"{ctx}: field 'site_rule_id': must match {_ID_RE.pattern}")
        p["site_severity"] = r.get("site_severity", "critical")
        if p["site_severity"] not in SEVERITIES:
            raise RuleError(f"{ctx}: field 'site_severity': must be one of {', '.join(SEVERITIES)}")
        p["site_summary"] = check_template(
            r.get("site_summary", "{count} of {size} machines at site {site_id} stopped reporting"),
            {"rule_id", "site_id", "count", "size"}, f"{ctx}: field 'site_summary'")
    elif t == "count":
        p["count"] = compile_matcher(_req(r, "count", ctx), f"{ctx}: field 'count'")
        p["threshold"] = int(_pos_number(_req(r, "threshold", ctx), f"{ctx}: field 'threshold'", integer=True))
        p["window"] = parse_duration(_req(r, "window", ctx), f"{ctx}: field 'window'")
        if p["window"] <= 0:
            raise RuleError(f"{ctx}: field 'window': must be > 0")
    elif t == "ratio":
        p["of"] = compile_matcher(_req(r, "of", ctx), f"{ctx}: field 'of'")
        bpred, _ = compile_where(_req(r, "bad", ctx), tuple(p["of"].types), f"{ctx}: field 'bad'")
        p["bad"] = bpred
        if ("last" in r) == ("window" in r):
            raise RuleError(f"{ctx}: give exactly one of fields 'last' (N samples) or 'window' (duration)")
        if "last" in r:
            p["last"] = int(_pos_number(r["last"], f"{ctx}: field 'last'", integer=True))
            if p["last"] > 1024:
                raise RuleError(f"{ctx}: field 'last': at most 1024 samples")
            p["window"] = None
        else:
            p["last"] = None
            p["window"] = parse_duration(r["window"], f"{ctx}: field 'window'")
        above = _req(r, "above", ctx)
        if isinstance(above, bool) or not isinstance(above, int | float) or not 0 <= above < 1:
            raise RuleError(f"{ctx}: field 'above': expected a fraction 0 <= x < 1, got {above!r}")
        p["above"] = float(above)
        clear = r.get("clear_at_or_below", above)
        if isinstance(clear, bool) or not isinstance(clear, int | float) or not 0 <= clear <= above:
            raise RuleError(f"{ctx}: field 'clear_at_or_below': expected a fraction <= above, got {clear!r}")
        p["clear_at"] = float(clear)
        p["min_samples"] = int(_pos_number(r.get("min_samples", 1), f"{ctx}: field 'min_samples'", integer=True))
    elif t == "change":
        p["of"] = compile_matcher(_req(r, "of", ctx), f"{ctx}: field 'of'")
        fname = _req(r, "field", ctx)
        if not isinstance(fname, str) or fname.split(".")[0] not in _payload_fields(tuple(p["of"].types)):
            raise RuleError(f"{ctx}: field 'field': {fname!r} is not a field of {'/'.join(sorted(p['of'].types))}")
        p["field"] = fname
        p["get"] = _getter(fname)
        md = r.get("min_distance_m")
        p["min_distance_m"] = _pos_number(md, f"{ctx}: field 'min_distance_m'") if md is not None else None
        p["unless"] = compile_matchers(r["unless"], f"{ctx}: field 'unless'") if r.get("unless") else ()
        p["unless_within"] = parse_duration(r.get("unless_within", "1h"), f"{ctx}: field 'unless_within'")
        p["resolve_after"] = parse_duration(_req(r, "resolve_after", ctx), f"{ctx}: field 'resolve_after'")
    return p


_QUOTED_PATH = re.compile(r"field '([A-Za-z_]+)'((?:[.\[][^\s:]*)+)")


def compile_rule(raw: Any, index: int, source: str) -> Rule:
    """Validate one rule mapping (``index`` is its position in the file) and compile it."""
    try:
        return _compile_rule(raw, index, source)
    except RuleError as e:
        # "field 'when'.where.x" reads better as "field 'when.where.x'"
        raise RuleError(_QUOTED_PATH.sub(lambda m: f"field '{m.group(1)}{m.group(2)}'", str(e))) from None


def _compile_rule(raw: Any, index: int, source: str) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"{source}: rules[{index}]: expected a mapping, got {type(raw).__name__}")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise RuleError(f"{source}: rules[{index}]: field 'id': required, lowercase letters, digits and _ (got {rid!r})")
    ctx = f"{source}: rule '{rid}'"
    t = raw.get("type")
    if not isinstance(t, str) or t not in RULE_TYPES:
        raise RuleError(f"{ctx}: field 'type': must be one of {', '.join(RULE_TYPES)}, got {_short(t)}")
    unknown = set(raw) - _COMMON - _PER_TYPE[t]
    if unknown:
        raise RuleError(f"{ctx}: unknown field(s) {', '.join(sorted(map(str, unknown)))} for a {t} rule"
                        f" (allowed: {', '.join(sorted(_COMMON | _PER_TYPE[t]))})")
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise RuleError(f"{ctx}: field 'version': expected an integer from 1 to {MAX_VERSION}, got {_short(version)}")
    sev = raw.get("severity")
    if not isinstance(sev, str) or sev not in SEVERITIES:
        raise RuleError(f"{ctx}: field 'severity': must be one of {', '.join(SEVERITIES)}, got {sev!r}")
    kind = raw.get("kind", "incident")
    if not isinstance(kind, str) or kind not in ("incident", "business"):
        raise RuleError(f"{ctx}: field 'kind': must be incident or business, got {kind!r}")
    scope = raw.get("scope", "device")
    if scope != "device":
        # site-scoped signals come from site correlation of absence rules (site_correlation: true)
        raise RuleError(f"{ctx}: field 'scope': only 'device' rules are written directly; site-level"
                        " signals come from 'site_correlation: true' on an absence rule")
    labels = raw.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str | int | float) for k, v in labels.items()):
        raise RuleError(f"{ctx}: field 'labels': expected a mapping of string: string")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(f"{ctx}: field 'enabled': expected true or false")
    names = BASE_NAMES | EVIDENCE_NAMES[t]
    key_names = BASE_NAMES | ({"event"} if t == "match" else set())
    summary = check_template(raw.get("summary", "{rule_id} on {device_id}"), names, f"{ctx}: field 'summary'")
    dkey = check_template(raw.get("dedupe_key", "{rule_id}/{device_id}"), key_names, f"{ctx}: field 'dedupe_key'")
    if "{device_id}" not in dkey:
        raise RuleError(f"{ctx}: field 'dedupe_key': must contain {{device_id}} (device-scoped rule)")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise RuleError(f"{ctx}: field 'description': expected a string")
    params = _compile_params(raw, ctx)
    return Rule(id=rid, version=version, type=t, severity=sev, kind=kind, scope=scope, summary=summary,
                dedupe_key=dkey, labels={k: str(v) for k, v in labels.items()}, description=desc.strip(),
                source=source, params=params, spec=dict(raw))


@dataclass
class RuleSet:
    rules: list[Rule]
    sources: list[str]

    def by_id(self) -> dict[str, Rule]:
        return {r.id: r for r in self.rules}


def parse_rules(text: str, source: str) -> list[Rule]:
    """Rules from YAML text (``source`` names it in errors). Disabled rules are validated, then dropped."""
    try:
        doc = _load_yaml(text)
    except yaml.YAMLError as e:
        raise RuleError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise RuleError(f"{source}: not valid YAML: nested too deeply") from None
    try:
        return _parse_doc(doc, source)
    except RecursionError:
        raise RuleError(f"{source}: a rule is nested too deeply") from None


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        if _YAML_LOADER is yaml.SafeLoader:
            raise
        # the pure-Python parser's message quotes the offending line (libyaml's does not);
        # worth a second parse on the rare invalid file
        return yaml.safe_load(text)


def _parse_doc(doc: Any, source: str) -> list[Rule]:
    if not isinstance(doc, dict):
        raise RuleError(f"{source}: expected a mapping with 'format' and 'rules'")
    extra = set(doc) - {"format", "rules"}
    if extra:
        raise RuleError(f"{source}: unknown top-level key(s) {', '.join(sorted(map(str, extra)))}")
    if doc.get("format") != FORMAT:
        raise RuleError(f"{source}: field 'format': must be {FORMAT!r}, got {doc.get('format')!r}")
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list):
        raise RuleError(f"{source}: field 'rules': expected a list")
    out: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = compile_rule(raw, i, source)
        if rule.id in seen:
            raise RuleError(f"{source}: rule '{rule.id}': duplicate id")
        seen.add(rule.id)
        if raw.get("enabled", True):
            out.append(rule)
    return out


def load_rule_file(path: str | Path) -> list[Rule]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise RuleError(f"{path}: cannot read rule file: {e.strerror or e}") from None
    return parse_rules(text, str(path))


def default_pack_text() -> str:
    return resources.files("vendwatch.detect").joinpath("rules/default.yaml").read_text(encoding="utf-8")


def load_default_pack() -> list[Rule]:
    return parse_rules(default_pack_text(), "default.yaml")


def load_ruleset(files: list[str], default_pack: bool = True) -> RuleSet:
    """The default pack (if enabled) plus ``files``; a rule id may appear only once overall."""
    rules: list[Rule] = []
    sources: list[str] = []
    if default_pack:
        rules += load_default_pack()
        sources.append("default.yaml")
    for f in files:
        rules += load_rule_file(f)
        sources.append(str(f))
    ids: dict[str, str] = {}
    site_ids: set[str] = set()
    for r in rules:
        if r.id in ids:
            raise RuleError(f"{r.source}: rule '{r.id}': id already defined in {ids[r.id]}")
        ids[r.id] = r.source
        if r.type == "absence" and r.params["site_correlation"]:
            site_ids.add(r.params["site_rule_id"])
    clash = site_ids & set(ids)
    if clash:
        raise RuleError(f"site_rule_id {', '.join(sorted(clash))} clashes with a rule id")
    return RuleSet(rules, sources)
