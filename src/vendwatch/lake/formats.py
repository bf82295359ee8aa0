"""Query results out as table, CSV, JSON or Parquet (CLI and HTTP share these)."""

from __future__ import annotations

import io
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("table", "csv", "json", "parquet")


def normalize(t: pa.Table) -> pa.Table:
    """Make results portable: DuckDB's 128-bit integer sums become int64, decimals float64."""
    cols, fields = [], []
    for f, col in zip(t.schema, t.columns, strict=True):
        if pa.types.is_decimal(f.type):
            target = pa.int64() if f.type.scale == 0 else pa.float64()
            col = col.cast(target, safe=False)
            f = pa.field(f.name, target, f.nullable)
        cols.append(col)
        fields.append(f)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def to_csv(t: pa.Table) -> bytes:
    """RFC 4180 CSV with a header row; timestamps as ISO 8601 (what BI tools load)."""
    buf = io.BytesIO()
    pacsv.write_csv(normalize(t), buf)
    return buf.getvalue()


def to_parquet(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(normalize(t), buf, compression="zstd")
    return buf.getvalue()


def _default(obj: Any) -> Any:
    return str(obj)


_json = msgspec.json.Encoder(enc_hook=_default, decimal_format="number")


def to_json_rows(t: pa.Table) -> list[dict[str, Any]]:
    return normalize(t).to_pylist()


def to_json(t: pa.Table, **extra: Any) -> bytes:
    return _json.encode({"columns": t.column_names, "rows": to_json_rows(t), **extra})
