"""PostgreSQL becoming unreachable under a running collector (a network partition, made
with a proxy that the test cuts): devices get 503 with Retry-After, never a 500 and
never a 2xx for events that are not durable, and the collector recovers on its own."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class _Setup:
    proxy: TcpProxy
    collector: Role
    tokens: dict[str, str]
    operator: dict[str, str]


@contextmanager
def _collector_behind_a_proxy(tmp_path: Path, devices: Sequence[str], **more_env: str) -> Iterator[_Setup]:
    """``vendwatch serve --roles collector`` on a PostgreSQL state store reached through a
    proxy the test can cut; its output may hold no traceback."""
    with fresh_schema() as dsn:
        target = urlsplit(dsn)
        with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
            env = {"VENDWATCH_STATE__BACKEND": "postgres", "VENDWATCH_STATE__POSTGRES_DSN": _via(dsn, proxy.port),
                   "VENDWATCH_STATE__POOL_SIZE": "2", **more_env}
            tokens = {d: _token(env, d) for d in devices}
            state = open_state(load_settings(environ={**env, "VENDWATCH_DATA_DIR": str(tmp_path / "data")}))
            operator = {"Authorization": f"Bearer {state.add_operator_token('ops', 'viewer')}"}
            state.close()
            collector = Role("serve", {**env, "VENDWATCH_SERVER__ROLES": '["collector"]'}, tmp_path, http=True)
            try:
                collector.wait_healthy()
                yield _Setup(proxy, collector, tokens, operator)
            finally:
                collector.stop()
            out = collector.output()
            assert "Traceback" not in out, out[-5000:]


def _back_within(seconds: float, post: Callable[[], httpx.Response]) -> None:
    deadline = time.monotonic() + seconds
    while (r := post()).status_code != 200:
        assert time.monotonic() < deadline, f"not served again within {seconds}s: {r.text}"
        time.sleep(0.2)


def _timed(fn: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    t0 = time.monotonic()
    r = fn()
    return time.monotonic() - t0, r


def test_a_collector_cut_off_from_postgresql_answers_503_and_recovers(tmp_path: Path) -> None:
    with _collector_behind_a_proxy(tmp_path, ["vm-1", "vm-2"]) as t:
        url, known, unknown = t.collector.url, t.tokens["vm-1"], t.tokens["vm-2"]
        assert _post(url, known, "vm-1").status_code == 200
        t.proxy.cut()
        # a device whose token is not cached: the lookup cannot be made
        for _ in range(2):
            r = _post(url, unknown, "vm-2")
            assert r.status_code == 503, (r.status_code, r.text, t.collector.output()[-3000:])
            assert r.headers.get("retry-after") and r.json()["error"]["code"] == "state_unavailable"
        # the console API: the operator's token cannot be checked either
        r = httpx.get(url + "/v1/fleet/devices", headers=t.operator, timeout=60)
        assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.text)
        t.proxy.restore()
        # back within the longest pause between checks of an unreachable database (5 s)
        _back_within(8, lambda: _post(url, unknown, "vm-2"))
        assert httpx.get(url + "/v1/fleet/devices", headers=t.operator, timeout=60).status_code == 200


def test_an_unreachable_postgresql_stalls_neither_other_devices_nor_the_answers(tmp_path: Path) -> None:
    """During the outage, lookups that need PostgreSQL (a device token that is not cached,
    an operator token, the readiness probe) run off the event loop and fail fast: a device
    whose token is cached (its events go to the embedded log) is answered at once, and no
    request waits out the pool's connect timeout again and again."""
    devices = ["vm-1", "vm-2", "vm-3", "vm-4"]
    with _collector_behind_a_proxy(tmp_path, devices, VENDWATCH_INGEST__AUTH_CACHE_S="600") as t:
        url, tokens = t.collector.url, t.tokens
        assert _post(url, tokens["vm-1"], "vm-1").status_code == 200  # now cached
        t.proxy.cut()
        with ThreadPoolExecutor(8) as pool:
            slow = [pool.submit(_timed, lambda d=d: _post(url, tokens[d], d)) for d in devices[1:]]
            slow.append(pool.submit(_timed, lambda: httpx.get(url + "/healthz", timeout=60)))
            slow.append(pool.submit(_timed, lambda: httpx.get(url + "/v1/fleet/devices", headers=t.operator,
                                                              timeout=60)))
            time.sleep(0.5)  # those are waiting for PostgreSQL now
            took, r = _timed(lambda: _post(url, tokens["vm-1"], "vm-1"))
            assert r.status_code == 200, r.text
            assert took < 2.0, f"a cached device waited {took:.1f}s behind lookups in PostgreSQL"
            answers = [f.result() for f in slow]
        assert [r.status_code for _, r in answers] == [503] * 5, [(r.status_code, r.text) for _, r in answers]
        # the outage is known now: later lookups do not wait out the connect timeout again
        for d in ("vm-2", "vm-3"):
            took, r = _timed(lambda d=d: _post(url, tokens[d], d))
            assert r.status_code == 503 and r.headers.get("retry-after"), r.text
            assert took < 2.0, f"a lookup during a known outage took {took:.1f}s"
        t.proxy.restore()
        _back_within(8, lambda: _post(url, tokens["vm-2"], "vm-2"))
