"""The ETL's SQL: raw events -> cleansed analytics rows (DuckDB dialect).

Every query reads the view ``ev``: raw events of the affected days, deduplicated by
event id, with ``event_time`` corrected for clock skew. Cleansing rules (impossible
values, units) live here, next to the columns they produce.
"""

from __future__ import annotations

# Currencies whose minor unit is not 1/100 (ISO 4217 exponents)
_EXP0 = ("JPY", "KRW", "CLP", "ISK", "VND", "XOF", "XAF", "UGX", "PYG", "RWF")
_EXP3 = ("BHD", "KWD", "OMR", "JOD", "TND", "LYD", "IQD")


# an event is its device, its event id and its occurred day: copies of one event (a
# retry, a second collector) share all three, so they sit in one raw partition
EVENT_KEY = "device_id, event_id, event_date"
# which copy of an event counts: the first received (then the log position)
FIRST_COPY = "received_at, log_partition, log_offset"


def skew_columns(skew_s: float) -> str:
    """``clock_skewed``, ``event_time`` and ``day`` of a raw row (device clock ahead: collector time)."""
    ahead = f"occurred_at > received_at + INTERVAL {float(skew_s)} SECOND"
    return f"""{ahead} AS clock_skewed,
        CASE WHEN {ahead} THEN received_at ELSE occurred_at END AS event_time,
        CAST(CASE WHEN {ahead} THEN received_at ELSE occurred_at END AS DATE) AS day"""


def ev_view(skew_s: float, materialize: bool = False, src: str = "raw.events") -> str:
    """Deduplicated, skew-corrected raw events of the affected days (table ``affected(d)``).

    Every copy of an event whose first copy may land on an affected day is read: the
    events of the affected occurred days, and those received on an affected day (a
    device clock far ahead is replaced by the collector's, which moves the event).
    ``materialize``: a table, computed once for the queries that read it; ``src``: the raw rows."""
    return f"""
    CREATE OR REPLACE TEMP {'TABLE' if materialize else 'VIEW'} ev AS
    WITH dates AS (
        SELECT DISTINCT event_date FROM {src}
        WHERE event_date IN (SELECT d FROM affected) OR CAST(received_at AS DATE) IN (SELECT d FROM affected)
    ), dedup AS (
        SELECT * FROM {src} WHERE event_date IN (SELECT event_date FROM dates)
        QUALIFY row_number() OVER (PARTITION BY {EVENT_KEY} ORDER BY {FIRST_COPY}) = 1
    )
    SELECT *, {skew_columns(skew_s)}
    FROM dedup
    """


def currency_divisor(col: str) -> str:
    """SQL for 10 ** (the currency's minor-unit exponent), as a decimal: minor units / it = major units."""
    e0 = ", ".join(f"'{c}'" for c in _EXP0)
    e3 = ", ".join(f"'{c}'" for c in _EXP3)
    return f"CASE WHEN {col} IN ({e0}) THEN 1.0 WHEN {col} IN ({e3}) THEN 1000.0 ELSE 100.0 END"


class Payload:
    """Several fields of ``payload`` from one JSON parse: ``parse`` is a list column ``j`` of
    their text values (as ``json_extract_string`` gives each), ``self[path]`` one of them.

    Extracting each field on its own parses the payload once per field (most of a
    transform's cost: ten fields of a transaction cost about four times one list)."""

    def __init__(self, *paths: str) -> None:
        self.paths = paths

    def parse(self) -> str:
        return "json_extract_string(payload, [" + ", ".join(f"'$.{p}'" for p in self.paths) + "]) AS j"

    def __getitem__(self, path: str) -> str:
        return f"j[{self.paths.index(path) + 1}]"


_TX = Payload("transaction_id", "product_id", "slot", "price_minor", "currency", "payment_method", "payment_status",
              "vend_status", "failure_reason")

TRANSACTIONS = f"""
WITH p AS (
    SELECT event_id, device_id, site_id, event_time, day, received_at, clock_skewed, {_TX.parse()}
    FROM ev WHERE type = 'transaction' AND day IN (SELECT d FROM affected)
), t AS (
    SELECT event_id, device_id, site_id, event_time, day, received_at, clock_skewed,
        {_TX['transaction_id']} AS transaction_id,
        {_TX['product_id']} AS product_id,
        {_TX['slot']} AS slot,
        TRY_CAST({_TX['price_minor']} AS BIGINT) AS price_raw,
        upper({_TX['currency']}) AS currency,
        lower({_TX['payment_method']}) AS payment_method,
        lower({_TX['payment_status']}) AS payment_status,
        lower({_TX['vend_status']}) AS vend_status,
        {_TX['failure_reason']} AS failure_reason
    FROM p
)
SELECT event_id, coalesce(transaction_id, event_id) AS transaction_id, device_id, site_id,
    event_time, day AS event_date, received_at, clock_skewed, product_id, slot,
    -- impossible: negative prices or above 100,000 major units
    CASE WHEN price_raw BETWEEN 0 AND 10000000 THEN price_raw END AS price_minor,
    CASE WHEN price_raw BETWEEN 0 AND 10000000 THEN price_raw / {currency_divisor('currency')} END AS amount,
    currency, payment_method, payment_status, vend_status, failure_reason,
    coalesce(payment_status = 'success' AND vend_status = 'success', false) AS sold
FROM t
-- a device retrying a sale with a fresh event id: one transaction id counts once a day
QUALIFY row_number() OVER (PARTITION BY device_id, coalesce(transaction_id, event_id), day ORDER BY event_time, event_id) = 1
"""


_TELE = Payload("cabinet_temp_c", "cabinet_temp_f", "refrigeration_temp_c", "refrigeration_temp_f", "voltage_v",
                "voltage_mv", "door_open", "power_on")


def _num(path: str) -> str:
    return f"TRY_CAST({_TELE[path]} AS DOUBLE)"


def _temp(name: str) -> str:
    # unit normalisation: firmware that reports Fahrenheit sends <name>_f
    return f"coalesce({_num(name + '_c')}, ({_num(name + '_f')} - 32) * 5 / 9)"


# per device-hour partial aggregates (sums and counts merge; averages do not)
TELEMETRY_PARTS = f"""
WITH p AS (
    SELECT device_id, site_id, event_time, day, {_TELE.parse()}
    FROM ev WHERE type = 'telemetry' AND day IN (SELECT d FROM affected)
), t AS (
    SELECT device_id, site_id, event_time, day,
        {_temp('cabinet_temp')} AS cab_in,
        {_temp('refrigeration_temp')} AS ref_in,
        coalesce({_num('voltage_v')}, {_num('voltage_mv')} / 1000) AS volt_in,
        TRY_CAST({_TELE['door_open']} AS BOOLEAN) AS door_open,
        TRY_CAST({_TELE['power_on']} AS BOOLEAN) AS power_on
    FROM p
), c AS (
    -- impossible readings become NULL (and are counted), the sample itself is kept
    SELECT *,
        CASE WHEN cab_in BETWEEN -40 AND 85 THEN cab_in END AS cab,
        CASE WHEN ref_in BETWEEN -40 AND 85 THEN ref_in END AS ref,
        CASE WHEN volt_in BETWEEN 0 AND 400 THEN volt_in END AS volt,
        CASE WHEN door_open THEN 1.0 WHEN door_open IS NOT NULL THEN 0.0 END AS door,
        (cab_in IS NOT NULL AND NOT cab_in BETWEEN -40 AND 85)::INT
          + (ref_in IS NOT NULL AND NOT ref_in BETWEEN -40 AND 85)::INT
          + (volt_in IS NOT NULL AND NOT volt_in BETWEEN 0 AND 400)::INT AS bad
    FROM t
)
SELECT device_id, max(site_id) AS site_id, date_trunc('hour', event_time) AS hour,
    CAST(date_trunc('hour', event_time) AS DATE) AS event_date, count(*) AS samples,
    min(cab) AS cabinet_temp_min, max(cab) AS cabinet_temp_max, sum(cab) AS cabinet_temp_sum, count(cab) AS cabinet_temp_samples,
    min(ref) AS refrigeration_temp_min, max(ref) AS refrigeration_temp_max, sum(ref) AS refrigeration_temp_sum,
    count(ref) AS refrigeration_temp_samples,
    min(volt) AS voltage_min, max(volt) AS voltage_max, sum(volt) AS voltage_sum, count(volt) AS voltage_samples,
    sum(door) AS door_open_sum, count(door) AS door_samples,
    count(*) FILTER (WHERE power_on = false) AS power_off_samples,
    coalesce(sum(bad), 0) AS rejected_values
FROM c GROUP BY device_id, date_trunc('hour', event_time)
"""


def telemetry_final(parts: str) -> str:
    """analytics.telemetry_hourly rows from partial aggregates in ``parts``."""
    return f"""
SELECT device_id, site_id, hour, event_date, samples,
    cabinet_temp_min, cabinet_temp_max, cabinet_temp_sum / nullif(cabinet_temp_samples, 0) AS cabinet_temp_avg,
    refrigeration_temp_min, refrigeration_temp_max,
    refrigeration_temp_sum / nullif(refrigeration_temp_samples, 0) AS refrigeration_temp_avg,
    voltage_min, voltage_max, voltage_sum / nullif(voltage_samples, 0) AS voltage_avg,
    -- share of samples with the door open, as minutes of the hour
    60.0 * door_open_sum / nullif(door_samples, 0) AS door_open_minutes,
    power_off_samples, rejected_values,
    cabinet_temp_samples, refrigeration_temp_samples, voltage_samples, door_samples
FROM {parts}
"""


TELEMETRY_HOURLY = telemetry_final(f"({TELEMETRY_PARTS})")

# analytics.telemetry_hourly rows back to partial aggregates (``old``), merged with new ones (``parts``)
TELEMETRY_MERGE = telemetry_final("""(
    WITH o AS (
        SELECT device_id, site_id, hour, event_date, samples,
            cabinet_temp_min, cabinet_temp_max, cabinet_temp_avg * cabinet_temp_samples AS cabinet_temp_sum,
            cabinet_temp_samples,
            refrigeration_temp_min, refrigeration_temp_max,
            refrigeration_temp_avg * refrigeration_temp_samples AS refrigeration_temp_sum, refrigeration_temp_samples,
            voltage_min, voltage_max, voltage_avg * voltage_samples AS voltage_sum, voltage_samples,
            door_open_minutes / 60.0 * door_samples AS door_open_sum, door_samples, power_off_samples, rejected_values
        FROM old WHERE (device_id, hour) IN (SELECT (device_id, hour) FROM parts)
    ), u AS (SELECT * FROM o UNION ALL BY NAME SELECT * FROM parts)
    SELECT device_id, max(site_id) AS site_id, hour, min(event_date) AS event_date, sum(samples) AS samples,
        min(cabinet_temp_min) AS cabinet_temp_min, max(cabinet_temp_max) AS cabinet_temp_max,
        sum(cabinet_temp_sum) AS cabinet_temp_sum, sum(cabinet_temp_samples) AS cabinet_temp_samples,
        min(refrigeration_temp_min) AS refrigeration_temp_min, max(refrigeration_temp_max) AS refrigeration_temp_max,
        sum(refrigeration_temp_sum) AS refrigeration_temp_sum, sum(refrigeration_temp_samples) AS refrigeration_temp_samples,
        min(voltage_min) AS voltage_min, max(voltage_max) AS voltage_max,
        sum(voltage_sum) AS voltage_sum, sum(voltage_samples) AS voltage_samples,
        sum(door_open_sum) AS door_open_sum, sum(door_samples) AS door_samples,
        sum(power_off_samples) AS power_off_samples, sum(rejected_values) AS rejected_values
    FROM u GROUP BY device_id, hour
)""") + """
UNION ALL BY NAME
SELECT * FROM old WHERE (device_id, hour) NOT IN (SELECT (device_id, hour) FROM parts)
"""

_ALERT = Payload("slot", "product_id", "count", "level")
_SLOT = '{"slot":"VARCHAR","product_id":"VARCHAR","count":"BIGINT","capacity":"BIGINT","count_after":"BIGINT"}'

INVENTORY = f"""
WITH inv AS (
    SELECT device_id, site_id, event_time, day, event_id, type,
        unnest(from_json(json_extract(payload, '$.slots'), '[{_SLOT}]')) AS s
    FROM ev WHERE type IN ('inventory', 'refill') AND day IN (SELECT d FROM affected)
), rows AS (
    SELECT device_id, site_id, s.slot AS slot, s.product_id AS product_id, event_time AS observed_at, day AS event_date,
        CASE WHEN type = 'refill' THEN s.count_after ELSE s.count END AS count,
        s.capacity AS capacity, type AS source, event_id
    FROM inv
    UNION ALL
    SELECT device_id, site_id, {_ALERT['slot']}, {_ALERT['product_id']}, event_time, day,
        coalesce(TRY_CAST({_ALERT['count']} AS BIGINT), CASE {_ALERT['level']} WHEN 'out' THEN 0 END),
        NULL, 'stock_alert', event_id
    FROM (SELECT *, {_ALERT.parse()} FROM ev WHERE type = 'stock_alert' AND day IN (SELECT d FROM affected))
)
-- impossible: negative counts; unknown counts (refill without count_after) say nothing
SELECT * FROM rows WHERE slot IS NOT NULL AND count IS NOT NULL AND count >= 0
"""

def stockouts(src: str) -> str:
    """Stock-out intervals of the slot observations in ``src`` (each slot's observations, in order)."""
    return f"""
WITH s AS (
    SELECT *, count = 0 AS is_out,
        lag(count = 0) OVER (PARTITION BY device_id, slot ORDER BY observed_at, event_id) AS prev_out
    FROM {src}
), r AS (
    SELECT *, sum(CASE WHEN prev_out IS NULL OR is_out <> prev_out THEN 1 ELSE 0 END)
        OVER (PARTITION BY device_id, slot ORDER BY observed_at, event_id ROWS UNBOUNDED PRECEDING) AS run
    FROM s
), runs AS (
    SELECT device_id, slot, run, bool_and(is_out) AS out, min(observed_at) AS started_at,
        max(site_id) AS site_id, max(product_id) AS product_id
    FROM r GROUP BY device_id, slot, run
), x AS (
    SELECT *, lead(started_at) OVER (PARTITION BY device_id, slot ORDER BY run) AS ended_at FROM runs
)
SELECT device_id, site_id, slot, product_id, started_at, ended_at,
    epoch(ended_at) - epoch(started_at) AS duration_s, CAST(started_at AS DATE) AS event_date
FROM x WHERE out
"""


STOCKOUTS = stockouts("analytics.inventory")

_FAULT = Payload("code", "state", "component", "slot", "detail")

FAULTS = f"""
SELECT event_id, device_id, site_id, event_time, day AS event_date,
    lower({_FAULT['code']}) AS code,
    coalesce({_FAULT['state']}, 'raised') AS state,
    {_FAULT['component']} AS component,
    {_FAULT['slot']} AS slot,
    {_FAULT['detail']} AS detail
FROM (SELECT *, {_FAULT.parse()} FROM ev WHERE type = 'fault' AND day IN (SELECT d FROM affected))
WHERE {_FAULT['code']} IS NOT NULL
"""

_SECURITY = Payload("kind", "magnitude_g", "attempts", "detail")

SECURITY_EVENTS = f"""
SELECT event_id, device_id, site_id, event_time, day AS event_date,
    {_SECURITY['kind']} AS kind,
    CASE WHEN TRY_CAST({_SECURITY['magnitude_g']} AS DOUBLE) >= 0
         THEN TRY_CAST({_SECURITY['magnitude_g']} AS DOUBLE) END AS magnitude_g,
    TRY_CAST({_SECURITY['attempts']} AS BIGINT) AS attempts,
    {_SECURITY['detail']} AS detail
FROM (SELECT *, {_SECURITY.parse()} FROM ev WHERE type = 'security' AND day IN (SELECT d FROM affected))
WHERE {_SECURITY['kind']} IS NOT NULL
"""

# per device-day partial aggregates; the day's active 5-minute buckets as a bitstring
DEVICE_DAILY_PARTS = """
WITH d AS (
    SELECT device_id, day, max(site_id) AS site_id, count(*) AS events,
        count(*) FILTER (WHERE type = 'heartbeat') AS heartbeats,
        bitstring_agg(CAST(floor((epoch(event_time) - epoch(CAST(day AS TIMESTAMPTZ))) / 300) AS INTEGER), 0, 287)
            AS active_buckets,
        min(event_time) AS first_event_at, max(event_time) AS last_event_at,
        count(*) FILTER (WHERE type = 'fault') AS faults, count(*) FILTER (WHERE type = 'security') AS security_events
    FROM ev WHERE day IN (SELECT d FROM affected) GROUP BY device_id, day
), tx AS (
    SELECT device_id, event_date AS day, count(*) AS transactions,
        count(*) FILTER (WHERE sold) AS sales,
        coalesce(sum(price_minor) FILTER (WHERE sold), 0) AS revenue_minor,
        count(*) FILTER (WHERE payment_status = 'success' AND vend_status = 'failure') AS failed_vends,
        count(*) FILTER (WHERE payment_status = 'failure') AS failed_payments
    FROM tx_new GROUP BY 1, 2
)
SELECT d.device_id, d.site_id, d.day AS event_date, d.events, d.heartbeats,
    coalesce(tx.transactions, 0) AS transactions, coalesce(tx.sales, 0) AS sales,
    coalesce(tx.revenue_minor, 0) AS revenue_minor, coalesce(tx.failed_vends, 0) AS failed_vends,
    coalesce(tx.failed_payments, 0) AS failed_payments, d.faults, d.security_events,
    d.active_buckets, d.first_event_at, d.last_event_at
FROM d LEFT JOIN tx ON tx.device_id = d.device_id AND tx.day = d.day
"""


def device_daily_final(parts: str) -> str:
    """analytics.device_daily rows from partial aggregates; ``horizon(newest)`` is the newest receipt in raw.

    uptime: share of the day's 5-minute buckets in which the device sent anything;
    the newest day counts only the buckets up to the newest event seen in the lake."""
    return f"""
SELECT device_id, site_id, event_date, events, heartbeats, transactions, sales, revenue_minor, failed_vends,
    failed_payments, faults, security_events,
    least(100.0, 100.0 * bit_count(active_buckets) / greatest(1.0, ceil(
        (least(epoch(event_date + INTERVAL 1 DAY), epoch(h.newest)) - epoch(CAST(event_date AS TIMESTAMPTZ))) / 300.0)))
        AS uptime_pct,
    first_event_at, last_event_at, CAST(active_buckets AS VARCHAR) AS active_buckets
FROM {parts} CROSS JOIN horizon h
"""


DEVICE_DAILY = device_daily_final(f"({DEVICE_DAILY_PARTS})")

# stored rows (``old``, the partitions being rewritten) merged with new partial aggregates (``parts``)
DEVICE_DAILY_MERGE = device_daily_final("""(
    WITH o AS (SELECT * REPLACE (CAST(active_buckets AS BIT) AS active_buckets) FROM old),
    u AS (SELECT * FROM o UNION ALL BY NAME SELECT * FROM parts)
    SELECT device_id, max(site_id) AS site_id, event_date, sum(events) AS events, sum(heartbeats) AS heartbeats,
        sum(transactions) AS transactions, sum(sales) AS sales, sum(revenue_minor) AS revenue_minor,
        sum(failed_vends) AS failed_vends, sum(failed_payments) AS failed_payments, sum(faults) AS faults,
        sum(security_events) AS security_events, bit_or(active_buckets) AS active_buckets,
        min(first_event_at) AS first_event_at, max(last_event_at) AS last_event_at
    FROM u GROUP BY device_id, event_date
)""")

def device_seen(src: str) -> str:
    """What the lake saw of each device in raw rows ``src`` (every copy counts: raw-level facts).

    The firmware is the one reported last (by device clock; ties: the greater version)."""
    return f"""
SELECT device_id, max(site_id) AS site_id, min(received_at) AS first_seen_at, max(received_at) AS last_seen_at,
    count(*) AS events, max(fw).v AS firmware_version, max(fw).at AS firmware_reported_at
FROM (
    SELECT device_id, site_id, received_at,
        CASE WHEN fv IS NOT NULL THEN {{'at': occurred_at, 'v': fv}} END AS fw
    FROM (SELECT *, CASE WHEN type IN ('heartbeat', 'config') THEN json_extract_string(payload, '$.firmware_version') END
                    AS fv FROM {src})
) GROUP BY device_id
"""


DEVICE_SEEN = device_seen("raw.events")

# the device counters of analytics.dim_devices (``prev``) with new raw rows folded in
DEVICE_SEEN_FOLD = f"""
WITH u AS (
    SELECT device_id, reported_site_id AS site_id, first_seen_at, last_seen_at, events,
        CASE WHEN firmware_version IS NOT NULL THEN {{'at': firmware_reported_at, 'v': firmware_version}} END AS fw
    FROM prev WHERE events > 0
    UNION ALL
    SELECT device_id, site_id, first_seen_at, last_seen_at, events,
        CASE WHEN firmware_version IS NOT NULL THEN {{'at': firmware_reported_at, 'v': firmware_version}} END
    FROM ({device_seen('new_rows')})
)
SELECT device_id, max(site_id) AS site_id, min(first_seen_at) AS first_seen_at, max(last_seen_at) AS last_seen_at,
    sum(events) AS events, max(fw).v AS firmware_version, max(fw).at AS firmware_reported_at
FROM u GROUP BY device_id
"""

def product_devices(tx: str, inv: str) -> str:
    """Per product and device: sales from transaction rows ``tx``, slot observations from inventory rows ``inv``."""
    return f"""
WITH t AS (
    SELECT product_id, device_id, count(*) AS transactions, min(event_time) AS first_sold_at,
        max(event_time) AS last_sold_at,
        max(CASE WHEN price_minor IS NOT NULL THEN {{'t': event_time, 'p': price_minor, 'c': currency}} END) AS price
    FROM {tx} WHERE product_id IS NOT NULL GROUP BY 1, 2
), i AS (
    SELECT product_id, device_id, count(*) AS stock_observations, min(observed_at) AS first_stocked_at,
        max(observed_at) AS last_stocked_at
    FROM {inv} WHERE product_id IS NOT NULL GROUP BY 1, 2
)
SELECT coalesce(t.product_id, i.product_id) AS product_id, coalesce(t.device_id, i.device_id) AS device_id,
    coalesce(t.transactions, 0) AS transactions, t.first_sold_at, t.last_sold_at,
    t.price.t AS last_price_at, t.price.p AS last_price_minor, t.price.c AS last_currency,
    coalesce(i.stock_observations, 0) AS stock_observations, i.first_stocked_at, i.last_stocked_at
FROM t FULL OUTER JOIN i ON t.product_id = i.product_id AND t.device_id = i.device_id
"""


PRODUCT_DEVICES = product_devices("analytics.transactions", "analytics.inventory")

# stored rows (``prev``) with the rows of new transactions and observations (``new_tx``, ``new_inv``) folded in
PRODUCT_DEVICES_FOLD = f"""
WITH u AS (
    SELECT * FROM prev
    UNION ALL BY NAME SELECT * FROM ({product_devices('new_tx', 'new_inv')})
)
SELECT product_id, device_id, sum(transactions) AS transactions, min(first_sold_at) AS first_sold_at,
    max(last_sold_at) AS last_sold_at,
    max(CASE WHEN last_price_at IS NOT NULL THEN {{'t': last_price_at, 'p': last_price_minor, 'c': last_currency}} END).t
        AS last_price_at,
    max(CASE WHEN last_price_at IS NOT NULL THEN {{'t': last_price_at, 'p': last_price_minor, 'c': last_currency}} END).p
        AS last_price_minor,
    max(CASE WHEN last_price_at IS NOT NULL THEN {{'t': last_price_at, 'p': last_price_minor, 'c': last_currency}} END).c
        AS last_currency,
    sum(stock_observations) AS stock_observations, min(first_stocked_at) AS first_stocked_at,
    max(last_stocked_at) AS last_stocked_at
FROM u GROUP BY product_id, device_id
"""

# one row per product, from analytics.product_devices rows (``product_devices``)
DIM_PRODUCTS = """
SELECT product_id,
    max(CASE WHEN last_price_at IS NOT NULL THEN {'t': last_price_at, 'p': last_price_minor, 'c': last_currency} END).p
        AS last_price_minor,
    max(CASE WHEN last_price_at IS NOT NULL THEN {'t': last_price_at, 'p': last_price_minor, 'c': last_currency} END).c
        AS currency,
    greatest(count(*) FILTER (WHERE transactions > 0), count(*) FILTER (WHERE stock_observations > 0)) AS devices,
    sum(transactions) AS transactions,
    least(min(first_sold_at), min(first_stocked_at)) AS first_seen_at,
    greatest(max(last_sold_at), max(last_stocked_at)) AS last_seen_at
FROM product_devices GROUP BY product_id
"""


_LOG = Payload("kind", "level", "message", "crash_dump")

DEVICE_LOGS = f"""
SELECT event_id, device_id, site_id, event_time, day AS event_date, received_at,
    coalesce(lower({_LOG['kind']}), 'application') AS kind,
    coalesce(lower({_LOG['level']}), 'info') AS level,
    {_LOG['message']} AS message,
    {_LOG['crash_dump']} AS crash_dump
FROM (SELECT *, {_LOG.parse()} FROM ev WHERE type = 'log' AND day IN (SELECT d FROM affected))
"""
