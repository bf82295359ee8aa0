"""``vendwatch simulate``: drive simulated machines against a running collector."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vendwatch.cli.common import Env, data_dir_option, pass_env

if TYPE_CHECKING:
    from vendwatch.simulate import FaultPlan

FAULT_HELP = (
    "Random faults: 'all', 'none' or kind[=RATE],... with RATE in occurrences per machine per "
    "simulated day (see docs/simulator.md for the kinds)."
)


def fault_plan(faults: str, scale: float, fault_at: tuple[str, ...]) -> FaultPlan:
    """Build a FaultPlan from the CLI options, as a click usage error when they are wrong."""
    from vendwatch.simulate import FaultPlan, FaultSpecError, ScheduledFault

    try:
        plan = FaultPlan.parse(faults, scale)
        plan.scheduled = [ScheduledFault.parse(s) for s in fault_at]
    except FaultSpecError as e:
        raise click.BadParameter(str(e)) from None
    return plan


@click.command()
@click.option("--url", required=True, help="Collector base URL, e.g. http://127.0.0.1:8080.")
@click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False),
              help="CSV of device_id,token (as `devices import --tokens-out` writes). Without it the fleet "
                   "is registered in --data-dir (which the collector must share) and its tokens kept there.")
@data_dir_option
@click.option("--devices", "n_devices", type=click.IntRange(1, 100_000), default=None,
              help="Machines to simulate [default: all in --tokens, else 20].")
@click.option("--sites", "n_sites", type=click.IntRange(1, 10_000), default=None,
              help="Sites when registering a fleet [default: one per 20 machines].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same fleet and event stream.")
@click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Simulated seconds per wall-clock second.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Wall-clock seconds to run [default: until Ctrl-C].")
@click.option("--heartbeat-interval", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Simulated seconds between heartbeats.")
@click.option("--telemetry-interval", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Simulated seconds between telemetry samples.")
@click.option("--faults", default="all", show_default=True, help=FAULT_HELP)
@click.option("--fault-rate-scale", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Multiply every random fault rate.")
@click.option("--fault-at", multiple=True, metavar="KIND@DEVICE+START[/DURATION]",
              help="Inject a fault at a simulated offset, e.g. cooling_failure@VM-00003+5m/2h (repeatable).")
@click.option("--showcase", is_flag=True, help="Also inject one fault of every kind early in the run.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Most events per request.")
@click.option("--flush-interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Wall seconds an event may wait in a machine's buffer.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Concurrent requests (keep-alive connections).")
@click.option("--max-backlog", type=click.FloatRange(min=0), default=3000, show_default=True,
              help="With --speed > 1 the simulated clock starts at most this many seconds in the past.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30, show_default=True,
              help="At the end, seconds to keep retrying unsent batches.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Also write the final counts to this file.")
@click.option("--acked-ids", type=click.Path(dir_okay=False),
              help="Append device_id,event_id of every acknowledged event to this file (for checking the log).")
@pass_env
def simulate(env: Env, url: str, tokens_file: str | None, n_devices: int | None, n_sites: int | None, seed: int,
             speed: float, duration: float | None, heartbeat_interval: float, telemetry_interval: float, faults: str,
             fault_rate_scale: float, fault_at: tuple[str, ...], showcase: bool, batch_size: int,
             flush_interval: float, concurrency: int, max_backlog: float, drain_timeout: float,
             summary_json: str | None, acked_ids: str | None) -> None:
    """Drive N simulated vending machines against a running collector over HTTP.

    Each machine posts with its own token: heartbeats, telemetry with compressor
    cycles, sales on a daily curve, stock running down to refill visits, connectivity,
    firmware updates, logs, and the injected faults. Prints progress to stderr and the
    final counts as JSON to stdout.
    """
    from vendwatch.simulate import Fleet, LiveRun, Sender, SimClock, showcase_plan
    from vendwatch.simulate.fleet import profiles_for
    from vendwatch.simulate.provision import TokensFileError, provision_fleet, read_tokens

    plan = fault_plan(faults, fault_rate_scale, fault_at)
    if tokens_file:
        try:
            tokens = read_tokens(tokens_file)
        except TokensFileError as e:
            raise click.ClickException(str(e)) from None
        ids = list(tokens)
        if n_devices is not None:
            if n_devices > len(ids):
                raise click.ClickException(f"--devices {n_devices} but {tokens_file} has only {len(ids)} devices")
            ids = ids[:n_devices]
        devices: list[tuple[str, str | None]] = [(d, None) for d in ids]
    else:
        ctx = env.context()
        devices, tokens, added = provision_fleet(ctx.state, Path(ctx.settings.data_dir), n_devices or 20, n_sites, seed,
                                                 int(heartbeat_interval))
        ctx.close()
        click.echo(f"fleet: {len(devices)} machines ({added} newly registered) in {env.settings().data_dir}", err=True)
    if showcase:
        plan.scheduled.extend(showcase_plan(profiles_for(seed, devices)))
    clock = SimClock(speed, duration, max_backlog)
    try:
        fleet = Fleet(seed, devices=devices, start=clock.sim_start, faults=plan, run_id=str(int(clock.sim_start)),
                      heartbeat_s=heartbeat_interval, telemetry_s=telemetry_interval)
    except ValueError as e:
        raise click.ClickException(str(e)) from None

    async def main() -> dict[str, object]:
        acked_file = open(acked_ids, "a", buffering=1) if acked_ids else None  # noqa: SIM115 - closed below

        def write_acked(device_id: str, ids: list[str]) -> None:
            assert acked_file is not None
            acked_file.write("".join(f"{device_id},{i}\n" for i in ids))

        sender = Sender(url, tokens, concurrency=concurrency, seed=seed, on_acked=write_acked if acked_file else None)
        run = LiveRun(fleet, clock, sender, duration_s=duration, batch_max=batch_size, flush_s=flush_interval,
                      drain_timeout_s=drain_timeout)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        last = [time.monotonic(), 0]

        def progress() -> None:
            now = time.monotonic()
            if now - last[0] >= 5:
                st = run.stats
                rate = (st.events_acked - last[1]) / (now - last[0])
                last[0], last[1] = now, st.events_acked
                click.echo(f"[{clock.elapsed_wall():6.0f}s] sent={st.events_sent} acked={st.events_acked} "
                           f"rejected={st.events_rejected} retries={st.retries} {rate:.0f} ev/s", err=True)

        try:
            stats = await run.run(stop, on_tick=progress)
        finally:
            await sender.aclose()
            if acked_file is not None:
                acked_file.close()
        out = stats.as_dict()
        out.update(devices=len(devices), seed=seed, speed=speed, wall_seconds=round(clock.elapsed_wall(), 2),
                   simulated_seconds=round(fleet.now - fleet.start, 1), faults_injected=len(fleet.injected))
        return out

    result = asyncio.run(main())
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if summary_json:
        Path(summary_json).write_text(text + "\n")
    unsent = int(result["events_unsent"])  # type: ignore[call-overload]
    if unsent:
        # one count, the same as events_unsent: the buffered events and the batches whose retries ran out
        click.echo(f"gave up on {unsent} unsent events (retries ran out or the drain timeout passed)", err=True)
    kinds: dict[str, int] = result["network_error_kinds"]  # type: ignore[assignment]
    if result["events_acked"] == 0 and kinds:
        why = ", ".join(f"{k} ({n}x)" for k, n in kinds.items())
        raise click.ClickException(f"could not deliver any event to {url}: {why}")


commands = [simulate]
