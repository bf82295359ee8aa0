"""Query-parameter parsing shared by the operator API: bad values are a 400 naming the parameter.

Integers are bounded on both sides before they reach a database: SQLite reads a
negative LIMIT as "no limit" and raises OverflowError past 2**63, PostgreSQL refuses
NUL characters in text; each of these used to surface as a 500.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_OFFSET = 1_000_000  # deeper pages are reached with filters (or keyset ``after``), not offsets
MAX_TEXT = 256  # ids, cursors and filters: longer values match nothing anyway


class ParamError(ValueError):
    """A query parameter is malformed or out of range; the message names it."""


def int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not raw.lstrip("-").isdigit():
        raise ParamError(f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ParamError(f"{name} must be from {lo} to {hi}, got {value}")
    return value


def text_param(params: Mapping[str, str], name: str, default: str | None = None,
               max_len: int = MAX_TEXT) -> str | None:
    raw = params.get(name)
    if raw is None:
        return default
    check_text(name, raw, max_len)
    return raw


def check_text(name: str, value: str, max_len: int = MAX_TEXT) -> None:
    if len(value) > max_len:
        raise ParamError(f"{name} must be at most {max_len} characters")
    if "\x00" in value:
        raise ParamError(f"{name} must not contain NUL characters")
