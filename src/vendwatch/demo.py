"""``vendwatch demo``: the whole platform and a simulated fleet, with one command.

Provision the fleet in the data directory (idempotent), serve every role with uvicorn
in a background thread, drive the simulator from the main thread, show a live summary,
and at the end drain: wait until the pipeline stages have consumed every event the
collector acknowledged, then count what is in the log and write the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import msgspec

from vendwatch import runtime
from vendwatch.bus import EVENTS
from vendwatch.config import Settings
from vendwatch.demo_display import DemoDisplay, Snapshot, now_text, phase
from vendwatch.runtime import Context, RoleConfigError, preflight
from vendwatch.simulate import FaultPlan, Fleet, LiveRun, Sender, SimClock, showcase_plan
from vendwatch.simulate.audit import showcase_dex
from vendwatch.simulate.fleet import profiles_for
from vendwatch.simulate.provision import provision_fleet

log = logging.getLogger("vendwatch.demo")

SUMMARY_HOOKS = ("vendwatch.detect.summary:summary", "vendwatch.incidents.summary:summary", "vendwatch.lake.summary:summary")
SERVICENOW_EMULATOR = "vendwatch.emulators.servicenow:start_for_demo"


class DemoError(Exception):
    """The demo cannot start or finish; the message says why."""


@dataclass
class DemoOptions:
    devices: int = 200
    sites: int = 10
    duration_s: float | None = None
    speed: float = 60.0
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    faults: bool = True
    servicenow_emulator: bool = False
    refresh_s: float = 3.0
    drain_timeout_s: float = 120.0
    max_backlog_s: float | None = None  # None: just under the collector's ingest.late_after_s


class _IdOnly(msgspec.Struct):
    event_id: str
    device_id: str


_id_decoder = msgspec.json.Decoder(_IdOnly)


_DERIVED = ("dex:", "dex-ea:", "dexf:")  # ids of events the collector derives from DEX audit files


def count_log_events(ctx: Context, since: dict[int, int], derived: list[int] | None = None) -> tuple[int, int]:
    """Events the devices sent in the ``events`` topic after ``since`` offsets, and how many of
    them repeat an id; events derived from DEX files are counted into ``derived[0]`` instead."""
    total = dup = 0
    seen: set[tuple[str, str]] = set()
    for p, end in ctx.log.end_offsets(EVENTS).items():
        off = since.get(p, 0)
        while off < end:
            recs = ctx.log.read(EVENTS, p, off, 5000)
            if not recs:
                break
            for r in recs:
                e = _id_decoder.decode(r.value)
                if e.event_id.startswith(_DERIVED):
                    if derived is not None:
                        derived[0] += 1
                    total -= 1
                    continue
                key = (e.device_id, e.event_id)
                if key in seen:
                    dup += 1
                seen.add(key)
            total += len(recs)
            off = recs[-1].offset + 1
    return total, dup


_TOPIC_PART = re.compile(r"^(?P<topic>[a-z][a-z0-9_]*)/(?P<part>[0-9]+)$")


def _offset_of(raw: bytes) -> int | None:
    """A checkpoint value's next offset: a JSON integer, or a JSON/msgpack map with ``offset``."""
    for decode in (msgspec.json.decode, msgspec.msgpack.decode):
        try:
            v = decode(raw)
        except (msgspec.DecodeError, ValueError):
            continue
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, dict) and isinstance(v.get("offset"), int):
            return int(v["offset"])
    return None


def checkpoint_positions(ctx: Context, topic: str = EVENTS) -> dict[str, dict[int, int]]:
    """Positions on ``topic`` that stages saved in the ``checkpoints`` table, by consumer group.

    Understands ``offsets:<group>`` holding ``{"topic/partition": offset}`` and per-partition
    rows named ``<prefix>:<group>:<topic>/<partition>`` holding an offset or ``{"offset": n}``;
    anything else is ignored.
    """
    out: dict[str, dict[int, int]] = {}
    for name, data in ctx.state.db.query("SELECT name, data FROM checkpoints"):
        raw = data.encode() if isinstance(data, str) else bytes(data)
        segs = str(name).split(":")
        m = _TOPIC_PART.match(segs[-1]) if len(segs) >= 3 else None
        if m is not None:
            off = _offset_of(raw) if m["topic"] == topic else None
            if off is not None:
                out.setdefault(segs[-2], {})[int(m["part"])] = off
        elif len(segs) == 2 and segs[0] == "offsets":
            try:
                saved = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                continue
            if isinstance(saved, dict):
                for k, v in saved.items():
                    t, _, p = str(k).rpartition("/")
                    if t == topic and p.isdigit() and isinstance(v, int):
                        out.setdefault(segs[1], {})[int(p)] = v
    return out


def stage_lag(ctx: Context, roles: list[str]) -> dict[str, int]:
    """How far each stage consuming ``events`` is behind the end of the topic, by consumer group.

    A stage's position is the furthest of what it checkpointed in the state store and
    what its consumer group committed on the log (stages do one, the other or both).
    """
    end = ctx.log.end_offsets(EVENTS)
    begin = ctx.log.begin_offsets(EVENTS)
    positions = checkpoint_positions(ctx)
    for group in {*positions, *(f"vendwatch-{r}" for r in roles)}:
        try:
            committed = ctx.log.committed_offsets(group, EVENTS)
        except NotImplementedError:
            continue
        if committed:
            mine = positions.setdefault(group, {})
            for p, o in committed.items():
                mine[p] = max(mine.get(p, 0), o)
    return {g: sum(max(0, e - pos.get(p, begin.get(p, 0))) for p, e in end.items()) for g, pos in sorted(positions.items())}


def call_hooks(ctx: Context) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge the summaries the detection, incident and lake parts provide (absent ones are skipped)."""
    merged: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for ref in SUMMARY_HOOKS:
        try:
            fn = runtime.load(ref)
        except AttributeError:
            continue  # the module exists but has no summary yet
        if fn is None:
            continue
        try:
            merged.update(fn(ctx) or {})
        except Exception as e:  # a broken hook must not hide the demo's own counts
            errors[ref] = f"{type(e).__name__}: {e}"
    return merged, errors


def devices_seen_since(ctx: Context, since: float) -> int:
    row = ctx.state.db.one("SELECT count(*) FROM device_state WHERE last_seen_at >= ?", (since,))
    return int(row[0]) if row else 0


class _Server:
    """uvicorn serving ``build_app`` in a background thread on an already bound socket."""

    def __init__(self, ctx: Context, roles: list[str], host: str, port: int) -> None:
        import uvicorn

        from vendwatch.api.server import build_app
        from vendwatch.cli.serve import uvicorn_config

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            raise DemoError(f"cannot listen on {host}:{port}: {e}") from None
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn_config(build_app(ctx, roles), ctx.settings, host, self.port)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="vw-demo-http", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise DemoError("the server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise DemoError(f"the server did not start within {timeout_s:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


# Settings a live demo wants different from a production default, applied only when the
# part that owns the key is present and the user left the key at its default.
DEMO_TUNING: dict[str, Any] = {
    "lake.batch_max_wait_s": 5.0,  # lake rows grow every few seconds, and the final drain is short
    # the accelerated fleet lives up to an hour in the past: timers (offline, sustained
    # thresholds) must follow event time, or every machine would look silent for an hour
    "detect.clock": "event",
    # flap damping is wall time; at --speed 60, 5 s is five simulated minutes, so cleared
    # conditions close their incidents within the demo instead of two simulated hours later
    "incidents.flap_damping_s": 5.0,
    # the grouping delay before an offline machine's ticket is wall time too: 60 s would be
    # an hour of the accelerated fleet
    "incidents.group_wait_s": 5.0,
}


def demo_tuning(settings: Settings) -> dict[str, Any]:
    """The DEMO_TUNING entries that apply to these settings."""
    out = {}
    for dotted, value in DEMO_TUNING.items():
        *path, leaf = dotted.split(".")
        node: Any = settings
        for part in path:
            node = getattr(node, part, None)
        if isinstance(node, msgspec.Struct) and hasattr(node, leaf) and getattr(node, leaf) == getattr(type(node)(), leaf):
            out[dotted] = value
    return out


def run_demo(settings: Settings, opts: DemoOptions, reload: Callable[[dict[str, Any]], Settings],
             out: TextIO = sys.stderr) -> dict[str, Any]:
    """Run the demo and return its summary (see ``vendwatch demo --help``)."""
    stop_emulator: Callable[[], None] | None = None
    overrides = demo_tuning(settings)
    if opts.servicenow_emulator:
        start = runtime.load(SERVICENOW_EMULATOR)
        if start is None:
            raise DemoError("--servicenow-emulator needs vendwatch.emulators.servicenow, which is not part of this build")
        base_url, stop_emulator, emulator_overrides = start(settings)
        overrides.update(emulator_overrides)
        out.write(f"ServiceNow emulator at {base_url}\n")
    if overrides:
        settings = reload(overrides)
    try:
        return _run(settings, opts, out)
    finally:
        if stop_emulator is not None:
            stop_emulator()


CONSOLE_ROLE = "operator"  # all the console needs (acknowledge, silence, SQL); no token administration


def demo_console_token(ctx: Context, data_dir: Path) -> str:
    """An operator-role token for the web console, created once per data dir and kept
    (mode 0600) beside the fleet's tokens, since the store keeps only its hash."""
    path = data_dir / "fleet" / "console-token"
    if path.exists():
        token = path.read_text().strip()
        who = ctx.state.authenticate_operator(token)
        if who is not None and who.role == CONSOLE_ROLE:
            return token
    name = f"demo-console-{int(time.time())}"
    token = ctx.state.add_operator_token(name, CONSOLE_ROLE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _run(settings: Settings, opts: DemoOptions, out: TextIO) -> dict[str, Any]:
    try:
        preflight(settings, settings.server.roles)
    except RoleConfigError as e:
        raise DemoError(str(e)) from None
    ctx = Context(settings)
    data_dir = Path(settings.data_dir)
    devices, tokens, added = provision_fleet(ctx.state, data_dir, opts.devices, opts.sites, opts.seed)
    if not devices:
        raise DemoError("no active demo machines to simulate (all disabled?)")
    out.write(f"fleet: {len(devices)} machines over {len({s for _, s in devices})} sites "
              f"({added} newly registered; tokens in {data_dir / 'fleet' / 'tokens.csv'})\n")
    ctx.log.create_topic(EVENTS)
    since_offsets = ctx.log.end_offsets(EVENTS)
    started_at = time.time()
    # the scheduled ETL (lake-jobs) is replaced by one run at the end: concurrent with the
    # measured run it changes when the lake commits, so events derived from DEX files reach
    # raw.events before the final count (no duplicates) and the summary's lake figure moves
    roles = [r for r in dict.fromkeys([*settings.server.roles, "console"]) if r != "lake-jobs"]
    server = _Server(ctx, roles, opts.host, opts.port)
    server.start()
    console_token = demo_console_token(ctx, data_dir)
    display = DemoDisplay(out, server.url, console_token, CONSOLE_ROLE, str(data_dir))
    summary: dict[str, Any] = {"console_token": console_token, "console_role": CONSOLE_ROLE}
    try:
        display.__enter__()
        plan = FaultPlan.all() if opts.faults else FaultPlan.none()
        if opts.faults:
            plan.scheduled = showcase_plan(profiles_for(opts.seed, devices))
            plan.dex = showcase_dex([d for d, _ in devices])
        # start as far in the past as the run needs, but not so far that events count as late
        backlog = opts.max_backlog_s if opts.max_backlog_s is not None else max(0.0, settings.ingest.late_after_s - 60)
        clock = SimClock(opts.speed, opts.duration_s, backlog)
        fleet = Fleet(opts.seed, devices=devices, start=clock.sim_start, faults=plan, run_id=str(int(clock.sim_start)))
        stats = asyncio.run(_simulate(ctx, fleet, clock, server.url, tokens, opts, started_at, since_offsets, display))
        display.set_phase("draining: the simulator stopped; waiting for every stage to process what was acknowledged")
        lags, drained = _drain(ctx, roles, opts.drain_timeout_s)
        display.set_phase("reconciling: DEX audit reads against telemetry and cash collections")
        dex_findings = _reconcile(ctx, display)
        if dex_findings:  # published as events: the summary counts them where they landed
            lags, drained = _drain(ctx, roles, opts.drain_timeout_s)
        derived = [0]
        in_log, dup = count_log_events(ctx, since_offsets, derived)
        hooks, hook_errors = call_hooks(ctx)
        display.set_phase("building the analytics tables, so the reports have this run's data")
        etl_error = _final_etl(settings, ctx)
        display.set_phase("done" if drained else "stopped before the pipeline caught up")
        summary.update({
            **hooks,  # the demo's own counts below win over a hook's key of the same name
            **stats.as_dict(),
            "events_in_log": in_log,
            "duplicate_events_in_log": dup,
            "devices_seen": devices_seen_since(ctx, started_at),
            "devices": len(devices),
            "sites": len({s for _, s in devices}),
            "seed": opts.seed,
            "speed": opts.speed,
            "wall_seconds": round(time.time() - started_at, 1),
            "simulated_seconds": round(fleet.now - fleet.start, 1),
            "faults_injected": _count_kinds(fleet),
            "dex_injected": sorted(f"{i.kind}@{i.device_id}#{i.read}" for i in plan.dex),
            "dex_findings": dex_findings,
            "dex_events_in_log": derived[0],
            "drained": drained,
            "stage_lag": lags,
            "url": server.url,
            "data_dir": str(data_dir),
        })
        if hook_errors:
            summary["hook_errors"] = hook_errors
        if etl_error:
            summary["etl_error"] = etl_error
    finally:
        display.__exit__()
        server.stop()
        ctx.close()
    return summary


def _reconcile(ctx: Context, out: TextIO | DemoDisplay) -> dict[str, int]:
    """Compare the audit reads of the run with telemetry and cash; findings become dex_finding events."""
    from vendwatch.dex.publish import publish_findings
    from vendwatch.lake.dex_reports import Window, findings
    from vendwatch.lake.query import LakeSQL, QueryError

    try:
        found = findings(LakeSQL(ctx.settings), Window())
    except QueryError as e:
        out.write(f"reconciliation skipped: {e}\n")
        return {}
    publish_findings(ctx, found)
    for f in found:
        out.write(f"reconciliation: {f.kind} on {f.device_id}: {f.detail}\n")
    kinds: dict[str, int] = {}
    for f in found:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    return dict(sorted(kinds.items()))


def _final_etl(settings: Settings, ctx: Context) -> str | None:
    """Build the analytics tables once at the end (what `vendwatch etl run` does); the error, if any."""
    try:
        from vendwatch.lake.etl import run_etl

        run_etl(settings, state=ctx.state)
    except Exception as e:  # noqa: BLE001 - reported in the summary; the demo's counts stand
        log.warning("final ETL failed: %s", e)
        return f"{type(e).__name__}: {e}"
    return None


def _count_kinds(fleet: Fleet) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in fleet.injected:
        out[f.kind] = out.get(f.kind, 0) + 1
    return dict(sorted(out.items()))


async def _simulate(ctx: Context, fleet: Fleet, clock: SimClock, url: str, tokens: dict[str, str], opts: DemoOptions,
                    started_at: float, since: dict[int, int], display: DemoDisplay) -> Any:
    sender = Sender(url, tokens, concurrency=8, timeout_s=30.0, seed=opts.seed)
    run = LiveRun(fleet, clock, sender, duration_s=opts.duration_s, batch_max=100, flush_s=1.0, drain_timeout_s=60.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        display.set_phase("stopping: sending what is buffered (Ctrl-C again to skip waiting)")
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
    shown = {"t": time.monotonic(), "acked": 0}

    async def refresh() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.refresh_s)
            if stop.is_set():
                break
            st = run.stats
            now = time.monotonic()
            rate = (st.events_acked - shown["acked"]) / max(1e-9, now - shown["t"])
            shown.update(t=now, acked=st.events_acked)
            # offsets advanced: cheap and close; the exact count is taken at the end
            in_log = sum(e - since.get(p, 0) for p, e in ctx.log.end_offsets(EVENTS).items())
            seen = await asyncio.to_thread(devices_seen_since, ctx, started_at)
            hooks, errors = await asyncio.to_thread(call_hooks, ctx)
            sim_now = clock.now()
            display.show(Snapshot(
                elapsed_s=clock.elapsed_wall(), phase=phase(sim_now, time.time(), opts.speed),
                sim_time=now_text(sim_now), rate=rate, sent=st.events_sent, acked=st.events_acked, in_log=in_log,
                devices_seen=seen, devices=len(fleet.devices), rejected=st.events_rejected, retries=st.retries,
                hooks=hooks, hook_errors=errors))

    task = asyncio.create_task(refresh())
    try:
        stats = await run.run(stop)
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sender.aclose()
    return stats


def _drain(ctx: Context, roles: list[str], timeout_s: float) -> tuple[dict[str, int], bool]:
    """Wait until every stage has consumed the whole ``events`` topic (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    lags = stage_lag(ctx, roles)
    try:
        while any(lags.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            lags = stage_lag(ctx, roles)
    except KeyboardInterrupt:
        log.warning("drain interrupted; counts may be incomplete")
    return lags, not any(lags.values())
