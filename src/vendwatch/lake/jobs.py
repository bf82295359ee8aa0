"""The ``lake-jobs`` role: keeps the analytics tables fresh, the lake maintained and the DEX
audit reads reconciled, on a schedule.

Without it the reports stay empty until someone runs ``vendwatch etl run``. ``vendwatch
serve`` runs it by default (the demo runs the ETL once at its end instead); in a scale-out deployment run one
replica (``vendwatch run lake-jobs``): the ETL and maintenance are safe to re-run, but two
schedulers would only do the same work twice.

Intervals come from ``lake.etl_interval_s``, ``lake.maintain_interval_s`` and
``lake.dex_reconcile_interval_s`` (0 turns a job off). Every run is recorded in the state store (checkpoint ``lake-jobs``) so the
console, ``/v1/lake/jobs`` and ``vendwatch etl status`` can say when the tables were
last refreshed, whether it worked, and when the next run is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from vendwatch.config import Settings
from vendwatch.runtime import Context

log = logging.getLogger("vendwatch.lake.jobs")

CHECKPOINT = "lake-jobs"
JOBS = ("etl", "maintain", "reconcile")
START_DELAY_S = 30.0


class JobStatus(msgspec.Struct, kw_only=True):
    """What one scheduled job last did (epoch seconds)."""

    interval_s: float
    last_started_at: float | None = None
    last_finished_at: float | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    last_seconds: float | None = None
    runs: int = 0
    failures: int = 0
    next_at: float | None = None  # None: the job is turned off


def next_due(status: JobStatus, started: float) -> float | None:
    """When a job is next due: one interval after its last start (the first run right after ``started``)."""
    if status.interval_s <= 0:
        return None
    if status.last_started_at is None:
        return started
    return status.last_started_at + status.interval_s


def intervals(settings: Settings) -> dict[str, float]:
    """Each job's interval in seconds (0: off)."""
    cfg = settings.lake
    return {"etl": cfg.etl_interval_s, "maintain": cfg.maintain_interval_s, "reconcile": cfg.dex_reconcile_interval_s}


def read_status(ctx: Context) -> dict[str, JobStatus]:
    """The recorded status of every job (empty when the scheduler never ran here)."""
    raw = ctx.state.load_checkpoint(CHECKPOINT)
    if not raw:
        return {}
    return msgspec.json.decode(raw, type=dict[str, JobStatus])


class LakeJobs:
    """Runs the ETL and lake maintenance at their intervals; a failed run is recorded and retried next time."""

    name = "lake-jobs"

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.time,
                 runners: dict[str, Callable[[], Any]] | None = None) -> None:
        self.ctx = ctx
        self.clock = clock
        self.warm = runners is None  # the real jobs: pay their imports at start (see warm_up)
        self.runners = runners or {"etl": self._etl, "maintain": self._maintain, "reconcile": self._reconcile}
        self.intervals = {k: v for k, v in intervals(ctx.settings).items() if k in self.runners}
        cfg = ctx.settings.lake
        # the first ETL and reconciliation wait a little so they do not compete with the
        # server's start; maintenance first waits one interval: a fresh start has nothing to compact
        self.first_delay = {"etl": min(START_DELAY_S, cfg.etl_interval_s), "maintain": cfg.maintain_interval_s,
                            "reconcile": min(START_DELAY_S, cfg.dex_reconcile_interval_s)}

    def _etl(self) -> Any:
        from vendwatch.lake.etl import run_etl

        return run_etl(self.ctx.settings, state=self.ctx.state).to_dict()

    def _maintain(self) -> Any:
        from vendwatch.lake.maintain import maintain

        return maintain(self.ctx.settings)

    def _reconcile(self) -> Any:
        from vendwatch.dex.publish import publish_findings
        from vendwatch.lake.dex_reports import Window, findings
        from vendwatch.lake.query import LakeSQL

        today = datetime.fromtimestamp(self.clock(), UTC).date()
        since = today - timedelta(days=max(1, self.ctx.settings.lake.dex_reconcile_days) - 1)
        found = findings(LakeSQL(self.ctx.settings), Window(since, None, None))
        new, dup = publish_findings(self.ctx, found) if found else (0, 0)
        if new:
            log.warning("DEX reconciliation: %d new finding(s)", new, extra={"findings": new})
        return {"since": since.isoformat(), "findings": len(found), "new": new, "already_there": dup}

    def warm_up(self) -> None:
        """Import the ETL (DuckDB, pyiceberg, pyarrow: ~0.8 CPU-s) and open the catalog now, at the
        role's start, instead of inside the first scheduled run, which comes when the platform is busy."""
        if not self.warm or all(v <= 0 for v in self.intervals.values()):
            return
        cpu = time.process_time()
        try:
            from vendwatch.lake import etl, maintain  # noqa: F401
            from vendwatch.lake.catalog import open_catalog

            open_catalog(self.ctx.settings)
        except Exception as e:  # noqa: BLE001 - the scheduled run reports it properly
            log.warning("lake jobs could not prepare: %s", e)
            return
        log.info("lake jobs ready", extra={"cpu_s": round(time.process_time() - cpu, 3)})

    def run(self, stop: threading.Event) -> None:
        self.warm_up()
        started = self.clock()
        status = {k: JobStatus(interval_s=v) for k, v in self.intervals.items()}
        for name, st in read_status(self.ctx).items():  # keep the history across restarts
            if name in status:
                status[name] = msgspec.structs.replace(st, interval_s=status[name].interval_s)
        for name, st in status.items():
            due = next_due(st, started + self.first_delay[name])
            st.next_at = None if due is None else max(due, started + self.first_delay[name])
        self._save(status)
        while not stop.is_set():
            now = self.clock()
            for name, st in status.items():
                if st.next_at is not None and now >= st.next_at and not stop.is_set():
                    self._run_one(name, st)
                    self._save(status)
            pending = [st.next_at for st in status.values() if st.next_at is not None]
            wait = min(pending) - self.clock() if pending else 60.0
            stop.wait(min(max(wait, 0.05), 5.0))

    def _run_one(self, name: str, st: JobStatus) -> None:
        st.last_started_at = t0 = self.clock()
        st.runs += 1
        try:
            result = self.runners[name]()
        except Exception as e:  # noqa: BLE001 - recorded, shown, retried at the next interval
            st.failures += 1
            st.last_error = f"{type(e).__name__}: {e}"[:500]
            log.warning("scheduled %s failed: %s", name, st.last_error, extra={"job": name})
        else:
            st.last_ok_at = self.clock()
            st.last_error = None
            log.info("scheduled %s done", name, extra={"job": name, "result": str(result)[:500]})
        st.last_finished_at = self.clock()
        st.last_seconds = round(st.last_finished_at - t0, 3)
        st.next_at = t0 + st.interval_s

    def _save(self, status: dict[str, JobStatus]) -> None:
        self.ctx.state.save_checkpoint(CHECKPOINT, msgspec.json.encode(status))


def build(ctx: Context) -> LakeJobs:
    """The lake-jobs role (``vendwatch run lake-jobs``; part of ``vendwatch serve`` and the demo)."""
    return LakeJobs(ctx)
