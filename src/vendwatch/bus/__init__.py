"""Event backbone: the ``Log`` port and its backends (SQLite embedded, Kafka scale-out)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vendwatch.bus.base import (
    BUSINESS,
    EVENTS,
    REJECTED,
    SIGNALS,
    Consumer,
    Log,
    LogError,
    LogUnavailable,
    Record,
)
from vendwatch.files import private_dir

if TYPE_CHECKING:
    from vendwatch.config import Settings

__all__ = ["BUSINESS", "EVENTS", "REJECTED", "SIGNALS", "Consumer", "Log", "LogError", "LogUnavailable", "Record", "open_log"]


def open_log(settings: Settings) -> Log:
    """The log backend the settings name."""
    if settings.bus.backend == "kafka":
        from vendwatch.bus.kafka import KafkaLog

        return KafkaLog(settings.bus.kafka, retention_ms=int(settings.bus.retention_hours * 3_600_000))
    from vendwatch.bus.sqlite import SqliteLog

    private_dir(settings.data_path)
    return SqliteLog(settings.data_path / "bus.db", default_partitions=settings.bus.partitions)
