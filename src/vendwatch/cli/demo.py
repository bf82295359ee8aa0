"""``vendwatch demo``: provision a simulated fleet and run the whole platform on it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from vendwatch.cli.common import Env, data_dir_option, pass_env


@click.command()
@data_dir_option
@click.option("--devices", type=click.IntRange(1, 100_000), default=200, show_default=True, help="Simulated machines.")
@click.option("--sites", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Sites they are spread over.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Wall-clock seconds to run, then stop cleanly [default: until Ctrl-C].")
@click.option("--speed", type=click.FloatRange(min=0.01), default=60.0, show_default=True,
              help="Simulated seconds per wall-clock second (60: one simulated hour per minute, until the "
                   "simulated clock reaches the present; see --max-backlog).")
@click.option("--seed", type=int, default=0, show_default=True, help="Fleet layout and behaviour seed.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the server listens on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port (0: any free port).")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the final counts here as JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON instead of the short summary.")
@click.option("--no-faults", is_flag=True, help="Simulate a healthy fleet (no injected faults).")
@click.option("--servicenow-emulator", is_flag=True,
              help="Start the bundled ServiceNow emulator and send incidents to it.")
@click.option("--max-backlog", type=click.FloatRange(min=0), default=None,
              help="The simulated clock starts at most this many seconds in the past, and runs at --speed until "
                   "it reaches the present [default: ingest.late_after_s - 60, so no event is marked late].")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=120, show_default=True,
              help="At the end, seconds to wait for the pipeline to process every acknowledged event.")
@pass_env
def demo(env: Env, devices: int, sites: int, duration: float | None, speed: float, seed: int, host: str, port: int,
         summary_json: str | None, as_json: bool, no_faults: bool, servicenow_emulator: bool, max_backlog: float | None,
         drain_timeout: float) -> None:
    """Run vendwatch end to end on a simulated fleet, with one command.

    Registers the demo machines in the data directory (reused on later runs; their
    tokens are kept in DATA_DIR/fleet/tokens.csv, mode 0600), serves every role,
    drives the simulator with fault injection (one fault of every kind early on, plus
    random ones), and shows a live view (console URL, sign-in token, phase, counts).
    On --duration or Ctrl-C the simulator stops, the pipeline drains, and a short
    summary with next steps is printed; the full counts (events_sent, events_acked,
    events_in_log, devices_seen, and what the detection, incident and lake parts
    report) go to --summary-json or, with --json, to standard output.
    """
    from vendwatch.demo import DemoError, DemoOptions, run_demo

    settings = env.settings()
    if sites > devices:
        sites = devices

    def reload(overrides: dict[str, Any]) -> Any:
        return env.settings(**overrides)

    opts = DemoOptions(devices=devices, sites=sites, duration_s=duration, speed=speed, seed=seed, host=host, port=port,
                       faults=not no_faults, servicenow_emulator=servicenow_emulator, drain_timeout_s=drain_timeout,
                       max_backlog_s=max_backlog)
    try:
        summary = run_demo(settings, opts, reload)
    except DemoError as e:
        raise click.ClickException(str(e)) from None
    text = json.dumps(summary, indent=2, default=str)
    if summary_json:
        path = Path(summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    if as_json:
        click.echo(text)
    else:
        from vendwatch.demo import CONSOLE_ROLE
        from vendwatch.demo_display import end_summary

        click.echo("\n".join(end_summary(summary, summary.get("console_token", ""), CONSOLE_ROLE)))
    if summary["events_acked"] != summary["events_in_log"] or summary["duplicate_events_in_log"]:
        raise click.ClickException(
            f"{summary['events_acked']} events acknowledged but {summary['events_in_log']} in the log "
            f"({summary['duplicate_events_in_log']} repeated ids): the no-loss/no-duplicate guarantee was broken")


commands = [demo]
