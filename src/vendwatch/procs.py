"""The pipeline roles of ``vendwatch serve`` in child processes of their own.

One Python interpreter runs Python on one core at a time, and every stage of the pipeline
is CPU bound (decode, validate, fold, detect, encode Parquet). So ``serve`` starts each
role that has no HTTP endpoint (device-state, detector, router, orchestrator, lake
writer, lake jobs, MQTT bridge, SQL server) as a child process
(``server.role_processes``, on by default) and keeps the HTTP roles (collector, console)
in its own process. The roles share nothing in memory; they meet in the log and the
state store, exactly as the replicas of a scale-out deployment do.

The parent supervises its children: a child that exits is started again with backoff
(0.5 s doubling to 30 s, reset after a minute of uptime), and ``/healthz`` reports a role
that keeps crashing. Every second a child writes a report line to a pipe: the health of
its stage, its last error lines and its metric samples. ``/healthz``,
``/metrics`` and the console's Pipeline page merge those with the parent's own, so one
``serve`` still answers for the whole pipeline. A child dies with its parent: on Linux
the kernel kills it when the parent dies (``PR_SET_PDEATHSIG``), elsewhere it notices
within a second; a SIGKILLed ``serve`` leaves no role running behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from vendwatch.config import Settings
from vendwatch.observe.metrics import ROLE_RESTARTS

log = logging.getLogger("vendwatch.procs")

REPORT_EVERY_S = 1.0  # a report costs the child ~1-3 ms (its metric samples, encoded)
SILENT_AFTER_S = 30.0  # a running child that has not reported for this long is reported as hung
STOP_TIMEOUT_S = 10.0
EXIT_UNAVAILABLE = 78  # EX_CONFIG: the role's module is not part of this build; not restarted
_SUMMED = ("counter", "histogram", "summary")  # merged by sum; gauges and the rest by max
_PER_PROCESS = ("process_", "python_")  # the client's process collectors: kept per role


class _Report(msgspec.Struct, omit_defaults=True):
    health: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    # [(family, type, help, [(sample, labels, value)])], kept undecoded until a reader asks
    # (/metrics, the Pipeline page): the server process does not parse what nobody reads
    metrics: msgspec.Raw = msgspec.Raw(b"[]")


_Families = list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]
_decode_families = msgspec.json.Decoder(_Families).decode


_decode_report = msgspec.json.Decoder(_Report).decode
_encode = msgspec.json.Encoder().encode

_Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclasses.dataclass
class _Child:
    role: str
    proc: subprocess.Popen[bytes] | None = None
    fd: int = -1  # its report pipe
    buf: bytearray = dataclasses.field(default_factory=bytearray)
    err_fd: int = -1  # its standard error: log lines, passed on through this process's stderr
    err_buf: bytearray = dataclasses.field(default_factory=bytearray)
    started_at: float = 0.0  # monotonic
    reported_at: float = 0.0  # monotonic; 0: not yet since the start
    health: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    metrics: msgspec.Raw = dataclasses.field(default_factory=lambda: msgspec.Raw(b"[]"))
    _decoded: tuple[msgspec.Raw, _Families] | None = None
    # counter, histogram and summary values of earlier incarnations, so a restart does not
    # make the merged counters go back
    carried: dict[str, tuple[str, str, dict[_Key, float]]] = dataclasses.field(default_factory=dict)
    crashes_in_row: int = 0
    last_crash_at: float = 0.0  # wall clock
    last_exit: str = ""
    backoff_s: float = 0.5
    next_start: float = 0.0  # monotonic


def child_roles(roles: Iterable[str]) -> list[str]:
    """The roles of ``roles`` that run in child processes: every role without HTTP endpoints."""
    from vendwatch.runtime import ROLES

    return [r for r in roles if ROLES.get(r) is not None]


class RoleProcesses:
    """Starts, supervises and reports for one child process per role."""

    def __init__(self, settings: Settings, roles: list[str]) -> None:
        self.settings = settings
        self.children = {r: _Child(r) for r in roles}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sel = selectors.DefaultSelector()
        self._payload = _encode(settings)

    # -- lifecycle (the monitor thread spawns every child: PR_SET_PDEATHSIG ties a child to
    # the thread that forked it, so that thread lives as long as the children may)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._monitor, name="vw-role-processes", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s + 5)

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {r: c.proc.pid for r, c in self.children.items() if c.proc is not None}

    def _monitor(self) -> None:
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for c in self.children.values():
                    if c.proc is None and now >= c.next_start:
                        self._spawn(c)
                for key, _ in self._sel.select(timeout=0.5):
                    c, kind = key.data
                    if kind == "report":
                        self._read(c)
                    else:
                        self._read_log(c)
                for c in self.children.values():
                    if c.proc is not None and c.proc.poll() is not None:
                        self._drain_and_reap(c)
        except Exception:
            log.exception("the role process monitor failed; stopping the role processes")
        finally:
            self._terminate_all()

    def _spawn(self, c: _Child) -> None:
        r, w = os.pipe()
        try:
            # stderr through this process: `vendwatch demo`'s live view prints log lines above itself
            proc = subprocess.Popen(
                [sys.executable, "-m", "vendwatch.procs", c.role, str(os.getpid()), str(w)],
                stdin=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(w,), close_fds=True)
        except OSError as e:
            os.close(r)
            os.close(w)
            self._crashed(c, f"could not start: {e}")
            return
        os.close(w)
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._payload)  # the settings, never in argv or the environment
            proc.stdin.close()
        except OSError:
            pass  # the child died at once; the exit is handled like any other
        assert proc.stderr is not None
        err = proc.stderr.fileno()
        os.set_blocking(r, False)
        os.set_blocking(err, False)
        with self._lock:
            c.proc, c.fd, c.err_fd, c.started_at, c.reported_at = proc, r, err, time.monotonic(), 0.0
            c.buf.clear()
            c.err_buf.clear()
        self._sel.register(r, selectors.EVENT_READ, (c, "report"))
        self._sel.register(err, selectors.EVENT_READ, (c, "log"))
        log.info("role %s started in process %d", c.role, proc.pid)

    def _read(self, c: _Child, last: bool = False) -> bool:
        """Take in the child's reports; True when something was read (``last``: as ``_read_log``)."""
        chunk = _read_pipe(c.fd, 1 << 20, last)
        if chunk is None:
            return False
        if chunk:
            self._take(c, chunk)
        else:
            self._close_pipe(c)
        return bool(chunk)

    def _close_pipe(self, c: _Child) -> None:
        if c.fd >= 0:
            self._sel.unregister(c.fd)
            os.close(c.fd)
            c.fd = -1

    def _read_log(self, c: _Child, last: bool = False) -> bool:
        """Pass the child's complete log lines on; True when something was read. ``last``: the
        child is gone, so an empty pipe is the end (a process it started may still hold its
        stderr open, and the pipe's end would never come)."""
        chunk = _read_pipe(c.err_fd, 1 << 16, last)
        if chunk is None:
            return False
        if chunk:
            c.err_buf += chunk
            end = c.err_buf.rfind(b"\n") + 1
            lines, c.err_buf[:] = bytes(c.err_buf[:end]), c.err_buf[end:]
        else:
            lines, c.err_buf[:] = bytes(c.err_buf), b""  # a last line without its newline
            self._sel.unregister(c.err_fd)
            assert c.proc is not None and c.proc.stderr is not None
            c.proc.stderr.close()
            c.err_fd = -1
        if lines:
            try:
                sys.stderr.write(lines.decode("utf-8", "replace"))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # no stderr to write to (closed): the lines are dropped, the role goes on
        return bool(chunk)

    def _take(self, c: _Child, chunk: bytes) -> None:
        c.buf += chunk
        *lines, rest = bytes(c.buf).split(b"\n")
        c.buf[:] = rest
        for line in lines:
            try:
                rep = _decode_report(line)
            except msgspec.DecodeError:
                log.warning("role %s sent an unreadable report line; ignored", c.role)
                continue
            with self._lock:
                c.health, c.errors, c.metrics, c.reported_at = rep.health, rep.errors, rep.metrics, time.monotonic()

    def _drain_and_reap(self, c: _Child) -> None:
        # the process is gone: what is left in its pipes (its last report and lines) is read now
        while c.err_fd >= 0 and self._read_log(c, last=True):
            pass
        while c.fd >= 0 and self._read(c, last=True):
            pass
        assert c.proc is not None
        code = c.proc.returncode
        with self._lock:
            self._carry(c)
            c.proc, c.health, c.metrics, c.reported_at = None, [], msgspec.Raw(b"[]"), 0.0
        if self._stop.is_set():
            return
        if code == EXIT_UNAVAILABLE:
            c.next_start = float("inf")
            log.warning("role %s is not available in this build (a missing extra?); not started", c.role)
            return
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        self._crashed(c, why)

    def _crashed(self, c: _Child, why: str) -> None:
        now = time.monotonic()
        uptime = now - c.started_at if c.started_at else 0.0
        if uptime > 60:
            c.crashes_in_row, c.backoff_s = 0, 0.5
        c.crashes_in_row += 1
        c.last_crash_at, c.last_exit = time.time(), why
        c.next_start = now + c.backoff_s
        log.error("role %s stopped (%s); starting it again in %.1fs", c.role, why, c.backoff_s)
        ROLE_RESTARTS.labels(c.role).inc()
        c.backoff_s = min(c.backoff_s * 2, 30.0)

    def _carry(self, c: _Child) -> None:
        for fam, typ, doc, samples in _families(c):
            if typ not in _SUMMED:
                continue
            _, _, acc = c.carried.setdefault(fam, (typ, doc, {}))
            for key, value in _keyed(c.role, fam, samples):
                acc[key] = acc.get(key, 0.0) + value

    def _terminate_all(self) -> None:
        live = [c for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for c in live:
            assert c.proc is not None
            with contextlib.suppress(OSError):
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in live:
            assert c.proc is not None
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("role %s did not stop within %.0fs; killed", c.role, STOP_TIMEOUT_S)
                c.proc.kill()
                c.proc.wait()
        for c in self.children.values():
            while c.err_fd >= 0 and self._read_log(c, last=True):
                pass
            self._close_pipe(c)
        self._sel.close()

    # -- what the parent reports for its children

    def problems(self, max_failures: int, max_lag_s: float, crash_window_s: float = 120.0) -> dict[str, str]:
        """Roles whose process keeps crashing or has gone silent, and the problems their stages report."""
        from vendwatch.stage import StageHealth

        out: dict[str, str] = {}
        now = time.monotonic()
        with self._lock:
            for c in self.children.values():
                if c.crashes_in_row >= max_failures and time.time() - c.last_crash_at < crash_window_s:
                    out[c.role] = f"its process stopped {c.crashes_in_row} times in a row ({c.last_exit})"
                elif c.proc is not None and now - max(c.reported_at, c.started_at) > SILENT_AFTER_S:
                    out[c.role] = f"its process {c.proc.pid} has not reported for {now - max(c.reported_at, c.started_at):.0f}s"
                for h in c.health:
                    try:
                        p = StageHealth(**h).problem(max_failures, max_lag_s, crash_window_s)
                    except TypeError:
                        continue
                    if p is not None:
                        out.setdefault(h.get("stage", c.role), p)
        return out

    def recent_errors(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for c in self.children.values() for e in c.errors]

    def collect(self, own: Iterable[Metric]) -> Iterator[Metric]:
        """``own`` families merged with the children's: counters, histograms and summaries
        summed over the processes (earlier incarnations included), gauges by their maximum;
        the client's ``process_*``/``python_*`` families keep one series per role."""
        merged: dict[str, tuple[str, str, dict[_Key, float]]] = {}
        for fam in own:
            acc = merged.setdefault(fam.name, (fam.type, fam.documentation, {}))[2]
            for s in fam.samples:
                _merge(acc, (s.name, tuple(sorted(s.labels.items()))), s.value, fam.type)
        with self._lock:
            sources = [(c.role, _families(c), c.carried) for c in self.children.values()]
        for role, metrics, carried in sources:
            for fam, typ, doc, samples in metrics:
                acc = merged.setdefault(fam, (typ, doc, {}))[2]
                for key, value in _keyed(role, fam, samples):
                    _merge(acc, key, value, typ)
            for fam, (typ, doc, values) in carried.items():
                acc = merged.setdefault(fam, (typ, doc, {}))[2]
                for key, value in values.items():
                    acc[key] = acc.get(key, 0.0) + value
        for name, (typ, doc, acc) in merged.items():
            m = Metric(name, doc, typ)
            for (sname, labels), value in acc.items():
                m.add_sample(sname, dict(labels), value)
            yield m


def _read_pipe(fd: int, size: int, last: bool) -> bytes | None:
    """What the pipe holds; b"" at its end (or, with ``last``, when it is empty); None when
    it is empty for now."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return b"" if last else None
    except OSError:
        return b""


def _families(c: _Child) -> _Families:
    """The child's last reported samples, decoded once per report."""
    raw = c.metrics  # a new object with every report
    if c._decoded is None or c._decoded[0] is not raw:
        try:
            c._decoded = (raw, _decode_families(raw))
        except msgspec.ValidationError:
            log.warning("role %s reported unreadable metric samples; ignored", c.role)
            c._decoded = (raw, [])
    return c._decoded[1]


def _keyed(role: str, fam: str, samples: list[tuple[str, dict[str, str], float]]) -> Iterator[tuple[_Key, float]]:
    per_role = fam.startswith(_PER_PROCESS)
    for sname, labels, value in samples:
        if per_role:
            labels = {**labels, "role": role}
        yield (sname, tuple(sorted(labels.items()))), value


def _merge(acc: dict[_Key, float], key: _Key, value: float, typ: str) -> None:
    old = acc.get(key)
    if old is None:
        acc[key] = value
    elif typ in _SUMMED and not key[0].endswith("_created"):
        acc[key] = old + value
    elif key[0].endswith("_created"):
        acc[key] = min(old, value)
    else:
        acc[key] = max(old, value)


def metric_families(ctx: Any) -> Iterable[Metric]:
    """This process's metric families, merged with its role processes' when it has any."""
    procs = ctx.extras.get("role_processes") if ctx is not None else None
    own = REGISTRY.collect()
    return procs.collect(own) if procs is not None else own


class MergedRegistry:
    """What ``generate_latest`` needs: an object whose ``collect()`` yields the families."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        return metric_families(self.ctx)


# -- the child side


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when the parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass  # the report loop's parent check still applies
    if os.getppid() != parent:
        os._exit(0)


def _samples() -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
    out: _Families = []
    for fam in REGISTRY.collect():
        samples = [(s.name, s.labels, s.value) for s in fam.samples
                   if not (fam.type in _SUMMED and s.name.endswith("_created"))]
        if samples:
            out.append((fam.name, fam.type, fam.documentation, samples))
    return out


def _child_main(role: str, parent: int, report_fd: int) -> int:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the children
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    from vendwatch.files import PRIVATE_UMASK
    from vendwatch.observe.logs import recent_errors, set_identity, setup_logging
    from vendwatch.runtime import Context, Supervisor, build_components
    from vendwatch.stage import StageHealth

    settings = msgspec.json.decode(sys.stdin.buffer.read(), type=Settings)
    os.umask(PRIVATE_UMASK)
    setup_logging(settings.log_level, settings.log_format)
    set_identity(role=role)
    out = os.fdopen(report_fd, "wb")
    ctx = Context(settings)
    try:
        components = build_components(ctx, [role])
    except Exception as e:  # a configuration the role cannot start with: one line, no traceback
        log.error("role %s cannot start: %s: %s", role, type(e).__name__, e)
        log.debug("role %s start failure", role, exc_info=True)
        return 1
    if not components:
        return EXIT_UNAVAILABLE
    sup = Supervisor(ctx, components)
    sup.start()
    try:
        while True:
            if os.getppid() != parent:
                break
            health: dict[str, StageHealth] = dict(ctx.extras.get("stage_health", {}))
            rep = _Report(health=[dataclasses.asdict(h) for h in health.values()], errors=recent_errors()[-20:],
                          metrics=msgspec.Raw(_encode(_samples())))
            try:
                out.write(_encode(rep) + b"\n")
                out.flush()
            except OSError:
                break  # the parent is gone
            if stop.wait(REPORT_EVERY_S):
                break
    finally:
        sup.stop()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
