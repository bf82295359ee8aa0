"""PostgreSQL becoming unreachable under a running collector (a network partition, made
with a proxy that the test cuts): devices get 503 with Retry-After, never a 500 and
never a 2xx for events that are not durable, and the collector recovers on its own."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from tests.conftest import vendwatch_cmd
from tests.contract.pg_backend import fresh_schema
from tests.scale.procs import Role
from tests.tcp_proxy import TcpProxy

from vendwatch.config import load_settings
from vendwatch.state import open_state

pytestmark = pytest.mark.timeout(240)


def _via(dsn: str, port: int) -> str:
    u = urlsplit(dsn)
    netloc = (u.netloc.rsplit("@", 1)[0] + "@" if "@" in u.netloc else "") + f"127.0.0.1:{port}"
    return urlunsplit(u._replace(netloc=netloc))


def _token(env: dict[str, str], device: str) -> str:
    r = subprocess.run(vendwatch_cmd("devices", "add", device, "--site", "s1", "--json"), env={**os.environ, **env},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["token"])


def _post(url: str, token: str, device: str) -> httpx.Response:
    body = {"events": [{"event_id": uuid.uuid4().hex, "device_id": device, "type": "heartbeat",
                        "occurred_at": datetime.now(UTC).isoformat()}]}
    return httpx.post(url + "/v1/events", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_a_collector_cut_off_from_postgresql_answers_503_and_recovers(tmp_path: Path) -> None:
    with fresh_schema() as dsn:
        target = urlsplit(dsn)
        with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            env = {"VENDWATCH_STATE__BACKEND": "postgres", "VENDWATCH_STATE__POSTGRES_DSN": _via(dsn, proxy.port),
                   "VENDWATCH_STATE__POOL_SIZE": "2"}
            known, unknown = _token(env, "vm-1"), _token(env, "vm-2")
            state = open_state(load_settings(environ={**env, "VENDWATCH_DATA_DIR": str(tmp_path / "data")}))
            operator = {"Authorization": f"Bearer {state.add_operator_token('ops', 'viewer')}"}
            state.close()
            collector = Role("serve", {**env, "VENDWATCH_SERVER__ROLES": '["collector"]'}, tmp_path, http=True)
            try:
                collector.wait_healthy()
                assert _post(collector.url, known, "vm-1").status_code == 200
                proxy.cut()
                # a device whose token is not cached: the lookup cannot be made
                for _ in range(2):
                    r = _post(collector.url, unknown, "vm-2")
                    assert r.status_code == 503, (r.status_code, r.text, collector.output()[-3000:])
                    assert r.headers.get("retry-after") and r.json()["error"]["code"] == "state_unavailable"
                # the console API: the operator's token cannot be checked either
                r = httpx.get(collector.url + "/v1/fleet/devices", headers=operator, timeout=60)
                assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.text)
                proxy.restore()
                r = _post(collector.url, unknown, "vm-2")
                assert r.status_code == 200, (r.text, collector.output()[-3000:])
                assert httpx.get(collector.url + "/v1/fleet/devices", headers=operator, timeout=60).status_code == 200
            finally:
                collector.stop()
            out = collector.output()
            assert "Traceback" not in out, out[-5000:]
