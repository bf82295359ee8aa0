"""Canned reports (the Power BI part): named, documented SQL over the lake.

The SQL is written to run unchanged on DuckDB and PostgreSQL (the benchmark runs the
same text on both): CAST instead of ``::``, ``EXTRACT(EPOCH FROM ...)``, ``FILTER``,
``GROUPING SETS`` and window functions only. Parameters are bound as literals built
here from typed values, never from user text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from vendwatch.config import Settings
from vendwatch.lake.query import LakeSQL, QueryError, QueryResult
from vendwatch.lake.transforms import currency_divisor


@dataclass(frozen=True)
class Report:
    name: str
    title: str
    tables: tuple[str, ...]
    sql: str  # placeholders: {now} {stale_s} {since} {until}


def _between(col: str) -> str:
    return f"{col} BETWEEN {{since}} AND {{until}}"


REPORTS: dict[str, Report] = {r.name: r for r in [
    Report(
        "device-last-seen",
        "Device last seen and staleness (fresh from raw.events)",
        ("raw.events",),
        """
        SELECT device_id, max(site_id) AS site_id, max(received_at) AS last_seen_at,
            EXTRACT(EPOCH FROM ({now} - max(received_at))) AS silent_s,
            EXTRACT(EPOCH FROM ({now} - max(received_at))) > {stale_s} AS stale,
            count(*) AS events
        FROM raw.events GROUP BY device_id ORDER BY silent_s DESC, device_id
        """,
    ),
    Report(
        "incident-history",
        "Incidents per rule and severity with MTTA and MTTR",
        ("analytics.incidents",),
        f"""
        SELECT rule_id, severity, count(*) AS incidents,
            count(*) FILTER (WHERE resolved_at IS NULL) AS open,
            avg(time_to_ack_s) AS mtta_s, avg(time_to_resolve_s) AS mttr_s,
            max(time_to_resolve_s) AS max_ttr_s, sum(occurrences) AS occurrences,
            min(opened_at) AS first_opened_at, max(opened_at) AS last_opened_at
        FROM analytics.incidents WHERE opened_at IS NULL OR {_between('CAST(opened_at AS DATE)')}
        GROUP BY rule_id, severity ORDER BY incidents DESC, rule_id, severity
        """,
    ),
    Report(
        "sla-uptime",
        "Uptime % per device and per site over the time each machine was expected to report "
        "(from its first event to the newest data; 5-minute buckets; a silent day counts as 0 %)",
        ("analytics.dim_devices", "analytics.device_daily"),
        f"""
        WITH win AS (
            -- the reporting horizon: the newest data in the window (nothing is expected after it)
            SELECT least(max(last_event_at), CAST({{until}} AS TIMESTAMPTZ) + INTERVAL '1 day') AS horizon,
                count(DISTINCT event_date) AS n
            FROM analytics.device_daily WHERE {_between('event_date')}
        ), per_day AS (
            -- device_daily.uptime_pct is the share of the day's buckets up to the horizon: seconds up
            SELECT dd.device_id, dd.event_date, dd.uptime_pct, dd.events, dd.first_event_at,
                dd.uptime_pct / 100.0 * greatest(0, EXTRACT(EPOCH FROM (
                    least(CAST(dd.event_date AS TIMESTAMPTZ) + INTERVAL '1 day', win.horizon)
                    - CAST(dd.event_date AS TIMESTAMPTZ)))) AS up_s
            FROM analytics.device_daily dd CROSS JOIN win WHERE {_between('dd.event_date')}
        ), dev AS (
            -- every known device, so a machine that sent nothing in the window shows 0 %, not nothing
            SELECT d.site_id, d.device_id, count(p.event_date) AS days_seen,
                greatest(CAST({{since}} AS TIMESTAMPTZ), least(min(d.first_seen_at), min(p.first_event_at))) AS expected_from,
                max(win.horizon) AS horizon, coalesce(sum(p.up_s), 0) AS up_s,
                min(p.uptime_pct) AS worst_seen_pct, coalesce(sum(p.events), 0) AS events
            FROM analytics.dim_devices d CROSS JOIN win
            LEFT JOIN per_day p ON p.device_id = d.device_id
            GROUP BY d.site_id, d.device_id
        ), rated AS (
            SELECT site_id, device_id, days_seen, events,
                CASE WHEN horizon IS NULL OR expected_from IS NULL OR expected_from >= horizon THEN 0.0
                    ELSE least(100.0, 100.0 * up_s / EXTRACT(EPOCH FROM (horizon - expected_from))) END AS uptime_pct,
                -- a day between the first report and the horizon without any data was a 0 % day
                CASE WHEN days_seen < CAST(horizon AS DATE) - CAST(expected_from AS DATE) + 1 THEN 0.0
                    ELSE worst_seen_pct END AS worst_day_pct
            FROM dev
        )
        SELECT 'device' AS level, site_id, device_id, days_seen, uptime_pct, worst_day_pct, events FROM rated
        UNION ALL
        SELECT 'site', site_id, NULL, max(days_seen), avg(uptime_pct), min(worst_day_pct), sum(events)
        FROM rated GROUP BY site_id
        ORDER BY site_id, level DESC, uptime_pct, device_id
        """,
    ),
    Report(
        "revenue",
        "Revenue by day, site, product and payment method (sold = paid and vended)",
        ("analytics.transactions",),
        f"""
        -- money is summed in integer minor units and divided once, for display: no float drift
        SELECT event_date, site_id, product_id, payment_method, currency,
            count(*) AS sales, sum(price_minor) AS revenue_minor,
            sum(price_minor) / {currency_divisor('currency')} AS revenue
        FROM analytics.transactions WHERE sold AND {_between('event_date')}
        GROUP BY event_date, site_id, product_id, payment_method, currency
        ORDER BY event_date, site_id, product_id, payment_method
        """,
    ),
    Report(
        "failure-rates",
        "Failed-vend and failed-payment rates per site and payment method",
        ("analytics.transactions",),
        f"""
        SELECT site_id, payment_method, count(*) AS transactions,
            count(*) FILTER (WHERE payment_status = 'failure') AS failed_payments,
            count(*) FILTER (WHERE payment_status = 'success' AND vend_status = 'failure') AS failed_vends,
            100.0 * count(*) FILTER (WHERE payment_status = 'failure') / count(*) AS failed_payment_pct,
            100.0 * count(*) FILTER (WHERE payment_status = 'success' AND vend_status = 'failure')
                / greatest(1, count(*) FILTER (WHERE payment_status = 'success')) AS failed_vend_pct
        FROM analytics.transactions WHERE {_between('event_date')}
        GROUP BY site_id, payment_method ORDER BY site_id, payment_method
        """,
    ),
    Report(
        "stockouts",
        "Stock-out intervals with estimated lost sales (duration x the slot's usual sales rate)",
        ("analytics.stockouts", "analytics.transactions"),
        f"""
        WITH span AS (
            SELECT greatest(1.0, EXTRACT(EPOCH FROM (max(event_time) - min(event_time))) / 3600.0) AS hours
            FROM analytics.transactions WHERE {_between('event_date')}
        ), rate AS (
            SELECT t.device_id, t.product_id, count(*) / max(span.hours) AS sales_per_h, avg(t.amount) AS avg_amount
            FROM analytics.transactions t CROSS JOIN span
            WHERE t.sold AND {_between('t.event_date')} GROUP BY t.device_id, t.product_id
        )
        SELECT s.site_id, s.device_id, s.slot, s.product_id, s.started_at, s.ended_at,
            coalesce(s.duration_s, EXTRACT(EPOCH FROM ({{now}} - s.started_at))) / 3600.0 AS hours_out,
            coalesce(s.duration_s, EXTRACT(EPOCH FROM ({{now}} - s.started_at))) / 3600.0
                * coalesce(r.sales_per_h, 0) AS est_lost_sales,
            coalesce(s.duration_s, EXTRACT(EPOCH FROM ({{now}} - s.started_at))) / 3600.0
                * coalesce(r.sales_per_h, 0) * coalesce(r.avg_amount, 0) AS est_lost_revenue
        FROM analytics.stockouts s
        LEFT JOIN rate r ON r.device_id = s.device_id AND r.product_id = s.product_id
        WHERE {_between('s.event_date')}
        ORDER BY est_lost_revenue DESC, s.device_id, s.slot, s.started_at
        """,
    ),
    Report(
        "refill-picklist",
        "Refill pick list per site: units to load per product (fill to capacity; days of stock left)",
        ("analytics.inventory", "analytics.transactions"),
        """
        WITH last AS (
            -- newest observation per slot by aggregation + join (cheaper than a window sort)
            SELECT device_id, slot, max(observed_at) AS at, max(capacity) AS capacity
            FROM analytics.inventory WHERE observed_at <= {until_ts} GROUP BY device_id, slot
        ), latest AS (
            SELECT i.device_id, max(i.site_id) AS site_id, i.slot, max(i.product_id) AS product_id,
                min(i.count) AS count, max(l.capacity) AS capacity
            FROM analytics.inventory i
            JOIN last l ON i.device_id = l.device_id AND i.slot = l.slot AND i.observed_at = l.at
            GROUP BY i.device_id, i.slot
        ), recent AS (
            SELECT device_id, slot, count(*) / 7.0 AS sold_per_day FROM analytics.transactions
            WHERE sold AND event_time > (SELECT max(event_time) FROM analytics.transactions) - INTERVAL '7 days'
            GROUP BY device_id, slot
        ), need AS (
            SELECT l.site_id, l.device_id, l.product_id, l.count,
                greatest(0, coalesce(l.capacity, l.count) - l.count) AS to_load,
                CASE WHEN coalesce(r.sold_per_day, 0) > 0 THEN l.count / r.sold_per_day END AS days_left
            FROM latest l LEFT JOIN recent r ON r.device_id = l.device_id AND r.slot = l.slot
        )
        SELECT site_id, product_id, sum(to_load) AS units_to_load,
            count(DISTINCT device_id) FILTER (WHERE to_load > 0) AS devices,
            count(*) FILTER (WHERE count = 0) AS empty_slots, min(days_left) AS min_days_left
        FROM need GROUP BY site_id, product_id HAVING sum(to_load) > 0
        ORDER BY site_id, units_to_load DESC, product_id
        """,
    ),
]}


class ReportError(QueryError):
    """Unknown report or bad parameter."""


def report_sql(
    report: Report, *, now: datetime | None = None, stale_s: float = 900.0,
    since: date | None = None, until: date | None = None,
) -> str:
    """The report's SQL with its parameters filled in as typed literals."""
    now = now or datetime.now(UTC)
    lo = since or date(1970, 1, 1)
    hi = until or date(9999, 12, 31)
    until_ts = f"CAST('{hi.isoformat()} 23:59:59.999999+00' AS TIMESTAMPTZ)"
    return report.sql.format(
        now=f"CAST('{now.astimezone(UTC).isoformat()}' AS TIMESTAMPTZ)",
        stale_s=float(stale_s),
        since=f"CAST('{lo.isoformat()}' AS DATE)",
        until=f"CAST('{hi.isoformat()}' AS DATE)",
        until_ts=until_ts,
    )


def run_report(
    settings: Settings, name: str, *, since: date | None = None, until: date | None = None,
    limit: int | None = None, now: datetime | None = None, sql: LakeSQL | None = None,
) -> QueryResult:
    """Run a canned report over the lake."""
    report = REPORTS.get(name)
    if report is None:
        raise ReportError(f"unknown report {name!r}; available: {', '.join(REPORTS)}")
    if since and until and since > until:
        raise ReportError(f"since ({since}) is after until ({until})")
    text = report_sql(report, now=now, stale_s=settings.lake.stale_after_s, since=since, until=until)
    engine = sql or LakeSQL(settings)
    return engine.run(text, limit=limit if limit is not None else 1_000_000)
