"""Schema migrations, registered per component so each stage owns its tables.

A component calls ``register(component, version, ddl)`` at import time; ``apply``
runs every pending one in (component, version) order, recording it in
``schema_migrations``. DDL may use the ``{blob}``/``{serial_pk}``/``{bigint}`` placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass

from vendwatch.state.db import Database


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    statements: tuple[str, ...]


_REGISTRY: dict[tuple[str, int], Migration] = {}


def register(component: str, version: int, *statements: str) -> None:
    _REGISTRY[(component, version)] = Migration(component, version, statements)


def apply(db: Database) -> list[tuple[str, int]]:
    """Apply pending migrations; returns what was applied."""
    with db.transaction() as tx:
        db.lock_migrations(tx)  # CREATE TABLE IF NOT EXISTS races on PostgreSQL otherwise
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations(component TEXT NOT NULL, version INTEGER NOT NULL,"
            " PRIMARY KEY(component, version))"
        )
    done = set(db.query("SELECT component, version FROM schema_migrations"))
    applied = []
    for key in sorted(_REGISTRY):
        if key in done:
            continue
        m = _REGISTRY[key]
        with db.transaction() as tx:
            db.lock_migrations(tx)
            if tx.one("SELECT 1 FROM schema_migrations WHERE component=? AND version=?", key):
                continue  # another process applied it meanwhile
            for stmt in m.statements:
                tx.execute(db.ddl(stmt))
            tx.execute("INSERT INTO schema_migrations VALUES (?, ?)", key)
        applied.append(key)
    return applied
