"""The lake's read-only SQL endpoint on the PostgreSQL wire protocol (``sql-server`` role).

BI tools (Power BI, Grafana's PostgreSQL data source, Metabase), ``psql`` and any
PostgreSQL driver connect to it; every query runs in the same SQL sandbox as
``POST /v1/sql`` (``vendwatch.lake.query``), with the same limits. The password is an
operator token. Modules: ``messages`` (protocol framing and value encoding),
``backend`` (what a statement does: sandbox, catalog, session no-ops, refusal),
``session`` (one connection's protocol state machine), ``server`` (listener, TLS,
the role).
"""
