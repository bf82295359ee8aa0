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
@click.option("--openapi", "as_openapi", is_flag=True,
              help="Write the OpenAPI 3.1 document of every HTTP endpoint instead (also served at GET /openapi.json).")
def export(output: str, as_openapi: bool) -> None:
    """Write the JSON Schema (2020-12) of POST /v1/events bodies and every payload type."""
    if as_openapi:
        from vendwatch.ingest.openapi import openapi

        doc = openapi()
    else:
        doc = events.json_schema()
    text = msgspec.json.format(msgspec.json.encode(doc)).decode() + "\n"
    with click.open_file(output, "w") as f:
        f.write(text)


commands = [schema]
