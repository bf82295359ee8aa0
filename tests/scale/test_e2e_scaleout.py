"""The whole pipeline, multi-process, on Kafka + PostgreSQL, against the embedded mode.

2 collectors, 2 detectors, 1 orchestrator and 1 lake writer run as `vendwatch run`
processes; the simulator's fleet (fixed seed, scheduled faults) is driven through both
collectors; one detector is SIGKILLed mid-run. The incidents and the lake's raw zone
must equal those of `vendwatch serve` (embedded: SQLite, one process) fed the same
events.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import vendwatch_cmd
from tests.contract.kafka_backend import kafka_address
from tests.contract.pg_backend import fresh_schema
from tests.scale.procs import Role

from vendwatch.config import Settings, load_settings
from vendwatch.runtime import Context

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SEED = 11
DEVICES = 12
SIM_SECONDS = 45 * 60


WINDOW_S = 30.0  # event time sent per round: below the detector's allowed lateness (60 s)


def _fleet_events(start: datetime) -> tuple[list[dict[str, list[bytes]]], int]:
    """The simulator's deterministic event stream, cut into rounds of ``WINDOW_S`` of event
    time (per device, in order), as a live fleet would deliver it."""
    from vendwatch.simulate.faults import FaultPlan
    from vendwatch.simulate.fleet import Fleet, encode_event, layout, profiles_for, showcase_plan

    devices = layout(DEVICES)
    plan = FaultPlan(scheduled=showcase_plan(profiles_for(SEED, devices), start_offset_s=120, spacing_s=60))
    fleet = Fleet(SEED, DEVICES, start=start, faults=plan)
    rounds: list[dict[str, list[bytes]]] = []
    n = 0
    t = start.timestamp()
    while t < start.timestamp() + SIM_SECONDS:
        t += WINDOW_S
        per_device: dict[str, list[bytes]] = defaultdict(list)
        for e in fleet.advance(t):
            per_device[e.device_id].append(encode_event(e))
            n += 1
        rounds.append(per_device)
    return rounds, n


def _register(settings: Settings, data_dir: Path) -> dict[str, str]:
    from vendwatch.simulate.provision import provision_fleet
    from vendwatch.state import open_state

    store = open_state(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    _, tokens, _ = provision_fleet(store, data_dir, DEVICES, None, SEED)
    store.close()
    return tokens


async def _send(rounds: list[dict[str, list[bytes]]], tokens: dict[str, str], urls: list[str],
                halfway: Callable[[], None] | None = None) -> int:
    """Post round after round; within a round every device posts its events (in order)
    through collector ``index % len(urls)``; a device retries on 429/503."""
    accepted = 0
    order = sorted(tokens)

    async def post(client: httpx.AsyncClient, url: str, did: str, evs: list[bytes]) -> None:
        nonlocal accepted
        for k in range(0, len(evs), 100):
            body = b'{"events":[' + b",".join(evs[k : k + 100]) + b"]}"
            for _ in range(100):
                r = await client.post(url + "/v1/events", content=body, headers={
                    "Authorization": f"Bearer {tokens[did]}", "Content-Type": "application/json"})
                if r.status_code == 200:
                    accepted += r.json()["accepted"]
                    assert r.json()["rejected"] == [], r.text
                    break
                assert r.status_code in (429, 503), r.text
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

    async with httpx.AsyncClient(timeout=60) as client:
        for i, per_device in enumerate(rounds):
            if halfway is not None and i == len(rounds) // 2:
                halfway()
            await asyncio.gather(*(post(client, urls[order.index(d) % len(urls)], d, evs)
                                   for d, evs in per_device.items()))
    return accepted


def _incidents(ctx: Context) -> list[tuple[Any, ...]]:
    rows = ctx.state.db.query(
        "SELECT dedupe_key, rule_id, scope, device_id, site_id, status FROM incidents ORDER BY dedupe_key, opened_at")
    return [tuple(r) for r in rows]


def _lake_event_ids(ctx: Context) -> list[str]:
    from vendwatch.lake.catalog import open_catalog

    cat = open_catalog(ctx.settings)
    try:
        table = cat.load_table("raw.events")
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return sorted(table.scan(selected_fields=("event_id",)).to_arrow().column("event_id").to_pylist())


def _caught_up(ctx: Context) -> bool:
    """The detectors' and the orchestrator's checkpoints reach the end of their topics."""
    from vendwatch.bus import EVENTS, SIGNALS
    from vendwatch.demo import checkpoint_positions

    for topic, group in ((EVENTS, "vendwatch-detector"), (SIGNALS, "vendwatch-orchestrator")):
        ends, begins = ctx.log.end_offsets(topic), ctx.log.begin_offsets(topic)
        saved = checkpoint_positions(ctx, topic).get(group, {})
        if any(saved.get(p, -1) < end for p, end in ends.items() if end > begins.get(p, 0)):
            return False
    return True


def _settle(read: Callable[[], Any], done: Callable[[Any], bool], quiet_s: float = 6.0, timeout_s: float = 240) -> Any:
    """Poll until ``done`` holds and the value stopped changing for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        cur = read()
        if cur != last:
            last, since = cur, time.monotonic()
        elif done(cur) and time.monotonic() - since >= quiet_s:
            return cur
        time.sleep(0.5)
    return last


COMMON = {
    "VENDWATCH_DETECT__CLOCK": "event",  # timers follow event time: the same in both runs
    "VENDWATCH_INCIDENTS__FLAP_DAMPING_S": "0",
    "VENDWATCH_LAKE__BATCH_MAX_WAIT_S": "1",
    "VENDWATCH_INGEST__RATE_LIMIT_EVENTS_PER_S": "100000",
    "VENDWATCH_INGEST__RATE_LIMIT_BURST": "100000",
}


def _require_parts() -> None:
    """Every part of the pipeline must be in the build: a missing one fails, never skips."""
    for mod in ("vendwatch.detect.role", "vendwatch.incidents.role", "vendwatch.lake.role", "vendwatch.simulate.fleet"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # its package is missing
            found = False
        if not found:
            pytest.fail(f"{mod} is missing from this build")


def test_scaleout_pipeline_equals_embedded(tmp_path: Path) -> None:
    _require_parts()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=SIM_SECONDS + 300)
    rounds, n_events = _fleet_events(start)

    # -- embedded: one `vendwatch serve` on SQLite -----------------------------------
    emb_dir = tmp_path / "embedded"
    emb_env = {**COMMON, "VENDWATCH_BUS__PARTITIONS": "4"}
    emb_settings = load_settings(None, {"data_dir": str(emb_dir / "data")}, environ=emb_env)
    emb_tokens = _register(emb_settings, emb_dir / "data")
    emb_dir.mkdir(exist_ok=True)
    serve = Role("serve", emb_env, emb_dir, "serve", http=True)
    try:
        serve.wait_healthy()
        assert asyncio.run(_send(rounds, emb_tokens, [serve.url])) == n_events
        emb_ctx = Context(emb_settings)
        emb_lake = _settle(lambda: _lake_event_ids(emb_ctx), lambda v: len(v) == n_events)
        emb_incidents = _settle(lambda: _incidents(emb_ctx), lambda v: bool(v) and _caught_up(emb_ctx))
        emb_ctx.close()
    finally:
        serve.stop()
    assert len(emb_lake) == n_events
    assert emb_incidents, "the scheduled faults must open incidents"

    # -- scale-out: Kafka + PostgreSQL, one role per process ---------------------------
    with fresh_schema() as dsn:
        prefix = f"vwe2e.{uuid.uuid4().hex[:8]}."
        so_env = {
            **COMMON,
            "VENDWATCH_BUS__BACKEND": "kafka",
            "VENDWATCH_BUS__KAFKA__BOOTSTRAP_SERVERS": kafka_address(),
            "VENDWATCH_BUS__KAFKA__TOPIC_PREFIX": prefix,
            "VENDWATCH_BUS__KAFKA__PARTITIONS": "4",
            "VENDWATCH_BUS__KAFKA__SESSION_TIMEOUT_MS": "6000",
            "VENDWATCH_STATE__BACKEND": "postgres",
            "VENDWATCH_STATE__POSTGRES_DSN": dsn,
            "VENDWATCH_LAKE__CATALOG__URI": "postgresql+psycopg://" + dsn.split("://", 1)[1],
            "VENDWATCH_LAKE__CATALOG__NAME": "e2e_" + uuid.uuid4().hex[:8],
            "VENDWATCH_LAKE__CATALOG__WAREHOUSE": f"file://{tmp_path / 'warehouse'}",
        }
        so_dir = tmp_path / "scaleout"
        so_dir.mkdir()
        so_settings = load_settings(None, {"data_dir": str(so_dir / "data")}, environ=so_env)
        r = subprocess.run(vendwatch_cmd("bus", "init"), env={**os.environ, **so_env}, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        so_tokens = _register(so_settings, so_dir / "data")
        roles = [
            Role("collector", so_env, so_dir, "collector-1", http=True),
            Role("collector", so_env, so_dir, "collector-2", http=True),
            Role("detector", so_env, so_dir, "detector-1"),
            Role("detector", so_env, so_dir, "detector-2"),
            Role("orchestrator", so_env, so_dir, "orchestrator"),
            Role("lake-writer", so_env, so_dir, "lake-writer"),
        ]
        ctx = Context(so_settings)
        try:
            for c in roles[:2]:
                c.wait_healthy()
            # both detectors own partitions before events flow (a cooperative rebalance
            # gives the second member its share in a second round)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not all("assigned events/" in d.output() for d in roles[2:4]):
                time.sleep(0.2)

            owned_before_kill: list[str] = []

            def kill_detector() -> None:
                # kill once every partition has a checkpoint past its start: the crash then
                # loses work since the last checkpoint, which the survivor must redo exactly
                from vendwatch.bus import EVENTS
                from vendwatch.demo import checkpoint_positions

                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    saved = checkpoint_positions(ctx, EVENTS).get("vendwatch-detector", {})
                    if len(saved) == 4 and all(v > 0 for v in saved.values()):
                        break
                    time.sleep(0.2)
                owned_before_kill.append(roles[2].output())
                roles[2].kill()  # SIGKILL mid-run: its partitions move to detector-2

            sent = asyncio.run(_send(rounds, so_tokens, [roles[0].url, roles[1].url], halfway=kill_detector))
            assert sent == n_events
            so_lake = _settle(lambda: _lake_event_ids(ctx), lambda v: len(v) == n_events)
            so_incidents = _settle(lambda: _incidents(ctx), lambda v: len(v) >= len(emb_incidents) and _caught_up(ctx))
        finally:
            ctx.close()
            for role in roles:
                role.stop()
        logs = {r.name: r.output()[-1500:] for r in roles}
        (tmp_path / "incidents.txt").write_text("embedded\n" + "\n".join(map(str, emb_incidents))
                                                + "\nscale-out\n" + "\n".join(map(str, so_incidents)))
        assert "assigned events/" in owned_before_kill[0], "the killed detector must have owned partitions"
        assert so_lake == emb_lake, "the lake's raw zone holds exactly the accepted events, once"
        assert so_incidents == emb_incidents, logs
