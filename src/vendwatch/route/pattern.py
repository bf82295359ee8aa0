"""EventBridge event patterns: compile once, match many events.

Semantics follow AWS EventBridge / aws/event-ruler:

* A pattern is a JSON object mirroring the event's structure. Every field named in
  the pattern must match (AND); a leaf is an *array* of alternatives (OR).
* Alternatives are literal values (string, number, boolean, null: exact, type-sensitive;
  numbers compare numerically) or one-key operator objects: ``prefix``, ``suffix``
  (each optionally ``{"equals-ignore-case": ...}``), ``equals-ignore-case``,
  ``wildcard``, ``anything-but`` (value, list, or ``prefix``/``suffix``/``wildcard``/
  ``equals-ignore-case``), ``numeric`` (up to two comparisons), ``exists``.
* When the event value is an array, the field matches if *any* element matches; for
  nested objects inside arrays each element is tried as a whole (array-consistent).
* ``exists`` works on leaves only: an object value does not "exist" as a leaf, and an
  empty array holds no leaf. Absent fields match nothing except ``{"exists": false}``.
* ``"$or": [{...}, {...}]`` (two or more objects) at any level is an OR of sub-patterns.

``compile_pattern`` validates the pattern and raises ``PatternError`` naming the path.
Numbers in a pattern must be finite and fit a double (a 400-digit integer or YAML's
``.inf`` is refused at compile); numbers in events may be anything JSON carries and
are compared exactly, so matching never raises.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from typing import Any

_MISSING = object()
Leaf = Callable[[Any], bool]  # called with the event value or _MISSING


class PatternError(ValueError):
    """The event pattern is malformed; the message names the offending path."""


_MAX_DEPTH = 64  # nesting levels of objects in a pattern; deeper is refused, not a RecursionError
_FLOAT_MAX = sys.float_info.max


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _pattern_num(v: Any, where: str) -> float:
    """A pattern's number as a float; refuses what no double holds (400 digits, inf, nan)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise PatternError(f"{where}: numbers must be finite, got {v!r}")
    if not -_FLOAT_MAX <= v <= _FLOAT_MAX:  # exact int/float comparison: no conversion yet
        raise PatternError(f"{where}: number out of range (at most {_FLOAT_MAX:.6g} in magnitude)")
    return float(v)


def _num_eq(v: Any, n: float) -> bool:
    """Event number ``v`` equals pattern number ``n`` (within 1e-6, as event-ruler)."""
    try:
        return abs(float(v) - n) <= 1e-6
    except OverflowError:  # an event integer beyond any double cannot equal a finite number
        return False


def _keys(d: dict[Any, Any]) -> list[str]:
    return sorted(str(k) for k in d)


def _wildcard_regex(pat: str, where: str) -> re.Pattern[str]:
    out, i, prev_star = [], 0, False
    while i < len(pat):
        ch = pat[i]
        if ch == "\\":
            if i + 1 >= len(pat) or pat[i + 1] not in "*\\":
                raise PatternError(f"{where}: wildcard: a backslash may only escape '*' or '\\'")
            out.append(re.escape(pat[i + 1]))
            i += 2
            prev_star = False
            continue
        if ch == "*":
            if prev_star:
                raise PatternError(f"{where}: wildcard: consecutive '*' are not allowed")
            out.append(".*")
            prev_star = True
        else:
            out.append(re.escape(ch))
            prev_star = False
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _string_op(name: str, arg: Any, where: str) -> Callable[[str], bool]:
    """prefix / suffix / equals-ignore-case / wildcard as a predicate on strings."""
    if name in ("prefix", "suffix") and isinstance(arg, dict):
        if list(arg) != ["equals-ignore-case"] or not isinstance(arg["equals-ignore-case"], str):
            raise PatternError(f"{where}: {name} takes a string or {{\"equals-ignore-case\": string}}")
        low = arg["equals-ignore-case"].casefold()
        if name == "prefix":
            return lambda s: s.casefold().startswith(low)
        return lambda s: s.casefold().endswith(low)
    if not isinstance(arg, str):
        raise PatternError(f"{where}: {name} takes a string, got {type(arg).__name__}")
    if name == "prefix":
        return lambda s: s.startswith(arg)
    if name == "suffix":
        return lambda s: s.endswith(arg)
    if name == "equals-ignore-case":
        low = arg.casefold()
        return lambda s: s.casefold() == low
    if name == "wildcard":
        rx = _wildcard_regex(arg, where)
        return lambda s: rx.fullmatch(s) is not None
    raise PatternError(f"{where}: unknown operator {name!r}")


def _literal_eq(lit: Any, where: str) -> Leaf:
    if _is_num(lit):
        n = _pattern_num(lit, where)
        return lambda v: _is_num(v) and _num_eq(v, n)
    if lit is None:
        return lambda v: v is None
    if isinstance(lit, bool):
        return lambda v: isinstance(v, bool) and v is lit
    if not isinstance(lit, str):
        raise PatternError(f"{where}: a value must be a string, number, boolean or null, got {type(lit).__name__}")
    return lambda v: isinstance(v, str) and v == lit


def _anything_but(arg: Any, where: str) -> Leaf:
    if isinstance(arg, dict):
        if len(arg) != 1:
            raise PatternError(f"{where}: anything-but takes one operator, got {_keys(arg)}")
        (op, sub), = arg.items()
        if op not in ("prefix", "suffix", "wildcard", "equals-ignore-case"):
            raise PatternError(f"{where}: anything-but does not support {op!r}")
        if op == "equals-ignore-case" and isinstance(sub, list):
            if not sub or not all(isinstance(s, str) for s in sub):
                raise PatternError(f"{where}: anything-but equals-ignore-case list must be non-empty strings")
            lows = {s.casefold() for s in sub}
            return lambda v: isinstance(v, str) and v.casefold() not in lows
        if op == "wildcard" and isinstance(sub, list):
            preds = [_string_op("wildcard", s, where) for s in sub]
            return lambda v: isinstance(v, str) and not any(p(v) for p in preds)
        if isinstance(sub, dict):  # anything-but prefix/suffix do not nest equals-ignore-case
            raise PatternError(f"{where}: anything-but {op} takes a string")
        pred = _string_op(op, sub, where)
        return lambda v: isinstance(v, str) and not pred(v)
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise PatternError(f"{where}: anything-but list must not be empty")
    if not (all(isinstance(x, str) for x in values) or all(_is_num(x) for x in values)):
        raise PatternError(f"{where}: anything-but values must be all strings or all numbers")
    if all(isinstance(x, str) for x in values):
        excluded = frozenset(values)
        return lambda v: v is not _MISSING and not (isinstance(v, str) and v in excluded)
    eqs = [_literal_eq(x, where) for x in values]
    # a present value that equals none of the listed ones (null and booleans included)
    return lambda v: v is not _MISSING and not any(eq(v) for eq in eqs)


# the event value stays as it came (an int may exceed any double): Python compares ints and
# floats exactly, so only equality converts, and _num_eq handles the overflow
_NUM_OPS: dict[str, Callable[[Any, float], bool]] = {
    "=": _num_eq,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _numeric(arg: Any, where: str) -> Leaf:
    if not isinstance(arg, list) or not arg or len(arg) % 2:
        raise PatternError(f"{where}: numeric takes [op, number] or [op, number, op, number]")
    checks: list[tuple[Callable[[Any, float], bool], float]] = []
    for i in range(0, len(arg), 2):
        op, num = arg[i], arg[i + 1]
        if not isinstance(op, str) or op not in _NUM_OPS or not _is_num(num):
            raise PatternError(f"{where}: numeric: bad comparison {op!r} {num!r}")
        checks.append((_NUM_OPS[op], _pattern_num(num, f"{where}: numeric")))
    if len(checks) > 2 or (len(checks) == 2 and (arg[0] not in (">", ">=") or arg[2] not in ("<", "<="))):
        raise PatternError(f"{where}: numeric range must be a lower bound (> or >=) then an upper bound (< or <=)")
    return lambda v: _is_num(v) and all(fn(v, n) for fn, n in checks)


def _alternative(alt: Any, where: str) -> tuple[str, Leaf]:
    """One alternative of a leaf array; returns (kind, predicate)."""
    if not isinstance(alt, dict):
        if isinstance(alt, list):
            raise PatternError(f"{where}: nested arrays are not allowed in a pattern")
        return "value", _literal_eq(alt, where)
    if len(alt) != 1:
        raise PatternError(f"{where}: an operator object must have exactly one key, got {_keys(alt)}")
    (op, arg), = alt.items()
    if op == "exists":
        if not isinstance(arg, bool):
            raise PatternError(f"{where}: exists takes true or false")
        return ("exists_true" if arg else "exists_false"), lambda v: False
    if op == "anything-but":
        return "value", _anything_but(arg, where)
    if op == "numeric":
        return "value", _numeric(arg, where)
    if op in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
        pred = _string_op(op, arg, where)
        return "value", lambda v: isinstance(v, str) and pred(v)
    raise PatternError(f"{where}: unknown operator {op!r}")


def _leaves(value: Any) -> list[Any]:
    """Leaf values of an event field (arrays flattened; objects are not leaves)."""
    if not isinstance(value, list):
        return [] if isinstance(value, dict) else [value]
    out: list[Any] = []
    stack = [iter(value)]  # iterative: an event may nest arrays deeper than the recursion limit
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            if not isinstance(v, dict):
                out.append(v)
        else:
            stack.pop()
    return out


def _compile_leaf(alts: list[Any], where: str) -> Callable[[Any], bool]:
    if not alts:
        raise PatternError(f"{where}: a leaf must list at least one value")
    # plain strings are the common alternative: one set lookup instead of a predicate each
    strings = frozenset(a for a in alts if isinstance(a, str))
    compiled = [_alternative(a, where) for a in alts if not isinstance(a, str)]
    preds = [p for kind, p in compiled if kind == "value"]
    if strings:
        preds.insert(0, lambda v: isinstance(v, str) and v in strings)
    want_exists = any(kind == "exists_true" for kind, _ in compiled)
    want_absent = any(kind == "exists_false" for kind, _ in compiled)

    def match(value: Any) -> bool:
        if value is not _MISSING and not isinstance(value, list | dict):  # the common case: one scalar
            if want_exists:
                return True
            return any(p(value) for p in preds)
        leaves = [] if value is _MISSING else _leaves(value)
        if want_absent and not leaves:
            return True
        if want_exists and leaves:
            return True
        return any(p(v) for v in leaves for p in preds)

    return match


def _is_or(key: str, val: Any) -> bool:
    return key == "$or" and isinstance(val, list) and len(val) >= 2 and all(isinstance(x, dict) for x in val)


def _compile_object(pat: Any, where: str, depth: int = 0) -> Callable[[Any], bool]:
    if not isinstance(pat, dict):
        raise PatternError(f"{where or 'pattern'}: must be an object")
    if not pat:
        raise PatternError(f"{where or 'pattern'}: must not be empty")
    if depth > _MAX_DEPTH:
        raise PatternError(f"{where}: the pattern is nested deeper than {_MAX_DEPTH} levels")
    fields: list[tuple[str, Callable[[Any], bool]]] = []
    ors: list[list[Callable[[Any], bool]]] = []
    for key, val in pat.items():
        if not isinstance(key, str):
            raise PatternError(f"{where or 'pattern'}: field names must be strings, got {key!r}")
        path = f"{where}.{key}" if where else key
        if _is_or(key, val):
            ors.append([_compile_object(sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(val)])
        elif isinstance(val, dict):
            fields.append((key, _compile_nested(val, path, depth + 1)))
        elif isinstance(val, list):
            fields.append((key, _compile_leaf(val, path)))
        else:
            raise PatternError(f"{path}: must be an array of values or an object, got {type(val).__name__}")

    def match(obj: Any) -> bool:
        if not isinstance(obj, dict):
            return False
        for key, m in fields:
            if not m(obj.get(key, _MISSING)):
                return False
        return all(any(alt(obj) for alt in group) for group in ors)

    return match


def _compile_nested(pat: dict[str, Any], where: str, depth: int) -> Callable[[Any], bool]:
    inner = _compile_object(pat, where, depth)

    # only leaves can be tested for absence; an absent object still feeds its fields _MISSING
    def match(value: Any) -> bool:
        if value is _MISSING or not isinstance(value, dict | list):
            return inner({})
        if isinstance(value, dict):
            return inner(value)
        # an array: any object element matches as a whole (array-consistent); an array level
        # holding no object tests the fields as absent. Iterative: arrays may nest very deep.
        stack, dictless = [value], False
        while stack:
            has_dict = False
            for v in stack.pop():
                if isinstance(v, dict):
                    has_dict = True
                    if inner(v):
                        return True
                elif isinstance(v, list):
                    stack.append(v)
            dictless = dictless or not has_dict
        return dictless and inner({})

    return match


class Pattern:
    """A compiled event pattern; ``matches(event)`` is pure and thread-safe."""

    def __init__(self, source: dict[str, Any]) -> None:
        self.source = source
        self._match = _compile_object(source, "")

    def matches(self, event: dict[str, Any]) -> bool:
        return self._match(event)


def compile_pattern(source: Any) -> Pattern:
    """Validate and compile an EventBridge event pattern (a dict)."""
    return Pattern(source)


# -- many patterns at once ------------------------------------------------------------------
FieldPath = tuple[str, ...]
_ON_ARRAY = object()  # an array on the way to the field: its objects are matched one by one


def _exact_fields(pat: dict[str, Any], prefix: FieldPath = ()) -> list[tuple[FieldPath, frozenset[str]]]:
    """Fields (outside ``$or``) whose alternatives are all plain strings: a matching event
    must hold one of those strings there (or, in an array, among its leaves)."""
    out: list[tuple[FieldPath, frozenset[str]]] = []
    for key, val in pat.items():
        if _is_or(key, val):
            continue
        if isinstance(val, dict):
            out.extend(_exact_fields(val, (*prefix, key)))
        elif isinstance(val, list) and val and all(isinstance(a, str) for a in val):
            out.append(((*prefix, key), frozenset(val)))
    return out


class PatternIndex:
    """Which of many patterns match an event, testing only the plausible ones.

    As aws/event-ruler does, exact string values come first: the fields of a pattern
    whose alternatives are all plain strings are its *exact fields*. Patterns with the
    same exact-field paths form a group with one table per path (value -> patterns); an
    event's values at those paths select, by set intersection, the group's patterns whose
    exact fields all hold, and only those are matched in full. Patterns without exact
    fields are always matched. The answer equals testing every pattern, in order.
    """

    def __init__(self, patterns: list[Pattern]) -> None:
        self._patterns = patterns
        self._always: list[int] = []
        paths: dict[FieldPath, int] = {}
        groups: dict[tuple[int, ...], list[tuple[int, list[tuple[FieldPath, frozenset[str]]]]]] = {}
        for i, p in enumerate(patterns):
            fields = sorted(_exact_fields(p.source))
            if not fields:
                self._always.append(i)
                continue
            sig = tuple(paths.setdefault(path, len(paths)) for path, _ in fields)
            groups.setdefault(sig, []).append((i, fields))
        self._paths = list(paths)
        self._groups: list[tuple[tuple[int, ...], list[dict[str, frozenset[int]]], frozenset[int]]] = []
        for sig, members in groups.items():
            tables: list[dict[str, set[int]]] = [{} for _ in sig]
            for i, fields in members:
                for table, (_, values) in zip(tables, fields, strict=True):
                    for v in values:
                        table.setdefault(v, set()).add(i)
            frozen = [{v: frozenset(ids) for v, ids in t.items()} for t in tables]
            self._groups.append((sig, frozen, frozenset(i for i, _ in members)))

    def matching(self, event: Any) -> list[int]:
        """Indexes (in the given order) of the patterns that match ``event``."""
        values = []
        for path in self._paths:
            v = event
            for key in path:
                if isinstance(v, dict):
                    v = v.get(key, _MISSING)
                elif isinstance(v, list):
                    v = _ON_ARRAY  # objects in an array are matched element by element
                    break
                else:
                    v = _MISSING
                    break
            values.append(v)
        cands: set[int] = set(self._always)
        for sig, tables, members in self._groups:
            found: frozenset[int] | set[int] = members
            for j, table in zip(sig, tables, strict=True):
                v = values[j]
                if isinstance(v, str):
                    found = found & table.get(v, _NONE)
                elif v is _ON_ARRAY:
                    continue
                elif isinstance(v, list):
                    found = found & {i for leaf in _leaves(v) if isinstance(leaf, str) for i in table.get(leaf, _NONE)}
                else:
                    found = _NONE
                if not found:
                    break
            cands |= found
        pats = self._patterns
        return [i for i in sorted(cands) if pats[i].matches(event)]


_NONE: frozenset[int] = frozenset()
