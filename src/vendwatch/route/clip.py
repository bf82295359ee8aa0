"""Bounding what device-influenced documents a sink sends (webhook bodies, PagerDuty details).

Signal fields carry device text (summaries rendered from payload values, evidence,
labels); a receiver has size limits of its own (PagerDuty refuses events over 512 KB)
and must never be handed an unbounded document because one device sent a long string.
"""

from __future__ import annotations

from typing import Any

import msgspec

ELLIPSIS = "…"


def clip(text: Any, limit: int) -> str:
    """``text`` as a string of at most ``limit`` characters (an ellipsis marks a cut)."""
    s = text if isinstance(text, str) else "" if text is None else str(text)
    return s if len(s) <= limit else s[: max(limit - 1, 0)] + ELLIPSIS


def shrink(doc: Any, max_str: int, max_items: int = 100, depth: int = 8) -> Any:
    """A copy of a JSON document with strings clipped, containers cut to ``max_items``, nesting to ``depth``."""
    if isinstance(doc, str):
        return clip(doc, max_str)
    if depth <= 0 and isinstance(doc, dict | list):
        return clip(msgspec.json.encode(doc).decode(), max_str)
    if isinstance(doc, dict):
        return {clip(k, 128): shrink(v, max_str, max_items, depth - 1) for k, v in list(doc.items())[:max_items]}
    if isinstance(doc, list):
        return [shrink(v, max_str, max_items, depth - 1) for v in doc[:max_items]]
    return doc


def bounded_json(doc: dict[str, Any], max_bytes: int) -> bytes:
    """``doc`` encoded as JSON in at most ``max_bytes``: clipped harder until it fits."""
    raw = msgspec.json.encode(doc)
    for max_str in (4096, 512, 64):
        if len(raw) <= max_bytes:
            return raw
        raw = msgspec.json.encode({**shrink(doc, max_str), "truncated": True})
    if len(raw) <= max_bytes:
        return raw
    # still too large (thousands of keys): keep only the identifying fields
    keep = {k: doc[k] for k in ("version", "id", "source", "detail-type", "time") if k in doc}
    detail = doc.get("detail") if isinstance(doc.get("detail"), dict) else {}
    keep["detail"] = shrink({k: detail[k] for k in ("rule_id", "status", "severity", "device_id", "site_id",
                                                    "dedupe_key", "signal_id") if k in detail}, 256)
    keep["truncated"] = True
    return msgspec.json.encode(keep)
