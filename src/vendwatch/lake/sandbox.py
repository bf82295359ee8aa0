"""Analysts' queries run in worker processes with a hard memory cap.

DuckDB's ``memory_limit`` covers DuckDB's buffers, not everything a query can make
the process allocate (Arrow conversion, Python objects, allocator slack); a query
over a big lake could grow the server by gigabytes and get the collector killed
with it. So ``POST /v1/sql`` and the reports run in a small pool of spawned
worker processes, each under ``RLIMIT_AS`` = ``lake.sql_worker_memory_mb``. A
query that exhausts it fails inside its worker (a 413), or kills the worker, which
is replaced; a query past its timeout has its worker killed. The server itself
only ever holds the bounded answer (``lake.sql_max_result_bytes``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import pyarrow as pa

from vendwatch.config import Settings
from vendwatch.lake.query import (
    QueryError,
    QueryRefused,
    QueryResult,
    QueryTimeout,
    QueryTooLarge,
    QueryUnavailable,
)

log = logging.getLogger("vendwatch.lake.sandbox")
_ERRORS: dict[str, type[QueryError]] = {c.__name__: c for c in (QueryError, QueryRefused, QueryTimeout, QueryTooLarge)}
_START_TIMEOUT_S = 120.0  # a worker imports DuckDB, pyarrow and pyiceberg once


def _fewer_reservations() -> None:
    """The cap counts address space, not memory used: keep what threads reserve small.
    glibc gives each new thread a 64 MB malloc arena (up to 8 per core) and pyiceberg plans
    scans on a pool of cpu + 4 threads; a dozen threads reserved ~1 GB of a 2 GB cap and
    left no room to start the query's timer thread. Two arenas, two planning threads."""
    import ctypes
    import ctypes.util
    import os

    os.environ["PYICEBERG_MAX_WORKERS"] = "2"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX (malloc.h); a no-op where the C library is not glibc
    except (OSError, AttributeError):
        pass


def _worker_main(conn: Connection, settings_doc: dict[str, Any], memory_mb: int) -> None:
    """The worker's loop: one request at a time, answers Arrow IPC bytes or an error."""
    import resource

    _fewer_reservations()
    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from vendwatch.lake.dex_reports import run_dex_report
    from vendwatch.lake.query import LakeSQL
    from vendwatch.lake.reports import run_report

    settings = msgspec.convert(settings_doc, Settings)
    import duckdb

    duckdb.connect(":memory:").close()  # DuckDB's allocator is part of the baseline
    baseline_kb = _vm_size_kb()
    conn.send(("ready",))
    while True:
        try:
            op, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "sql":
                res = LakeSQL(settings).run(kwargs.pop("sql"), **kwargs)
            elif op == "dex_report":
                res = run_dex_report(settings, kwargs.pop("name"), **kwargs)
            else:
                res = run_report(settings, kwargs.pop("name"), **kwargs)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, res.table.schema) as w:
                w.write_table(res.table)
            conn.send(("ok", sink.getvalue().to_pybytes(), res.truncated, res.snapshots, _worn_out(memory_mb, baseline_kb)))
        except QueryTooLarge as e:
            conn.send(("error", "QueryTooLarge", str(e), True))
            return  # a process that ran out of memory may be left unable to start threads: retire
        except QueryRefused as e:
            conn.send(("error", type(e).__name__, str(e), _worn_out(memory_mb, baseline_kb)))
        except QueryError as e:
            if not healthy():
                # the error may be the process's, not the query's (an earlier query that ran
                # out of memory can leave no room for a thread): the pool retries elsewhere
                conn.send(("error", "WorkerFault", str(e), True))
                return
            conn.send(("error", type(e).__name__, str(e), _worn_out(memory_mb, baseline_kb)))
        except MemoryError:
            conn.send(("error", "QueryTooLarge", "the query needs more memory than a query may use", True))
            return
        except Exception as e:  # the message reaches the analyst; the traceback stays here
            log.exception("query failed in the worker")
            # often the process, not the query (e.g. no address space left for a thread
            # after an earlier query ran out of memory): the pool retries once elsewhere
            conn.send(("error", "WorkerFault", f"the query failed: {type(e).__name__}", True))
            return


def healthy(min_room_mb: int = 128) -> bool:
    """Can this process still do what any query needs: have address space left under its
    cap for thread stacks and buffers, and run DuckDB on its threads? Checked after a query
    fails, so a broken worker is not kept. (A Python thread started with no room left hangs
    instead of failing, so the room is measured, not tried.)"""
    import resource

    import duckdb

    cap, _ = resource.getrlimit(resource.RLIMIT_AS)
    if cap != resource.RLIM_INFINITY and cap - _vm_size_kb() * 1024 < min_room_mb * 1024 * 1024:
        return False
    try:
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET threads = 2")
            con.execute("SELECT sum(range) FROM range(1000000)").fetchall()
        finally:
            con.close()
        return True
    except Exception:  # any failure means "do not keep this worker"
        return False


def _vm_size_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _worn_out(memory_mb: int, baseline_kb: int) -> bool:
    """True when the allocators kept over half the query headroom (the cap above the worker's
    size at start): the next query could fail for want of address space."""
    if memory_mb <= 0:
        return False
    size_kb = _vm_size_kb()
    return size_kb == 0 or size_kb - baseline_kb > (memory_mb * 1024 - baseline_kb) / 2


class _Worker:
    def __init__(self, settings: Settings) -> None:
        ctx = mp.get_context("spawn")  # never fork a threaded server
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, name="vw-sql-worker", daemon=True,
                                args=(child, msgspec.to_builtins(settings), settings.lake.sql_worker_memory_mb))
        self.proc.start()
        child.close()
        try:
            if not self.conn.poll(_START_TIMEOUT_S):
                raise EOFError
            self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise QueryUnavailable("no query worker could be started; try again shortly") from None

    def call(self, op: str, kwargs: dict[str, Any], timeout_s: float) -> tuple[Any, ...]:
        self.conn.send((op, kwargs))
        # the worker interrupts a query at timeout_s itself; past a grace, it is killed
        if not self.conn.poll(timeout_s + 5.0):
            self.kill()
            raise QueryTimeout(f"query interrupted after the {timeout_s:g}s timeout")
        try:
            return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            self.kill()
            raise QueryTooLarge("the query needed more memory than a query may use and was stopped;"
                                " aggregate, filter or select fewer columns") from None

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class QueryPool:
    """At most ``size`` worker processes, started on first use and replaced when they die."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings = settings
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def sql(self, sql: str, *, limit: int | None, timeout_s: float, as_of: Any) -> QueryResult:
        return self._run("sql", {"sql": sql, "limit": limit, "timeout_s": timeout_s, "as_of": as_of}, timeout_s)

    def report(self, name: str, **kwargs: Any) -> QueryResult:
        return self._run("report", {"name": name, **kwargs}, self.settings.lake.sql_timeout_s)

    def dex_report(self, name: str, **kwargs: Any) -> QueryResult:
        """One of the DEX reports (``lake.dex_reports``): several queries, so several timeouts' worth."""
        return self._run("dex_report", {"name": name, **kwargs}, 4 * self.settings.lake.sql_timeout_s)

    def _run(self, op: str, kwargs: dict[str, Any], timeout_s: float) -> QueryResult:
        answer = self._once(op, kwargs, timeout_s)
        if answer[0] == "error" and answer[1] == "WorkerFault":
            answer = self._once(op, kwargs, timeout_s)  # the faulty worker retired: a fresh one
        if answer[0] == "error":
            raise _ERRORS.get(answer[1], QueryError)(answer[2])
        _, ipc, truncated, snapshots, _ = answer
        return QueryResult(pa.ipc.open_stream(ipc).read_all(), truncated, snapshots)

    def _once(self, op: str, kwargs: dict[str, Any], timeout_s: float) -> tuple[Any, ...]:
        with self._slots:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                w = _Worker(self.settings)
                with self._lock:
                    self._all.append(w)
            try:
                answer = w.call(op, kwargs, timeout_s)
                if answer[-1] is True:
                    w.kill()  # the worker retires after running out of memory or failing oddly
            finally:
                if w.alive():
                    self._idle.put(w)
                else:
                    with self._lock:
                        self._all.remove(w)
        return answer

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.kill()
