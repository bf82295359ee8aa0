"""``vendwatch rules check|list|backtest``: detection rules as data."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from vendwatch.cli.common import Env, data_dir_option, echo_json, pass_env, table
from vendwatch.detect.rules import (
    Rule,
    RuleError,
    RuleSet,
    load_rule_file,
    load_ruleset,
    parse_duration,
)


def _active(env: Env) -> RuleSet:
    s = env.settings().detect
    try:
        return load_ruleset(s.rule_files, s.default_pack)
    except RuleError as e:
        raise click.ClickException(f"active rule set (detect.rule_files): {e}") from None


def _when(value: str, name: str) -> datetime:
    """ISO 8601 (naive means UTC), ``now``, or ``now-2h`` / ``-2h``."""
    v = value.strip()
    now = datetime.now(UTC)
    if v == "now":
        return now
    rel = v[3:] if v.startswith("now-") else v if v.startswith("-") else None
    if rel is not None:
        try:
            return datetime.fromtimestamp(now.timestamp() - parse_duration(rel.lstrip("-"), name), UTC)
        except RuleError as e:
            raise click.BadParameter(str(e), param_hint=name) from None
    try:
        d = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"expected ISO 8601 (2026-03-01T12:00Z), now, or now-2h; got {value!r}",
                                 param_hint=name) from None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _row(r: Rule) -> dict[str, Any]:
    return {"id": r.id, "version": r.version, "type": r.type, "severity": r.severity, "kind": r.kind,
            "source": Path(r.source).name, "summary": r.summary}


@click.group()
def rules() -> None:
    """Detection rules: validate, list, and backtest them over stored events."""


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check(files: tuple[str, ...]) -> None:
    """Validate rule FILES; errors name the file, rule id and field. Exit status 1 on the first error."""
    for f in files:
        try:
            loaded = load_rule_file(f)
        except RuleError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"{f}: {len(loaded)} rule(s) OK: {', '.join(r.id for r in loaded)}")


@rules.command("list")
@data_dir_option
@click.option("--rules", "files", multiple=True, type=click.Path(dir_okay=False),
              help="List these rule files instead of the active rule set.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes each rule as written).")
@pass_env
def list_(env: Env, files: tuple[str, ...], as_json: bool) -> None:
    """List the active rules (default pack + detect.rule_files), or the rules of FILES."""
    try:
        rs = load_ruleset(list(files), default_pack=False) if files else _active(env)
    except RuleError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        echo_json([{**_row(r), "source": r.source, "labels": r.labels, "spec": r.spec} for r in rs.rules])
        return
    table([_row(r) for r in rs.rules], ["id", "version", "type", "severity", "kind", "source", "summary"])


@rules.command("backtest")
@data_dir_option
@click.option("--rules", "files", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Candidate rule file(s) (repeatable).")
@click.option("--from", "start", required=True, help="Start of the range: ISO 8601, now, or now-2h.")
@click.option("--to", "end", default="now", show_default=True, help="End of the range (exclusive).")
@click.option("--source", type=click.Choice(["log", "lake"]), default="log", show_default=True,
              help="Stored events to replay: the log (retention-bound) or the lake's raw zone.")
@click.option("--with-default-pack", is_flag=True, help="Evaluate the default pack together with the candidate files.")
@click.option("--limit", default=20, show_default=True, help="Differing signals to print per side (text output).")
@click.option("--json", "as_json", is_flag=True, help="Print every signal and the diff as JSON.")
@pass_env
def backtest(env: Env, files: tuple[str, ...], start: str, end: str, source: str, with_default_pack: bool,
             limit: int, as_json: bool) -> None:
    """Replay stored events through candidate rules with a virtual clock, without side effects,
    and compare the signals with those of the active rule set."""
    from vendwatch.detect import backtest as bt
    from vendwatch.detect.engine import SiteOptions

    t1, t2 = _when(start, "--from"), _when(end, "--to")
    if t2 <= t1:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    try:
        candidate = load_ruleset(list(files), default_pack=with_default_pack)
    except RuleError as e:
        raise click.ClickException(str(e)) from None
    active = _active(env)
    settings = env.settings()
    ctx = env.context()
    ds = settings.detect
    site = SiteOptions(min_devices=ds.site_min_devices, min_fraction=ds.site_min_fraction, wait_s=ds.site_wait_s)
    registry, sizes = None, None
    if settings.state.backend != "sqlite" or (settings.data_path / "state.db").exists():
        from vendwatch.detect.store import registry as read_registry

        registry, sizes = read_registry(ctx.state)
    try:
        if source == "lake":
            rows = bt.lake_events(settings, t1, t2)
        else:
            if settings.bus.backend == "sqlite" and not (settings.data_path / "bus.db").exists():
                raise click.ClickException(f"no log in {settings.data_dir} (bus.db missing): nothing to backtest")
            rows = bt.log_events(ctx.log, t1.timestamp(), t2.timestamp())
        cand_res, act_res = bt.run(rows, [candidate, active], t2.timestamp(), site=site, registry=registry,
                                   site_sizes=sizes)
    except bt.BacktestError as e:
        raise click.ClickException(str(e)) from None
    finally:
        ctx.close()
    d = bt.diff(cand_res, act_res)
    if as_json:
        echo_json({"from": t1, "to": t2, "source": source, "events": cand_res.events, "devices": cand_res.devices,
                   "candidate": {"sources": candidate.sources, "signals": cand_res.signals},
                   "active": {"sources": active.sources, "signals": act_res.signals}, "diff": d})
        return
    click.echo(f"{cand_res.events} events from {cand_res.devices} devices, {t1.isoformat()} .. {t2.isoformat()} ({source})")
    click.echo(f"candidate ({', '.join(candidate.sources)}): {len(cand_res.signals)} signals; "
               f"active ({', '.join(active.sources)}): {len(act_res.signals)} signals; identical: {d['same']}")
    click.echo("")
    table(d["rules"], ["rule_id", "candidate_fired", "candidate_resolved", "active_fired", "active_resolved"])
    for side, label in (("only_candidate", "only with the candidate"), ("only_active", "only with the active rules")):
        sigs = d[side]
        click.echo(f"\n{len(sigs)} signal(s) {label}:")
        for s in sigs[:limit]:
            click.echo(f"  {s.occurred_at.isoformat()}  {s.status:<8} {s.rule_id:<28} {s.dedupe_key}  {s.summary}")
        if len(sigs) > limit:
            click.echo(f"  ... {len(sigs) - limit} more (--limit, --json)")
    sys.stdout.flush()


commands = [rules]
