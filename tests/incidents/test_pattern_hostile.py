"""Hostile patterns and events: the compiler answers PatternError or a matcher, and the
matcher answers True or False for any event, never an exception (a raise in the router's
apply is a crash loop; a raise in `routes check` is a traceback)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from incident_helpers import context

from vendwatch.bus import BUSINESS
from vendwatch.cli.common import Env
from vendwatch.cli.main import cli
from vendwatch.delivery.clock import VirtualClock
from vendwatch.route.pattern import PatternError, PatternIndex, compile_pattern
from vendwatch.route.role import Router
from vendwatch.route.rules import parse_rules

HUGE = 10**400  # a valid JSON number that no float holds

BAD_NUMBERS: list[tuple[str, dict[str, Any]]] = [
    ("literal 400 digits", {"a": [HUGE]}),
    ("literal -400 digits", {"a": [-HUGE]}),
    ("numeric bound 400 digits", {"a": [{"numeric": [">", HUGE]}]}),
    ("numeric range upper 400 digits", {"a": [{"numeric": [">", 0, "<", HUGE]}]}),
    ("numeric equals 400 digits", {"a": [{"numeric": ["=", -HUGE]}]}),
    ("anything-but 400 digits", {"a": [{"anything-but": HUGE}]}),
    ("anything-but list 400 digits", {"a": [{"anything-but": [1, HUGE]}]}),
    ("literal infinity (YAML .inf)", {"a": [math.inf]}),
    ("numeric nan (YAML .nan)", {"a": [{"numeric": [">", math.nan]}]}),
    ("anything-but -infinity", {"a": [{"anything-but": [-math.inf]}]}),
]


@pytest.mark.parametrize(("name", "pattern"), BAD_NUMBERS, ids=[n for n, _ in BAD_NUMBERS])
def test_numbers_no_float_holds_are_refused_at_compile(name: str, pattern: dict[str, Any]) -> None:
    with pytest.raises(PatternError, match=r"^a: .*(out of range|finite)"):
        compile_pattern(pattern)


EVENT_NUMBERS: list[tuple[dict[str, Any], Any, bool]] = [
    ({"a": [{"numeric": [">", 0]}]}, HUGE, True),
    ({"a": [{"numeric": ["<", 0]}]}, -HUGE, True),
    ({"a": [{"numeric": [">", 0, "<", 1e300]}]}, HUGE, False),
    ({"a": [{"numeric": ["=", 1]}]}, HUGE, False),
    ({"a": [1]}, HUGE, False),
    ({"a": [1]}, [HUGE, 1], True),
    ({"a": [{"anything-but": [1, 2]}]}, HUGE, True),
    ({"a": [{"anything-but": "x"}]}, HUGE, True),
    ({"a": [{"numeric": [">", 0]}]}, math.inf, True),
    ({"a": [{"numeric": [">", 0]}]}, math.nan, False),
    ({"a": [{"numeric": ["=", 0]}]}, math.nan, False),
    ({"a": [0]}, -math.inf, False),
    ({"a": [{"exists": True}]}, HUGE, True),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), EVENT_NUMBERS, ids=[str(i) for i in range(len(EVENT_NUMBERS))])
def test_numbers_no_float_holds_in_an_event_match_without_raising(pattern: dict[str, Any], value: Any,
                                                                    expected: bool) -> None:
    assert compile_pattern(pattern).matches({"a": value}) is expected


def test_deep_nesting_is_refused_or_matched_without_recursion_errors() -> None:
    deep: dict[str, Any] = {"x": ["v"]}
    for _ in range(5000):
        deep = {"n": deep}
    with pytest.raises(PatternError, match="nested deeper"):
        compile_pattern(deep)
    event: Any = "v"
    for _ in range(5000):
        event = [event]
    assert compile_pattern({"x": ["v"]}).matches({"x": event}) is True
    obj: Any = {"x": "v"}
    for _ in range(5000):
        obj = {"n": [obj]}
    assert compile_pattern({"n": {"n": {"x": ["v"]}}}).matches(obj) is False


def test_non_string_field_names_are_refused() -> None:  # YAML mappings can have int or null keys
    with pytest.raises(PatternError, match="field names must be strings"):
        compile_pattern({"detail": {1: ["x"]}})
    with pytest.raises(PatternError, match="exactly one key"):
        compile_pattern({"a": [{1: "x", "b": "y"}]})


def test_routes_check_refuses_a_400_digit_number_with_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "routes.yaml"
    f.write_text("rules:\n  - name: big\n    pattern: {detail: {amount: [{numeric: ['>', " + "9" * 400 + "]}]}}\n"
                 "    targets: [orchestrator]\n")
    res = CliRunner().invoke(cli, ["routes", "check", str(f)], obj=Env(None, {}))
    assert res.exit_code == 1, res.output
    assert "rule big: pattern.detail.amount: numeric" in res.output and "out of range" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_router_routes_a_business_event_with_a_400_digit_number(tmp_path: Path) -> None:
    clock = VirtualClock()
    ctx = context(tmp_path)
    rules = parse_rules({"targets": {"audit": {"type": "log", "topic": "routed"}},
                         "rules": [{"name": "big-sales", "pattern": {"detail": {"amount": [{"numeric": [">", 100]}]}},
                                    "targets": ["audit"]},
                                   {"name": "exact", "pattern": {"detail": {"amount": [5]}}, "targets": ["audit"]}]})
    router = Router(ctx, clock=clock, rules=rules)
    ctx.log.append(BUSINESS, [("k", b'{"kind": "sale", "amount": ' + b"9" * 400 + b"}")])
    for _ in range(3):
        clock.advance(1)
        router.step(0.01)
    routed = ctx.log.read("routed", 0, 0) + ctx.log.read("routed", 1, 0)
    assert len(routed) == 1
    assert msgspec.json.decode(routed[0].value)["detail"]["amount"] == int("9" * 400)


# -- property: any pattern document compiles or is refused cleanly; matching never raises ----

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=6),
    st.integers(min_value=-(10**20), max_value=10**20), st.sampled_from([HUGE, -HUGE, 2**63, -(2**64)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_keys = st.sampled_from(["a", "b", "detail", "$or", "prefix", "numeric", "exists", "anything-but",
                         "suffix", "wildcard", "equals-ignore-case", ""])
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_keys, inner, max_size=4), max_leaves=20)

_str_arg = st.one_of(st.text(alphabet="ab*\\.", max_size=5), _json)
_op = st.one_of(
    st.builds(lambda k, v: {k: v}, st.sampled_from(["prefix", "suffix", "equals-ignore-case", "wildcard"]),
              st.one_of(_str_arg, st.builds(lambda s: {"equals-ignore-case": s}, _str_arg))),
    st.builds(lambda v: {"exists": v}, st.one_of(st.booleans(), _scalars)),
    st.builds(lambda v: {"anything-but": v}, st.one_of(
        _scalars, st.lists(_scalars, max_size=3),
        st.builds(lambda k, v: {k: v}, st.sampled_from(["prefix", "suffix", "wildcard", "equals-ignore-case",
                                                         "numeric"]), _json))),
    st.builds(lambda ops, nums: {"numeric": [x for pair in zip(ops, nums, strict=False) for x in pair]},
              st.lists(st.sampled_from(["<", "<=", "=", ">", ">=", "!"]), min_size=0, max_size=3),
              st.lists(_scalars, min_size=0, max_size=3)),
)
_leaf = st.lists(st.one_of(_scalars, _op, _json), max_size=4)
_pattern = st.recursive(
    st.dictionaries(_keys, _leaf, min_size=0, max_size=3),
    lambda inner: st.dictionaries(_keys, st.one_of(inner, _leaf, st.lists(inner, min_size=0, max_size=3)),
                                  max_size=3),
    max_leaves=12,
) | _json

# events shaped like envelopes so the patterns' field names meet values of every kind
_event = st.dictionaries(_keys, _json | st.dictionaries(_keys, _json, max_size=4), max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_pattern, events=st.lists(_event, max_size=5))
def test_any_pattern_compiles_or_is_refused_and_never_raises_on_any_event(pattern: Any,
                                                                          events: list[Any]) -> None:
    try:
        p = compile_pattern(pattern)
    except PatternError:
        return
    for e in events:
        assert p.matches(e) in (True, False)


# -- the pattern index answers exactly what testing every pattern answers --------------------

_few = st.sampled_from(["x", "y", "z", "vendwatch.detect"])
_small_leaf = st.lists(st.one_of(_few, st.builds(lambda s: {"prefix": s}, _few),
                                 st.builds(lambda s: {"anything-but": s}, _few),
                                 st.just({"exists": False}), st.just({"numeric": [">", 1]}), st.integers(0, 3)),
                       min_size=1, max_size=3)
_fields = st.sampled_from(["a", "b", "c"])
_small_pattern = st.recursive(st.dictionaries(_fields, _small_leaf, min_size=1, max_size=3),
                              lambda inner: st.dictionaries(_fields | st.just("$or"),
                                                            inner | _small_leaf | st.lists(inner, min_size=2,
                                                                                           max_size=2),
                                                            min_size=1, max_size=3), max_leaves=8)
_small_value = st.recursive(_few | st.integers(0, 3) | st.none(),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_fields, inner, max_size=3),
                            max_leaves=8)
_small_event = st.dictionaries(_fields, _small_value, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns=st.lists(_small_pattern, min_size=1, max_size=8), events=st.lists(_small_event, min_size=1,
                                                                                  max_size=8))
@example(patterns=[{"a": {"b": ["x"]}}, {"a": {"b": ["y"]}, "c": ["x"]}],
         events=[{"a": [{"b": "x"}]}, {"a": [[{"b": "y"}]], "c": ["z", "x"]}, {"a": {"b": ["z", ["x"]]}}])
def test_the_pattern_index_agrees_with_testing_every_pattern(patterns: list[Any], events: list[Any]) -> None:
    compiled = []
    for p in patterns:
        try:
            compiled.append(compile_pattern(p))
        except PatternError:
            continue
    index = PatternIndex(compiled)
    for e in events:
        assert index.matching(e) == [i for i, p in enumerate(compiled) if p.matches(e)]


def test_disabled_rules_never_match_and_targets_keep_rule_order() -> None:
    rs = parse_rules({"targets": {"a": {"type": "log", "topic": "ta"}, "b": {"type": "log", "topic": "tb"}},
                      "rules": [{"name": "r1", "pattern": {"detail": {"site_id": ["S1"]}}, "targets": ["b"]},
                                {"name": "r2", "pattern": {"source": [{"prefix": "vend"}]}, "targets": ["a", "b"]},
                                {"name": "r3", "pattern": {"detail": {"site_id": ["S1"]}}, "targets": ["a"],
                                 "enabled": False}]})
    assert rs.targets_for({"source": "vendwatch", "detail": {"site_id": "S1"}}) == ["b", "a"]
    assert rs.targets_for({"source": "vendwatch", "detail": [{"site_id": "S2"}]}) == ["a", "b"]
    assert rs.targets_for({"source": "x", "detail": {"site_id": ["S0", "S1"]}}) == ["b"]
    assert rs.targets_for({"source": "x", "detail": [{"site_id": "S0"}, {"site_id": "S1"}]}) == ["b"]
