"""The previous-read store on both state backends (SQLite embedded, PostgreSQL scale-out)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vendwatch.config import load_settings
from vendwatch.dex import model as dm
from vendwatch.dex.store import DexStore
from vendwatch.runtime import Context


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DexStore]:
    overrides = {"data_dir": str(tmp_path / "data")}
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            from tests.contract.pg_backend import fresh_schema

            overrides |= {"state.backend": "postgres", "state.postgres_dsn": stack.enter_context(fresh_schema())}
        ctx = Context(load_settings(overrides=overrides, environ={}))
        ctx.state.add_device("VM-1", "S")
        yield DexStore(ctx.state.db)
        ctx.close()


def test_previous_is_the_latest_read_taken_before_whatever_the_upload_order(store: DexStore) -> None:
    t0 = datetime(2026, 1, 5, 9, tzinfo=UTC)
    reads = {f"h{i}": (t0 + timedelta(days=i), dm.DexRead(machine=dm.Machine(serial=f"S{i}"))) for i in range(3)}
    for sha in ("h2", "h0", "h1"):  # a handheld uploads a week of files in any order
        store.record("VM-1", sha, *reads[sha])
    store.record("VM-1", "h1", *reads["h1"])  # recorded twice: kept once
    prev = store.previous("VM-1", "h2", reads["h2"][0])
    assert prev is not None and prev.sha256 == "h1" and prev.read == reads["h1"][1] and prev.taken_at == reads["h1"][0]
    assert store.previous("VM-1", "h0", reads["h0"][0]) is None
    assert store.previous("VM-2", "h2", reads["h2"][0]) is None
    DexStore(store.db)  # opening again (another replica) migrates nothing twice
