"""Schemathesis fuzzes every operation of the published OpenAPI against a live
``vendwatch serve``, with a device token and an admin token: no request may get a 5xx.

Bounded in time for CI (``--max-time`` per run, two runs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from tests.ingest_support import settings
from tests.security.served import serve

from vendwatch.runtime import Context

MAX_TIME_S = os.environ.get("VENDWATCH_FUZZ_MAX_TIME_S", "30")


def _st() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert exe, "schemathesis (dev extra) is not installed"
    return [exe]


def _fuzz(url: str, token: str, *selection: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    # one worker: Python 3.11.7 (this machine's) has a thread-unsafe AST recursion counter
    # (CPython gh-106905) that hypothesis trips when two threads describe lambdas at once
    cmd = [*_st(), "run", f"{url}/openapi.json", "--url", url, "-H", f"Authorization: Bearer {token}",
           "--checks", "not_a_server_error", "--max-time", MAX_TIME_S, "--max-examples", "60",
           "--request-timeout", "60", "--seed", "10", "--workers", "1", "--no-color", *selection]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=float(MAX_TIME_S) + 120, cwd=tmp,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})


def test_no_request_gets_a_5xx(data_dir: Path, tmp_path: Path) -> None:
    ctx = Context(settings(data_dir))
    device_token = ctx.state.add_device("VM-FUZZ", "SITE-1")
    admin_token = ctx.state.add_operator_token("fuzz-admin", "admin")
    ctx.close()
    env = {"VENDWATCH_SERVER__AUTH_FAILURES_PER_MIN": "0", "VENDWATCH_LAKE__SQL_TIMEOUT_S": "5",
           "VENDWATCH_INGEST__RATE_LIMIT_EVENTS_PER_S": "100000", "VENDWATCH_INGEST__RATE_LIMIT_BURST": "100000"}
    with serve(data_dir, roles="collector,console", **env) as srv:
        # start the SQL worker before the clock runs (it imports DuckDB and pyiceberg once)
        warm = httpx.post(srv.url + "/v1/sql", json={"sql": "SELECT 1"}, timeout=180,
                          headers={"authorization": f"Bearer {admin_token}"})
        assert warm.status_code == 200, warm.text
        runs = [_fuzz(srv.url, device_token, "--include-path-regex", "^/v1/(events|dex)$", tmp=tmp_path),
                _fuzz(srv.url, admin_token, "--exclude-path-regex", "^/v1/(events|dex)$", tmp=tmp_path)]
        alive = srv.proc.poll() is None
        log = srv.log()
    for r in runs:
        print(r.stdout[-700:])  # the run's summary (pytest -s shows it)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:] + "\nserver log:\n" + log
    assert alive
    assert "Traceback" not in log, log
