"""Shared CLI plumbing: global options, settings, output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
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
                settings = load_settings(self.config, {**self.overrides, **more})
            except ConfigError as e:
                raise click.ClickException(str(e)) from None
            _check_data_dir(Path(settings.data_dir))
            self._settings = settings
        return self._settings

    def context(self, **more: Any) -> Context:
        return Context(self.settings(**more))


pass_env = click.make_pass_decorator(Env)

# optional modules -> the extra that installs them (pyproject.toml [project.optional-dependencies])
_EXTRA_OF = {"psycopg": "scale", "psycopg_pool": "scale", "confluent_kafka": "scale", "paho": "scale"}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The message for an optional dependency that is not installed, or None for any other import error."""
    root = (error.name or "").partition(".")[0]
    extra = _EXTRA_OF.get(root)
    if extra is None:
        return None
    return (f"this needs the Python package {root!r}, which is not installed; "
            f"install the {extra} extra: pip install 'vendwatch[{extra}]'")


def _check_data_dir(path: Path) -> None:
    # a typo in --data-dir would otherwise silently start an empty fleet somewhere new
    if path.exists():
        if not path.is_dir():
            raise click.ClickException(f"data directory {path} is not a directory")
        return
    parent = path.absolute().parent
    if not parent.is_dir():
        raise click.ClickException(
            f"data directory {path}: its parent {parent} does not exist; check the path, "
            f"or create it first (mkdir -p {parent})")


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


def iso_times(doc: Any) -> Any:
    """``doc`` with every epoch-seconds value of a ``*_at`` (or ``at``) key as ISO 8601 UTC."""
    if isinstance(doc, dict):
        return {k: _iso(v) if _is_time_key(k) else iso_times(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [iso_times(v) for v in doc]
    return doc


def _is_time_key(key: object) -> bool:
    return isinstance(key, str) and (key == "at" or key.endswith("_at"))


def _iso(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return iso_times(v)
    return datetime.fromtimestamp(v, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
