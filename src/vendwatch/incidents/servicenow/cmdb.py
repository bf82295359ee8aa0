"""CMDB sync placeholder: which CI a machine's incidents reference when ``cmdb_sync`` is on."""

from __future__ import annotations

from vendwatch.state.db import Database


def ci_ref(db: Database, device_id: str) -> str | None:
    return None
