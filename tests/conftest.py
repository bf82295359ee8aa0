"""Shared fixtures.

Service-backed tests (Kafka, PostgreSQL, Mosquitto) are parametrised by backend. When a
service is not reachable they skip on a developer machine but FAIL when ``CI`` is set,
so CI can never pass while silently testing less.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
# subprocesses (vendwatch serve, the simulator) import this checkout, not an installed copy
os.environ["PYTHONPATH"] = SRC + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")


def service_missing(name: str, why: str) -> None:
    """Skip locally, fail in CI: a missing service must never turn into a green run."""
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI but unavailable: {why}")
    pytest.skip(f"{name} unavailable: {why}")


def vendwatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vendwatch", *args]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d
