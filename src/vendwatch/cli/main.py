"""Entry point: ``vendwatch [--config FILE] COMMAND``."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from vendwatch import __version__
from vendwatch.cli.common import Env, missing_extra
from vendwatch.config import ConfigError, load_settings
from vendwatch.files import PRIVATE_UMASK
from vendwatch.observe.logs import LogSettingsError, setup_logging

# command modules, each exposing ``commands: list[click.Command]``
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

COMMAND_MODULES = [
    "vendwatch.cli.serve",
    "vendwatch.cli.devices",
    "vendwatch.cli.schema",
    "vendwatch.cli.quarantine",
    "vendwatch.cli.simulate",
    "vendwatch.cli.demo",
    "vendwatch.cli.rules",
    "vendwatch.cli.incidents",
    "vendwatch.cli.lake",
    "vendwatch.cli.ops",
    "vendwatch.cli.stages",
    "vendwatch.cli.dex",
    "vendwatch.cli.logs",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vendwatch")
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar="VENDWATCH_CONFIG",
              help="TOML config file [env VENDWATCH_CONFIG]. Environment VENDWATCH_* overrides it.")
@click.option("--log-level", default=None,
              help="debug, info, warning, error [env VENDWATCH_LOG_LEVEL; config log_level; default info].")
@click.option("--log-format", default=None,
              help="json (one object per line) or text [env VENDWATCH_LOG_FORMAT; config log_format; default text].")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_level: str | None, log_format: str | None) -> None:
    """vendwatch: telemetry, incident detection and analytics for vending-machine fleets.

    Start with `vendwatch demo`: it provisions a simulated fleet and runs the whole
    platform on embedded defaults (SQLite, local Iceberg lake) with one command.
    """
    level = _log_level(log_level)
    os.umask(PRIVATE_UMASK)  # every file vendwatch creates (databases, lake, exports) is private
    overrides = {k: v for k, v in (("log_level", level if log_level else None), ("log_format", log_format)) if v}
    env = ctx.ensure_object(Env)
    env.config, env.overrides = config, overrides
    _setup_logging(config, overrides)


def _log_level(flag: str | None) -> str:
    # checked before anything runs: an unknown level would otherwise be ignored silently
    raw, where = (flag, "--log-level") if flag else (os.environ.get("VENDWATCH_LOG_LEVEL") or "info", "VENDWATCH_LOG_LEVEL")
    if raw.lower() not in LOG_LEVELS:
        raise click.UsageError(f"{where}: must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return raw.lower()


def _setup_logging(config: str | None, overrides: dict[str, str]) -> None:
    """Logging as the settings say (flags > env > config file > defaults).

    An invalid config file is reported by the command that reads it; logging then
    starts from the flags and environment alone."""
    try:
        s = load_settings(config, overrides)
        level, fmt = s.log_level, s.log_format
    except ConfigError:
        level, fmt = overrides.get("log_level"), overrides.get("log_format")
    try:
        setup_logging(level, fmt)
    except LogSettingsError as e:
        raise click.UsageError(str(e)) from None


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # command group not part of this build yet
            raise
        for c in mod.commands:
            cli.add_command(c)


_register()


def main() -> None:
    logging.captureWarnings(True)
    try:
        cli(obj=Env(None, {}), prog_name="vendwatch")
    except ModuleNotFoundError as e:
        message = missing_extra(e)
        if message is None:
            raise
        click.echo(f"Error: {message}", err=True)
        sys.exit(1)
