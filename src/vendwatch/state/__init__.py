"""State store (the DynamoDB part): device registry, device state, checkpoints, and the
tables later stages register (incidents, outbox). One SQL implementation runs on
SQLite (embedded) and PostgreSQL (scale-out) through the small ``Database`` adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vendwatch.state import deadletters as _deadletters  # noqa: F401 - registers its table
from vendwatch.state.db import Database, open_database
from vendwatch.state.store import StateStore

if TYPE_CHECKING:
    from vendwatch.config import Settings

__all__ = ["Database", "StateStore", "open_database", "open_state"]


def open_state(settings: Settings) -> StateStore:
    """Open the configured state store and apply pending migrations."""
    store = StateStore(open_database(settings))
    store.migrate()
    return store
