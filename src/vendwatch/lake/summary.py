"""Lake figures for ``vendwatch demo --summary-json``."""

from __future__ import annotations

from typing import Any

from vendwatch.lake.catalog import open_catalog, table_names
from vendwatch.runtime import Context


def summary(ctx: Context) -> dict[str, Any]:
    """Row counts of the raw tables and snapshot/file counts of the whole lake (from metadata only)."""
    cat = open_catalog(ctx.settings)
    out: dict[str, Any] = {"lake_tables": 0, "lake_snapshots": 0, "lake_data_files": 0,
                           "raw_events_rows": 0, "raw_rejected_rows": 0}
    for name in table_names(cat):
        t = cat.load_table(name)
        out["lake_tables"] += 1
        out["lake_snapshots"] += len(t.metadata.snapshots)
        snap = t.current_snapshot()
        props = snap.summary.additional_properties if snap and snap.summary else {}
        out["lake_data_files"] += int(props.get("total-data-files", 0))
        if name in ("raw.events", "raw.rejected"):
            out[f"{name.replace('.', '_')}_rows"] = int(props.get("total-records", 0))
    return out
