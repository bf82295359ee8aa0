"""Kafka backend for the contract suites: a real broker (scripts/services.sh up).

Each test gets its own topic prefix, so tests never see each other's records.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from tests.conftest import service_missing

from vendwatch.bus.base import Log
from vendwatch.config import KafkaSettings


def kafka_address() -> str:
    """host:port of the test broker, or a test skip/failure when none answers."""
    addr = os.environ.get("VENDWATCH_TEST_KAFKA", "127.0.0.1:9092")
    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as e:
        service_missing("kafka", f"no broker at {addr} ({e}); run scripts/services.sh up")
    return addr


def kafka_settings(**kw: object) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=kafka_address(),
        topic_prefix=f"vwtest.{uuid.uuid4().hex[:8]}.",
        partitions=3,
        session_timeout_ms=6000,
        **kw,  # type: ignore[arg-type]
    )


def kafka_log(tmp_path: Path) -> Log:
    from vendwatch.bus.kafka import KafkaLog

    return KafkaLog(kafka_settings())
