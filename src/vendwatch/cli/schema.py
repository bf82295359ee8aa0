"""``vendwatch schema export``."""

from __future__ import annotations

import click
import msgspec

from vendwatch import events


@click.group()
def schema() -> None:
    """The device protocol's JSON Schema."""


@schema.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", help="File to write [default: stdout].")
def export(output: str) -> None:
    """Write the JSON Schema (2020-12) of POST /v1/events bodies and every payload type."""
    text = msgspec.json.format(msgspec.json.encode(events.json_schema())).decode() + "\n"
    with click.open_file(output, "w") as f:
        f.write(text)


commands = [schema]
