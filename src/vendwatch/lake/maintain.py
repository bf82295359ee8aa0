"""``vendwatch lake maintain``: compaction, retention, snapshot expiry, orphan cleanup.

Safe while the raw writer runs:

* Compaction replaces *named* files (an overwrite snapshot that deletes exactly the
  small files it read and adds the merged file). If the writer commits meanwhile,
  the commit is retried on top of it and Iceberg's validation checks the named files
  still exist; the writer's new files are never touched. It is never a
  partition-wide overwrite, which on retry could drop rows appended in between.
* Snapshot expiry never removes the snapshots the writer and the ETL read their
  progress from (the newest snapshot carrying offsets, and everything after it).
* Orphan cleanup deletes only unreferenced files older than
  ``lake.orphan_min_age_hours``, so an in-flight write is never mistaken for garbage.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import And, BooleanExpression, EqualTo, LessThan
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.table import FileScanTask, Table

from vendwatch.config import Settings
from vendwatch.lake import schemas
from vendwatch.lake.catalog import ancestors, ensure_table, local_warehouse, open_catalog
from vendwatch.lake.etl import HASH_PROP, RAW_SNAPSHOT_PROP
from vendwatch.lake.writer import OFFSETS_PROP

log = logging.getLogger("vendwatch.lake.maintain")

MAINT_PROP = "vendwatch.maintenance"
_PROGRESS_PROPS = (OFFSETS_PROP, RAW_SNAPSHOT_PROP, HASH_PROP)
# the column retention cuts on, per table (day-aligned, so whole partitions are dropped)
_RETENTION_COLUMN = {"raw.events": "occurred_at", "raw.rejected": "received_at", "raw.system_logs": "ts"}


@dataclass
class TableMaintenance:
    compacted_files: int = 0
    compacted_into: int = 0
    retention_deleted: list[str] = field(default_factory=list)
    expired_snapshots: int = 0
    orphans_deleted: int = 0


def _retry(what: str, fn: Any, attempts: int = 10) -> Any:
    for i in range(attempts):
        try:
            return fn()
        except CommitFailedException:
            log.info("%s: concurrent commit, retrying", what)
            time.sleep(min(0.05 * 2**i, 2.0))
    raise CommitFailedException(f"{what}: gave up after {attempts} concurrent-commit retries")


# -- compaction ---------------------------------------------------------------------
def compact(table: Table, small_bytes: int, min_files: int) -> tuple[int, int]:
    """Merge the small files of each partition; returns (files removed, files written)."""
    table.refresh()
    snap = table.current_snapshot()
    if snap is None:
        return 0, 0
    groups: dict[tuple[int, Any], list[FileScanTask]] = defaultdict(list)
    for task in table.scan(snapshot_id=snap.snapshot_id).plan_files():
        if task.delete_files:
            continue  # merge-on-read deletes: leave to an engine that writes them
        if task.file.file_size_in_bytes < small_bytes:
            groups[(task.file.spec_id, task.file.partition)].append(task)
    removed = written = 0
    for tasks in groups.values():
        if len(tasks) < min_files:
            continue
        try:
            r, w = _rewrite(table, tasks)
        except (CommitFailedException, ValidationException) as e:
            # a file we read is gone (another maintenance run); the next run will see fresh state
            log.warning("compaction of %s skipped a partition: %s", ".".join(table.name()), e)
            continue
        removed, written = removed + r, written + w
    return removed, written


def _rewrite(table: Table, tasks: list[FileScanTask]) -> tuple[int, int]:
    meta = table.metadata
    data = ArrowScan(meta, table.io, table.schema(), row_filter=_always_true()).to_table(tasks)
    write_uuid = uuid.uuid4()
    new_files = list(_dataframe_to_data_files(table_metadata=meta, df=data, io=table.io, write_uuid=write_uuid))

    def commit() -> None:
        table.refresh()
        with table.transaction() as tx, tx.update_snapshot(snapshot_properties={MAINT_PROP: "compaction"}).overwrite() as ov:
            for f in new_files:
                ov.append_data_file(f)
            for t in tasks:
                ov.delete_data_file(t.file)

    _retry(f"compact {'.'.join(table.name())}", commit)
    return len(tasks), len(new_files)


def _always_true() -> BooleanExpression:
    from pyiceberg.expressions import AlwaysTrue

    return AlwaysTrue()


# -- retention --------------------------------------------------------------------------
def apply_retention(table: Table, name: str, rules: dict[str, float], now: datetime) -> list[str]:
    """Delete rows older than each rule's age; cut-offs are day-aligned (whole partitions)."""
    done = []
    col = _RETENTION_COLUMN.get(name) or ("event_date" if "event_date" in {f.name for f in table.schema().fields} else None)
    if col is None:
        return done
    for key, days in sorted(rules.items()):
        tname, _, etype = key.partition(":")
        if tname != name or days <= 0:
            continue
        cutoff = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
        value = cutoff.date().isoformat() if col == "event_date" else cutoff.isoformat()
        pred: BooleanExpression = LessThan(col, value)
        if etype:
            pred = And(pred, EqualTo("type", etype))

        def delete(p: BooleanExpression = pred, k: str = key) -> None:
            table.refresh()
            with warnings.catch_warnings():
                # "did not match any records" is the normal case once old days are gone
                warnings.simplefilter("ignore", UserWarning)
                table.delete(delete_filter=p, snapshot_properties={MAINT_PROP: f"retention {k}"})

        before = table.current_snapshot()
        _retry(f"retention {key}", delete)
        table.refresh()
        if table.current_snapshot() != before:
            done.append(f"{key} < {value}")
    return done


# -- snapshot expiry ---------------------------------------------------------------------
def protected_snapshots(table: Table, extra: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """Snapshots never expired: current back to the newest one carrying progress properties."""
    keep = set(extra)
    for snap in ancestors(table):
        keep.add(snap.snapshot_id)
        props = snap.summary.additional_properties if snap.summary else {}
        if any(p in props for p in _PROGRESS_PROPS):
            break
    return keep


_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS


def thinned(snapshots: list[tuple[int, int]], now_ms: int, *, keep: set[int], keep_all_ms: int,
            cutoff_ms: int) -> list[int]:
    """The snapshots (id, timestamp ms) to expire: all older than ``cutoff_ms``; of the rest,
    past the first ``keep_all_ms``, all but the newest of each hour for a day, then of each
    day. ``keep`` (what the writer and the ETL resume from) always stays.

    pyiceberg copies the whole snapshot list several times per commit, so a commit's cost
    grows with the snapshots kept: a writer committing every 30 s for the 7 days of
    ``snapshot_retention_hours`` would keep 20,000 and spend most of its time copying them."""
    victims: list[int] = []
    seen: set[tuple[str, int]] = set()
    for sid, ts in sorted(snapshots, key=lambda s: s[1], reverse=True):  # newest first
        age = now_ms - ts
        if sid in keep:
            continue
        if ts < cutoff_ms:
            victims.append(sid)
            continue
        if age <= keep_all_ms:
            continue
        bucket = ("h", ts // _HOUR_MS) if age <= _DAY_MS else ("d", ts // _DAY_MS)
        if bucket in seen:
            victims.append(sid)  # an older snapshot of a bucket whose newest one stays
        else:
            seen.add(bucket)
    return victims


def expire(table: Table, older_than: datetime, extra_protected: set[int], *, now: datetime | None = None,
           keep_all_hours: float = 1.0) -> int:
    table.refresh()
    keep = protected_snapshots(table, extra_protected)
    now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
    victims = thinned([(s.snapshot_id, s.timestamp_ms) for s in table.metadata.snapshots], now_ms, keep=keep,
                      keep_all_ms=int(keep_all_hours * _HOUR_MS), cutoff_ms=int(older_than.timestamp() * 1000))
    if not victims:
        return 0

    def run() -> None:
        table.refresh()
        live = {s.snapshot_id for s in table.metadata.snapshots}
        ids = [v for v in victims if v in live]
        if ids:
            table.maintenance.expire_snapshots().by_ids(ids).commit()

    _retry(f"expire {'.'.join(table.name())}", run)
    return len(victims)


# -- orphan files ---------------------------------------------------------------------------
def referenced_files(table: Table) -> set[str]:
    """Every file any remaining snapshot or metadata version needs."""
    table.refresh()
    meta = table.metadata
    refs: set[str] = {table.metadata_location}
    refs.update(e.metadata_file for e in meta.metadata_log)
    seen_manifests: set[str] = set()
    for snap in meta.snapshots:
        refs.add(snap.manifest_list)
        for m in snap.manifests(table.io):
            refs.add(m.manifest_path)
            if m.manifest_path in seen_manifests:
                continue
            seen_manifests.add(m.manifest_path)
            for entry in m.fetch_manifest_entry(table.io, discard_deleted=True):
                refs.add(entry.data_file.file_path)
    for st in meta.statistics:
        refs.add(st.statistics_path)
    return {_norm(r) for r in refs}


def _norm(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def remove_orphans(table: Table, min_age_s: float) -> int:
    """Delete files under the table's location that nothing references (local warehouses)."""
    root = _norm(table.metadata.location)
    if "://" in root or not os.path.isdir(root):
        return 0  # object stores: use the engine's remove_orphan_files (see docs/lake.md)
    # list first, then read references: a file committed in between is referenced by then
    now = time.time()
    candidates = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                if now - os.path.getmtime(p) >= min_age_s:
                    candidates.append(p)
            except FileNotFoundError:
                continue
    refs = referenced_files(table)
    n = 0
    for p in candidates:
        if p not in refs:
            try:
                os.remove(p)
                n += 1
            except FileNotFoundError:
                pass
    return n


# -- the whole run ------------------------------------------------------------------------
def maintain(settings: Settings, *, now: datetime | None = None, tables: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Maintain every lake table (or ``tables``); returns what was done per table."""
    now = now or datetime.now(UTC)
    cfg = settings.lake
    cat = open_catalog(settings)
    names = tables or list(schemas.TABLES)
    loaded = {n: ensure_table(cat, n) for n in names}
    # raw snapshots the ETL will diff against must survive expiry
    etl_raw: set[int] = set()
    for n in schemas.ANALYTICS:
        t = loaded.get(n)
        if t is None:
            continue
        for snap in ancestors(t):
            props = snap.summary.additional_properties if snap.summary else {}
            if RAW_SNAPSHOT_PROP in props:
                etl_raw.add(int(props[RAW_SNAPSHOT_PROP]))
                break
    out: dict[str, dict[str, Any]] = {}
    for name, table in loaded.items():
        m = TableMaintenance()
        m.retention_deleted = apply_retention(table, name, cfg.retention_days, now)
        m.compacted_files, m.compacted_into = compact(table, cfg.small_file_mb * 1024 * 1024, cfg.compact_min_files)
        extra = etl_raw if name == "raw.events" else set()
        m.expired_snapshots = expire(table, now - timedelta(hours=cfg.snapshot_retention_hours), extra, now=now,
                                     keep_all_hours=cfg.snapshot_keep_all_hours)
        if local_warehouse(settings) is not None:
            m.orphans_deleted = remove_orphans(table, cfg.orphan_min_age_hours * 3600)
        out[name] = m.__dict__
    return out
