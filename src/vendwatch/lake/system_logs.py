"""The platform's log archive: JSON log lines on the ``system_logs`` topic -> ``raw.system_logs``.

Lines reach the topic two ways, with the same format (one JSON object per line, as
``log_format = "json"`` writes them):

* in-process (``log_archive = true``): every role's process appends its own lines
  (``vendwatch.observe.archive``);
* shipped: a cluster log collector (Fluent Bit, Vector) reads the pods' stdout and
  produces each line to the Kafka topic ``<topic_prefix>system_logs``.

The lake writer commits them like raw events (offsets in the snapshot, exactly once).
A line that is not JSON is kept too, as its text, so nothing a pod printed is lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa

from vendwatch.bus.base import Record
from vendwatch.lake.schemas import RAW_SYSTEM_LOGS

SYSTEM_LOGS = "system_logs"
SCHEMA = RAW_SYSTEM_LOGS.arrow_schema()
_IDS = ("role", "replica", "device_id", "event_id", "signal_id", "incident_id", "ticket")
_KNOWN = {"ts", "level", "logger", "msg", "exc", *_IDS}
_LEVELS = {"debug", "info", "warning", "error", "critical"}


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else msgspec.json.encode(v, enc_hook=str).decode()


def _ts(v: Any, fallback_ms: int) -> datetime:
    if isinstance(v, str):
        try:
            at = datetime.fromisoformat(v.replace("Z", "+00:00"))
            return at if at.tzinfo else at.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(fallback_ms / 1000, UTC)


class SystemLogColumns:
    """Buffered raw.system_logs rows (same interface as the writer's other buffers)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[object]] = {f.name: [] for f in SCHEMA}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.cols["ts"])

    def add_many(self, records: list[Record]) -> int:
        for r in records:
            self.add(r)
        return len(records)

    def add(self, r: Record) -> None:
        try:
            line = msgspec.json.decode(r.value)
        except msgspec.DecodeError:
            line = None
        if not isinstance(line, dict):
            line = {"level": "info", "logger": "stdout", "msg": r.value.decode("utf-8", "replace")}
        c = self.cols
        level = str(line.get("level", "info")).lower()
        c["ts"].append(_ts(line.get("ts"), r.timestamp_ms))
        c["level"].append(level if level in _LEVELS else "info")
        c["logger"].append(str(line.get("logger") or "-"))
        c["msg"].append(_text(line.get("msg")) or "")
        c["exc"].append(_text(line.get("exc")))
        for k in _IDS:
            c[k].append(_text(line.get(k)) or None)
        rest = {k: v for k, v in line.items() if k not in _KNOWN}
        c["extra"].append(msgspec.json.encode(rest, enc_hook=str).decode() if rest else None)
        c["log_partition"].append(r.partition)
        c["log_offset"].append(r.offset)
        self.nbytes += len(r.value)

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=SCHEMA)
