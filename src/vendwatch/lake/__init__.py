"""The Iceberg lake: raw zone writer, analytics ETL, maintenance, SQL, reports, replay."""
