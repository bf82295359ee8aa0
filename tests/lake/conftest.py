"""Fixtures for lake tests: a settings object on a temp data dir and a writer drain helper."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vendwatch.bus import EVENTS, REJECTED
from vendwatch.config import Settings, load_settings
from vendwatch.lake.role import LakeWriter
from vendwatch.runtime import Context


def make_settings(data_dir: Path, **over: object) -> Settings:
    base: dict[str, object] = {"data_dir": str(data_dir), "lake.batch_max_wait_s": 0.2, "bus.partitions": 2}
    base.update(over)
    return load_settings(overrides=base, environ={})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def ctx(settings: Settings) -> Iterator[Context]:
    c = Context(settings)
    c.log.create_topic(EVENTS)
    c.log.create_topic(REJECTED)
    yield c
    c.close()


def drain(ctx: Context, timeout_s: float = 60.0) -> LakeWriter:
    """Run the lake writer until it has read everything on the log, then stop it gracefully (flushes)."""
    w = LakeWriter(ctx)
    stop = threading.Event()
    th = threading.Thread(target=w.run, args=(stop,), daemon=True)
    th.start()
    ends = {t: ctx.log.end_offsets(t) for t in (EVENTS, REJECTED)}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if w.sinks and all(
            w.sinks[t].pos.get((t, p), 0) >= end or end <= ctx.log.begin_offsets(t).get(p, 0)
            for t, parts in ends.items() for p, end in parts.items()
        ):
            break
        time.sleep(0.02)
    else:
        stop.set()
        raise AssertionError("lake writer did not catch up")
    stop.set()
    th.join(30)
    assert not th.is_alive()
    return w
