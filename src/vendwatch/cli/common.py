"""Shared CLI plumbing: global options, settings, output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
import msgspec

from vendwatch.config import ConfigError, Settings, load_settings
from vendwatch.runtime import Context


class Env:
    def __init__(self, config: str | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    def settings(self, **more: Any) -> Settings:
        if self._settings is None or more:
            try:
                self._settings = load_settings(self.config, {**self.overrides, **more})
            except ConfigError as e:
                raise click.ClickException(str(e)) from None
        return self._settings

    def context(self, **more: Any) -> Context:
        return Context(self.settings(**more))


pass_env = click.make_pass_decorator(Env)


def data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` on every command (also VENDWATCH_DATA_DIR or the config file)."""

    @click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                  help="Where embedded state lives [env VENDWATCH_DATA_DIR; default ./vendwatch-data].")
    @functools.wraps(fn)
    def wrapper(*args: Any, data_dir: str | None = None, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        env = ctx.find_object(Env)
        if env is not None and data_dir:
            env.overrides["data_dir"] = data_dir
            env._settings = None
        return fn(*args, **kwargs)

    return wrapper


def echo_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(obj)).decode() + "\n")


def table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """Plain aligned table for terminals."""
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) if rows else len(c) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(_cell(r.get(c)).ljust(widths[c]) for c in cols))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)
