"""`vendwatch run ROLE` processes on Kafka + PostgreSQL: two collectors and the
device-state role cooperate through the log and the shared state store."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.conftest import vendwatch_cmd
from tests.scale.procs import Role, scaleout_env_fresh

pytestmark = pytest.mark.timeout(180)


def test_collectors_and_device_state_as_processes(tmp_path: Path) -> None:
    with scaleout_env_fresh() as env:
        full_env = {**os.environ, **env}
        r = subprocess.run(vendwatch_cmd("devices", "add", "vm-1", "--site", "s1", "--json"), env=full_env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        token = json.loads(r.stdout)["token"]
        roles = [Role("collector", env, tmp_path, "collector-1", http=True),
                 Role("collector", env, tmp_path, "collector-2", http=True),
                 Role("device-state", env, tmp_path)]
        try:
            for c in roles[:2]:
                c.wait_healthy()
            ids = [uuid.uuid4().hex for _ in range(10)]
            for i, eid in enumerate(ids):
                body = {"events": [{"event_id": eid, "device_id": "vm-1", "type": "heartbeat",
                                    "occurred_at": datetime.now(UTC).isoformat(), "seq": i}]}
                # alternate collectors, and retry each batch through the other one
                for c in (roles[i % 2], roles[(i + 1) % 2]):
                    resp = httpx.post(c.url + "/v1/events", json=body, headers={"Authorization": f"Bearer {token}"})
                    assert resp.status_code == 200, resp.text
            # the shared dedupe index saw every retry through the other collector
            from vendwatch.state.postgres import PostgresDatabase

            db = PostgresDatabase(env["VENDWATCH_STATE__POSTGRES_DSN"], pool_size=1)
            deadline = time.monotonic() + 60
            row = None
            while time.monotonic() < deadline:
                row = db.one("SELECT events, last_seq FROM device_state WHERE device_id=?", ("vm-1",))
                if row and row[0] >= 10:
                    break
                time.sleep(0.1)
            assert row is not None and tuple(row) == (10, 9), roles[2].output()[-2000:]
            db.close()
        finally:
            for role in roles:
                role.stop()
