"""``vendwatch stage-dlq``: records a pipeline stage could not process, set aside."""

from __future__ import annotations

import time
from typing import Any

import click

from vendwatch.cli.common import Env, data_dir_option, echo_json, pass_env, table
from vendwatch.state.deadletters import DeadLetter, DeadLetterNotFound, DeadLetters

# stages that apply redriven records themselves (checkpointed stages); the detector
# evaluates records in log order only, so its dead letters are for inspection
REDRIVABLE = ("device-state", "router", "orchestrator")


@click.group("stage-dlq")
def stage_dlq() -> None:
    """Stage dead letters: log records a stage could not process (device-state, detector,
    router, orchestrator), kept with the reason, instead of stopping the stage."""


def _store(env: Env) -> DeadLetters:
    return DeadLetters(env.context().state.db)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _dict(d: DeadLetter) -> dict[str, Any]:
    return {"dl_id": d.dl_id, "stage": d.stage, "topic": d.topic, "partition": d.partition, "offset": d.offset,
            "key": d.key, "event_id": d.event_id, "reason": d.reason, "attempts": d.attempts,
            "redrive_requested": d.redrive, "created_at": d.created_at, "updated_at": d.updated_at}


@stage_dlq.command("list")
@data_dir_option
@click.option("--stage", default=None, help="Only this stage.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_env
def dl_list(env: Env, stage: str | None, as_json: bool) -> None:
    """Stage dead letters, oldest first."""
    rows = [_dict(d) for d in _store(env).list(stage, limit=10_000)]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        r["at"] = f"{r['topic']}/{r['partition']}@{r['offset']}"
        r["created"] = _when(r["created_at"])
        r["reason"] = r["reason"][:80]
    table(rows, ["dl_id", "stage", "at", "event_id", "attempts", "created", "reason"])


@stage_dlq.command("show")
@click.argument("dl_id", type=int)
@data_dir_option
@pass_env
def dl_show(env: Env, dl_id: int) -> None:
    """One dead letter with the record as it was read from the log (JSON)."""
    try:
        d, value = _store(env).get(dl_id)
    except DeadLetterNotFound as e:
        raise click.ClickException(str(e)) from None
    echo_json({**_dict(d), "value": value.decode(errors="replace")})


@stage_dlq.command("redrive")
@click.argument("dl_id", type=int, required=False)
@data_dir_option
@click.option("--stage", default=None, type=click.Choice(REDRIVABLE), help="Redrive every dead letter of this stage.")
@pass_env
def dl_redrive(env: Env, dl_id: int | None, stage: str | None) -> None:
    """Ask the running stage to apply dead letters again (once the cause is fixed).

    The stage applies each one exactly once and removes it; one that fails again stays,
    with the new reason."""
    if (dl_id is None) == (stage is None):
        raise click.UsageError("give exactly one of DL_ID or --stage")
    store = _store(env)
    if dl_id is not None:
        try:
            d, _ = store.get(dl_id)
        except DeadLetterNotFound as e:
            raise click.ClickException(str(e)) from None
        if d.stage not in REDRIVABLE:
            raise click.ClickException(f"the {d.stage} stage reads the log in order only and cannot apply a"
                                       f" dead letter later; inspect it with `stage-dlq show {dl_id}`")
        n = store.request_redrive([dl_id])
    else:
        n = store.request_redrive(stage=stage)
    click.echo(f"redrive requested: {n} (the running stage applies them within seconds)")


@stage_dlq.command("purge")
@click.argument("dl_id", type=int)
@data_dir_option
@pass_env
def dl_purge(env: Env, dl_id: int) -> None:
    """Delete one dead letter for good (the record stays in the log and the lake)."""
    try:
        _store(env).delete(dl_id)
    except DeadLetterNotFound as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"purged {dl_id}")


commands = [stage_dlq]
