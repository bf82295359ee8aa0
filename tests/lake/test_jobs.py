"""The lake-jobs role keeps reports fresh without anyone running `vendwatch etl run`,
records every run, and says when the next one is due."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from tests.lake.conftest import drain, make_settings
from tests.lake.factory import T0, heartbeat, publish, sale

from vendwatch.config import load_settings
from vendwatch.lake.jobs import LakeJobs, read_status
from vendwatch.lake.reports import run_report
from vendwatch.runtime import Context


def _wait(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def _running(jobs: LakeJobs):  # type: ignore[no-untyped-def]
    stop = threading.Event()
    t = threading.Thread(target=jobs.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def test_serve_runs_the_scheduler_by_default() -> None:
    s = load_settings(environ={})
    assert "lake-jobs" in s.server.roles
    assert s.lake.etl_interval_s > 0 and s.lake.maintain_interval_s > 0


def test_reports_fill_on_their_own(tmp_path) -> None:
    ctx = Context(make_settings(tmp_path / "data", **{"lake.etl_interval_s": 0.5, "lake.maintain_interval_s": 0}))
    try:
        publish(ctx.log, [heartbeat(T0, device="a1"), sale(T0 + timedelta(minutes=1), device="a1", txid="1")])
        drain(ctx)
        assert run_report(ctx.settings, "revenue").rows() == []  # nothing built yet
        stop, t = _running(LakeJobs(ctx))
        try:
            _wait(lambda: run_report(ctx.settings, "revenue").rows() != [])
            _wait(lambda: read_status(ctx)["etl"].runs >= 2)  # and again at the next interval
        finally:
            stop.set()
            t.join(30)
        st = read_status(ctx)
        etl = st["etl"]
        assert etl.last_error is None and etl.last_ok_at is not None
        assert etl.next_at is not None and abs(etl.next_at - (etl.last_started_at + 0.5)) < 1e-6
        assert st["maintain"].next_at is None and st["maintain"].runs == 0  # 0 turns it off
    finally:
        ctx.close()


def test_a_failing_job_is_recorded_and_retried(tmp_path) -> None:
    ctx = Context(make_settings(tmp_path / "data", **{"lake.etl_interval_s": 0.2, "lake.maintain_interval_s": 0}))
    calls = []

    def broken() -> None:
        calls.append(1)
        raise OSError("disk full")

    try:
        stop, t = _running(LakeJobs(ctx, runners={"etl": broken, "maintain": lambda: None}))
        try:
            _wait(lambda: len(calls) >= 2)
        finally:
            stop.set()
            t.join(30)
        etl = read_status(ctx)["etl"]
        assert etl.failures >= 2 and etl.last_error == "OSError: disk full" and etl.last_ok_at is None
    finally:
        ctx.close()


def test_the_role_pays_the_etl_imports_at_start_not_in_its_first_run(tmp_path) -> None:
    """The first scheduled ETL comes when the platform is busy: DuckDB, pyiceberg and the
    catalog are loaded when the role starts instead."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, threading
        from vendwatch.config import load_settings
        from vendwatch.lake.jobs import LakeJobs
        from vendwatch.runtime import Context
        ctx = Context(load_settings(overrides={{"data_dir": {str(tmp_path / "data")!r}, "lake.etl_interval_s": 3600}},
                                    environ={{}}))
        before = "vendwatch.lake.etl" in sys.modules or "pyiceberg.catalog" in sys.modules
        stop = threading.Event()
        jobs = LakeJobs(ctx)
        t = threading.Thread(target=jobs.run, args=(stop,))
        t.start()
        stop.set()
        t.join(60)
        from vendwatch.lake import catalog
        print(before, "vendwatch.lake.etl" in sys.modules, len(catalog._CATALOGS))
        ctx.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True", "1"], out.stderr[-2000:]
