"""Authentication cannot be turned into memory exhaustion, and failures are visible (issue 10, items 4 and 10)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from tests.ingest_support import event, running, settings
from tests.security.served import serve

from vendwatch.api.authfail import AuthFailures
from vendwatch.ingest.app import _AuthCache
from vendwatch.runtime import Context


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def ctx(data_dir: Path):  # type: ignore[no-untyped-def]
    c = Context(settings(data_dir))
    yield c
    c.close()


def test_failed_device_authentications_are_not_cached(ctx: Context) -> None:
    cache = _AuthCache(ctx, ttl_s=5.0)
    for _ in range(300):
        assert cache.get("vwd_" + secrets.token_urlsafe(6000)) is None
    assert len(cache) == 0 and cache.bytes == 0


def test_successes_are_cached_by_digest_within_a_byte_budget(ctx: Context) -> None:
    cache = _AuthCache(ctx, ttl_s=60.0)
    cache.max_bytes = 5 * (cache._ENTRY_OVERHEAD + 40)
    tokens = [ctx.state.add_device(f"dev-{i:03d}", "SITE-1") for i in range(20)]
    for t in tokens:
        assert cache.get(t) is not None
    assert cache.bytes <= cache.max_bytes and 0 < len(cache) < 20
    assert all(isinstance(k, bytes) and len(k) == 16 for k in cache._c)  # a digest, never the token
    assert all(t not in repr(cache._c) for t in tokens)
    assert cache.get(tokens[-1]) is not None  # the newest stays


def test_megabyte_bearer_tokens_are_refused_431_and_do_not_grow_the_server(data_dir: Path) -> None:
    with serve(data_dir) as srv:
        for _ in range(20):  # warm-up: first requests allocate once
            _raw_post(srv.port, "vwd_" + secrets.token_urlsafe(8))
        before = srv.rss_kb()
        statuses = [_raw_post(srv.port, "vwd_" + secrets.token_urlsafe(750_000)) for _ in range(300)]
        grown_mb = (srv.rss_kb() - before) / 1024
    assert set(statuses) <= {431, 0}, statuses  # 0: the server closed before we finished sending
    assert statuses.count(431) > 0
    assert grown_mb < 40, f"server grew {grown_mb:.0f} MB"


def _raw_post(port: int, token: str) -> int:
    req = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
           "Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
           '{"events":[]}').encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(req)
        try:
            head = s.recv(64)
        except ConnectionResetError:
            return 0
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0


def test_failed_authentications_are_counted_logged_and_limited(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    before_dev = _sample("vendwatch_api_auth_failures_total", kind="device")
    before_op = _sample("vendwatch_api_auth_failures_total", kind="operator")
    caplog.set_level(logging.WARNING, "vendwatch.auth")
    with running(data_dir, **{"server.auth_failures_per_min": 6, "server.auth_failures_burst": 5}) as h:
        h.add_device("D1")
        codes = [h.post("D1", [event("D1")], token="vwd_wrong").status_code for _ in range(8)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
        r = h.post("D1", [event("D1")], token="vwd_wrong")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        ops = [h.client.get("/v1/devices", headers={"authorization": "Bearer vwo_wrong"}).status_code for _ in range(7)]
        assert ops[:5] == [401] * 5 and set(ops[5:]) == {429}
    assert _sample("vendwatch_api_auth_failures_total", kind="device") - before_dev == 5
    assert _sample("vendwatch_api_auth_failures_total", kind="operator") - before_op == 5
    lines = [r for r in caplog.records if r.name == "vendwatch.auth"]
    assert 1 <= len(lines) <= 4  # sampled: not one line per failure
    assert "device authentication failed from 127.0.0.1" in lines[0].getMessage()


def test_a_client_over_its_failure_budget_recovers_with_time() -> None:
    now = [0.0]
    f = AuthFailures("device", per_min=60, burst=2, clock=lambda: now[0])
    assert f.retry_after("1.2.3.4") == 0
    f.failed("1.2.3.4", "x")
    f.failed("1.2.3.4", "x")
    assert f.retry_after("1.2.3.4") == 1 and f.retry_after("5.6.7.8") == 0
    now[0] += 1.0
    assert f.retry_after("1.2.3.4") == 0
