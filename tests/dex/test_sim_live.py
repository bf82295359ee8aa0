"""The live simulator uploads each machine's audit reads to POST /v1/dex, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from tests.ingest_support import running

from vendwatch.simulate import Fleet, LiveRun, Sender, SimClock
from vendwatch.simulate.audit import DexInjection
from vendwatch.simulate.faults import FaultPlan


def test_live_run_uploads_audit_reads_and_a_damaged_one_is_refused(data_dir: Path) -> None:
    with running(data_dir, **{"ingest.auth_cache_s": 0}) as h:
        clock = SimClock(speed=200_000, duration_s=4.0, max_backlog_s=2 * 86400)
        plan = FaultPlan(dex=[DexInjection.parse("bad_crc@VM-00001#0")])
        fleet = Fleet(seed=5, n_devices=3, start=clock.sim_start, faults=plan)
        for did in fleet.device_ids:
            h.add_device(did, fleet.site_of(did))

        async def go() -> LiveRun:
            sender = Sender(str(h.client.base_url), h.tokens, concurrency=3)
            run = LiveRun(fleet, clock, sender, duration_s=4.0, batch_max=200, flush_s=0.2)
            await run.run()
            await sender.aclose()
            return run

        run = asyncio.run(go())
        files = run.stats.dex_files
        reads = [msgspec.json.decode(e.data) for e in h.stored_events() if e.type == "dex_read"]
        assert files[200] == len(reads) >= 2 and files[422] == 1
        assert all(r["findings"] == ["first_read"] for r in reads[:1])
        assert [q["code"] for q in h.quarantine()] == ["dex_crc_mismatch"]
