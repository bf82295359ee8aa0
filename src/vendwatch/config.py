"""One typed settings object, from a TOML file and ``VENDWATCH_*`` environment variables.

Precedence (lowest first): defaults, the config file (``--config`` or
``VENDWATCH_CONFIG``), environment variables, command-line flags. Nested keys map to
environment variables with a double underscore: ``ingest.max_batch_events`` is
``VENDWATCH_INGEST__MAX_BATCH_EVENTS``. Validation happens once at start; an error
names the bad key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import Struct

from vendwatch.incidents.config import IncidentsSettings
from vendwatch.observe.logs import LogSettingsError
from vendwatch.observe.logs import check as check_log_settings

DEFAULT_ROLES = ("collector", "device-state", "detector", "router", "orchestrator", "lake-writer", "lake-jobs")


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


class _Section(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8080
    # roles run by `vendwatch serve` (all of them by default)
    roles: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ROLES))
    # `vendwatch serve` and `vendwatch demo` run each role without HTTP endpoints (every stage) in a
    # child process of its own, supervised and restarted by the server process, so the stages use
    # every core; false: all roles are threads of the one process (one core, less memory)
    role_processes: bool = True
    # at start, `serve` and `run` wait this long for the log (Kafka) and the state database
    # (PostgreSQL) to answer, saying what they wait for, then stop with the reason
    startup_wait_s: float = 60.0
    # connection guards (docs/security.md): a public listener must shed idle and oversized clients
    header_timeout_s: float = 10.0  # request line + headers must arrive within this; else closed
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_header_bytes: int = 16_384  # request line + headers; over it: 431
    max_connections: int = 4096  # open connections + running requests; over it: 503 (except /livez)
    max_connections_per_client: int = 256  # per client address; 0: no cap (e.g. behind one proxy address)
    auth_failures_per_min: float = 60.0  # failed authentications per client address before 429; 0: no limit
    auth_failures_burst: float = 30.0


class IngestSettings(_Section):
    max_body_bytes: int = 1_048_576  # after gzip decompression too
    max_batch_events: int = 1000
    max_event_bytes: int = 131_072  # one event's JSON (unknown fields included); a crash dump fits
    max_future_skew_s: float = 300.0  # occurred_at later than now + this is refused
    late_after_s: float = 3600.0  # older than now - this is accepted and marked late
    max_age_days: float = 30.0  # older than this is refused
    rate_limit_events_per_s: float = 200.0  # per device, token bucket
    rate_limit_burst: float = 2000.0
    # how long a device's event ids are remembered (retries within it are never stored twice);
    # the embedded index holds ~110 bytes per event id received within the window
    dedupe_window_s: float = 86_400.0
    group_commit_max_events: int = 20_000
    # 0: commit as soon as the writer is free; what arrives meanwhile joins the next commit
    # (measured faster than waiting, see docs/benchmarks.md)
    group_commit_max_wait_ms: float = 0.0
    append_timeout_s: float = 10.0  # longer than this waiting for the log: 503
    auth_cache_s: float = 5.0  # a disabled or expired token keeps working at most this long


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "vendwatch."
    partitions: int = 12
    replication_factor: int = 1
    security_protocol: str = "PLAINTEXT"  # SASL_SSL for MSK
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    client_id: str = "vendwatch"
    linger_ms: float = 5.0  # producer batching delay; appends wait for delivery anyway
    compression: str = "lz4"
    delivery_timeout_ms: int = 30_000  # an append fails (LogUnavailable) after this
    request_timeout_ms: int = 30_000  # admin requests (topic creation)
    session_timeout_ms: int = 10_000  # a dead consumer's partitions move after this
    max_poll_interval_ms: int = 300_000
    extra: dict[str, str] = {}  # passed to librdkafka as-is (e.g. sasl.oauthbearer.* for MSK IAM)


class BusSettings(_Section):
    backend: Literal["sqlite", "kafka"] = "sqlite"
    partitions: int = 4
    retention_hours: float = 24 * 7.0
    retention_check_s: float = 300.0  # how often the collector drops expired records
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)


class StateSettings(_Section):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    postgres_dsn: str = "postgresql://vendwatch@127.0.0.1:5432/vendwatch"
    pool_size: int = 8
    # device-state: once caught up with the log, at most one transaction per this interval
    # (each carries more events: less CPU per event; the state shows up to this much
    # later); 0: a transaction per poll
    projector_poll_interval_s: float = 0.1


class MqttSettings(_Section):
    """The MQTT bridge (role mqtt-bridge): how it reaches the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str = "vendwatch-bridge"
    password: str | None = None  # VENDWATCH_MQTT__PASSWORD; mount from a Secret
    tls: bool = False
    tls_ca: str | None = None  # CA bundle for the broker's certificate (None: system CAs)
    share_group: str = "vendwatch"  # replicas in one group split the messages ($share/<group>/...)
    topic: str = "vendwatch/v1/+/events"  # + is the device id, enforced by the broker's ACL
    dex_topic: str = "vendwatch/v1/+/dex"  # EVA-DTS audit files, one per message
    client_id_prefix: str = "vendwatch-bridge"
    keepalive_s: int = 30
    max_batch_messages: int = 1000  # messages appended (and then acknowledged) together
    max_wait_ms: float = 5.0
    max_payload_bytes: int = 1_048_576


class LakeCatalogSettings(_Section):
    """Where the Iceberg catalog and warehouse live (see docs/lake.md)."""

    # sql: pyiceberg SQL catalog (SQLite embedded, PostgreSQL scale-out; Java's JDBC catalog reads it)
    type: Literal["sql", "rest", "glue"] = "sql"
    name: str = "vendwatch"
    # sql: SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db; rest: the REST endpoint.
    # Default: sqlite:///<data_dir>/lake/catalog.db
    uri: str | None = None
    # file:// path or s3://bucket/prefix. Default: <data_dir>/lake/warehouse
    warehouse: str | None = None
    # passed to pyiceberg as-is: s3.endpoint, s3.access-key-id, glue.region, token, ...
    properties: dict[str, str] = {}


class LakeSettings(_Section):
    catalog: LakeCatalogSettings = msgspec.field(default_factory=LakeCatalogSettings)
    # raw-zone writer: a batch is committed when any threshold is reached
    batch_max_events: int = 200_000
    batch_max_bytes: int = 128 * 1024 * 1024
    batch_max_wait_s: float = 30.0
    # when the log goes quiet, a buffer that filled at a rate reaching this many events
    # within batch_max_wait_s (the end of a burst) is committed at once; 0 always waits
    batch_idle_min_events: int = 10_000
    # maintenance
    target_file_mb: int = 128  # compaction output size
    small_file_mb: int = 16  # files below this count as small
    compact_min_files: int = 4  # a partition with at least this many small files is compacted
    snapshot_retention_hours: float = 7 * 24.0
    # within the retention, lake maintain keeps every snapshot this recent, then the newest of
    # each hour for a day, then of each day (time travel: exact, then to the hour, then to the day)
    snapshot_keep_all_hours: float = 1.0
    orphan_min_age_hours: float = 1.0  # younger unreferenced files may be an in-flight write
    # rows older than N days are deleted; key "table" or "table:type" (raw.events by event type)
    retention_days: dict[str, float] = msgspec.field(
        default_factory=lambda: {"raw.events:log": 30.0, "raw.events:heartbeat": 90.0, "raw.rejected": 30.0,
                                 "raw.system_logs": 90.0, "analytics.device_logs": 365.0}
    )
    # ETL cleansing
    max_clock_skew_s: float = 300.0  # occurred_at beyond received_at + this: device clock is wrong
    # SQL and reports
    sql_row_limit: int = 10_000
    sql_timeout_s: float = 30.0
    sql_memory_limit: str = "2GB"
    sql_threads: int = 2
    sql_max_concurrent: int = 2  # POST /v1/sql and reports beyond this wait (each may use sql_memory_limit)
    sql_max_result_bytes: int = 64 * 1024 * 1024  # an answer is truncated past this (Arrow size)
    # HTTP queries run in worker processes capped at this address space (RLIMIT_AS): a query
    # that exhausts it ends its worker, never the server; 0 runs them in the server process
    sql_worker_memory_mb: int = 4096
    stale_after_s: float = 900.0  # device-last-seen report: silent longer than this is stale
    # the lake-jobs role (part of serve and the demo): 0 turns a job off
    etl_interval_s: float = 300.0  # refresh the analytics tables (what reports read) this often
    maintain_interval_s: float = 3600.0  # compaction, snapshot expiry, retention this often
    # compare DEX audit reads with telemetry and cash collections this often (what `vendwatch dex
    # reconcile` does) and append new findings, which the default rules turn into incidents
    dex_reconcile_interval_s: float = 3600.0
    dex_reconcile_days: int = 7  # each scheduled reconciliation covers reads of this many last days


class DetectSettings(_Section):
    """The detector (``vendwatch.detect``); see docs/detection.md."""

    # extra rule files loaded after the shipped default pack (a rule id may appear once)
    rule_files: list[str] = []
    default_pack: bool = True  # load src/vendwatch/detect/rules/default.yaml
    # an event up to this late still retracts an offline signal it proves wrong (a false
    # alarm); live timers do not wait for it (a replay of a backlog holds timers back by it)
    allowed_lateness_s: float = 60.0
    # "wall": timers follow wall time once caught up with the log (live);
    # "event": timers follow event time only (replay, deterministic tests)
    clock: Literal["wall", "event"] = "wall"
    tick_interval_s: float = 1.0  # how often timers are checked when the log is quiet
    checkpoint_interval_s: float = 5.0  # state + offsets are saved at most this often
    # signals of consecutive polls are appended to the `signals` topic together, waiting at
    # most this long (and always before a checkpoint); 0: one append per poll
    signal_flush_s: float = 0.05
    batch_size: int = 2000
    recent_ids_per_device: int = 32  # duplicate-event memory per device
    site_min_devices: int = 3  # site-level offline signal needs at least this many machines...
    site_min_fraction: float = 0.5  # ...and this share of the site's machines
    # per-device offline signals wait this long so they can name a site outage as their
    # cause; 0: they fire at their deadline and the incident layer groups them
    # (incidents.group_wait_s)
    site_wait_s: float = 0.0
    registry_refresh_s: float = 60.0  # re-read heartbeat intervals / meta from the registry


class ConsoleSettings(_Section):
    """The web console (``vendwatch.console``); see docs/console.md."""

    # background map tiles, e.g. "https://tile.openstreetmap.org/{z}/{x}/{y}.png" ("" = no tiles: the
    # map draws positions on a plain background); the tile server's origin is added to the CSP img-src
    map_tiles_url: str = ""
    map_attribution: str = ""  # shown under the map, as the tile provider's terms require
class SqlServerSettings(_Section):
    """The lake's PostgreSQL-protocol SQL endpoint (role sql-server; docs/observability.md)."""

    host: str = "127.0.0.1"
    port: int = 5433
    role: Literal["viewer", "operator", "admin"] = "operator"  # operator token role needed to log in
    tls_cert: str | None = None  # PEM certificate chain; with tls_key, clients can use sslmode=require
    tls_key: str | None = None
    require_tls: bool = False  # refuse clients that do not negotiate TLS
    allow_plaintext: bool = False  # a non-loopback listener without TLS (trusted network only)
    max_connections: int = 64
    idle_timeout_s: float = 600.0  # a connection silent this long is closed


class Settings(_Section):
    data_dir: str = "./vendwatch-data"
    log_level: str = "info"
    log_format: Literal["json", "text"] = "text"
    # append this process's log lines (at log_archive_level and above) to the system_logs topic,
    # archived by the lake writer in raw.system_logs (docs/observability.md). "info" archives
    # every line, at the cost of writes to the log the pipeline shares (embedded: one SQLite file)
    log_archive: bool = True
    log_archive_level: str = "warning"
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    bus: BusSettings = msgspec.field(default_factory=BusSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    # sections owned by later stages; each is a free-form table validated by its owner
    detect: DetectSettings = msgspec.field(default_factory=DetectSettings)
    incidents: IncidentsSettings = msgspec.field(default_factory=IncidentsSettings)
    lake: LakeSettings = msgspec.field(default_factory=LakeSettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    sql_server: SqlServerSettings = msgspec.field(default_factory=SqlServerSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a table")
        tree = node
    tree[path[-1]] = value


def _parse_env_value(raw: str) -> Any:
    """Env values are TOML scalars when they parse as one (numbers, booleans, arrays), else strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge defaults, file, environment and flag overrides (dotted keys) and validate."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    path = config_file or env.get("VENDWATCH_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    for key, raw in env.items():
        if not key.startswith("VENDWATCH_") or key == "VENDWATCH_CONFIG" or key.startswith("VENDWATCH_TEST_"):
            continue  # VENDWATCH_TEST_* name the test services (scripts/services.sh env), not settings
        parts = key[len("VENDWATCH_"):].lower().split("__")
        _set_path(tree, parts, _parse_env_value(raw))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(tree, dotted.split("."), value)
    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid configuration: {_humanize(str(e))}") from None
    _check(settings)
    return settings


def _humanize(msg: str) -> str:
    # msgspec says "... - at `$.ingest.max_body_bytes`"; present the key as the user writes it
    if " - at `$." in msg:
        text, _, where = msg.partition(" - at `$.")
        return f"{where.rstrip('`')}: {text}"
    return msg


def _check(s: Settings) -> None:
    try:
        check_log_settings(s.log_level, s.log_format)
    except LogSettingsError as e:
        raise ConfigError(f"invalid configuration: {e}") from None
    positive = {
        "server.port": s.server.port,
        "server.header_timeout_s": s.server.header_timeout_s,
        "server.keep_alive_s": s.server.keep_alive_s,
        "server.max_header_bytes": s.server.max_header_bytes,
        "server.max_connections": s.server.max_connections,
        "ingest.max_body_bytes": s.ingest.max_body_bytes,
        "ingest.max_batch_events": s.ingest.max_batch_events,
        "ingest.max_event_bytes": s.ingest.max_event_bytes,
        "ingest.rate_limit_events_per_s": s.ingest.rate_limit_events_per_s,
        "ingest.rate_limit_burst": s.ingest.rate_limit_burst,
        "ingest.group_commit_max_events": s.ingest.group_commit_max_events,
        "bus.partitions": s.bus.partitions,
        "bus.kafka.partitions": s.bus.kafka.partitions,
        "lake.batch_max_events": s.lake.batch_max_events,
        "lake.batch_max_bytes": s.lake.batch_max_bytes,
        "lake.batch_max_wait_s": s.lake.batch_max_wait_s,
        "lake.target_file_mb": s.lake.target_file_mb,
        "lake.compact_min_files": s.lake.compact_min_files,
        "lake.sql_row_limit": s.lake.sql_row_limit,
        "lake.sql_timeout_s": s.lake.sql_timeout_s,
        "lake.sql_threads": s.lake.sql_threads,
        "lake.sql_max_concurrent": s.lake.sql_max_concurrent,
        "lake.sql_max_result_bytes": s.lake.sql_max_result_bytes,
        "detect.tick_interval_s": s.detect.tick_interval_s,
        "detect.batch_size": s.detect.batch_size,
        "detect.recent_ids_per_device": s.detect.recent_ids_per_device,
        "detect.site_min_devices": s.detect.site_min_devices,
        "detect.site_min_fraction": s.detect.site_min_fraction,
    }
    for key, value in positive.items():
        if not value > 0:  # NaN too
            raise ConfigError(f"invalid configuration: {key}: must be > 0, got {value}")
    non_negative = {
        "lake.batch_idle_min_events": s.lake.batch_idle_min_events,
        "ingest.max_future_skew_s": s.ingest.max_future_skew_s,
        "ingest.late_after_s": s.ingest.late_after_s,
        "ingest.group_commit_max_wait_ms": s.ingest.group_commit_max_wait_ms,
        "ingest.auth_cache_s": s.ingest.auth_cache_s,
        "lake.etl_interval_s": s.lake.etl_interval_s,
        "lake.maintain_interval_s": s.lake.maintain_interval_s,
        "server.max_connections_per_client": s.server.max_connections_per_client,
        "lake.sql_worker_memory_mb": s.lake.sql_worker_memory_mb,
        "server.auth_failures_per_min": s.server.auth_failures_per_min,
        "server.auth_failures_burst": s.server.auth_failures_burst,
        "state.projector_poll_interval_s": s.state.projector_poll_interval_s,
    }
    for key, value in non_negative.items():
        if not value >= 0:  # NaN too
            raise ConfigError(f"invalid configuration: {key}: must be >= 0, got {value}")
    for key, value in {"ingest.max_age_days": s.ingest.max_age_days, "ingest.dedupe_window_s": s.ingest.dedupe_window_s,
                       "ingest.append_timeout_s": s.ingest.append_timeout_s, "bus.retention_hours": s.bus.retention_hours,
                       "bus.retention_check_s": s.bus.retention_check_s}.items():
        if value <= 0:
            raise ConfigError(f"invalid configuration: {key}: must be > 0, got {value}")
    tiles = s.console.map_tiles_url
    if tiles and not (tiles.startswith("https://") or tiles.startswith("http://")) or tiles and "{z}" not in tiles:
        raise ConfigError("invalid configuration: console.map_tiles_url: must be an http(s) URL with {z}, {x} and {y}"
                          f" placeholders, got {tiles!r}")
    if s.ingest.dedupe_window_s > s.bus.retention_hours * 3600:
        # the embedded dedupe index is rebuilt from the log: it cannot remember longer than the log keeps
        raise ConfigError(
            f"invalid configuration: ingest.dedupe_window_s: {s.ingest.dedupe_window_s:g}s is longer than"
            f" bus.retention_hours ({s.bus.retention_hours:g}h); raise the retention or shorten the window"
        )
    for key, value in {
        "detect.allowed_lateness_s": s.detect.allowed_lateness_s,
        "detect.checkpoint_interval_s": s.detect.checkpoint_interval_s,
        "detect.signal_flush_s": s.detect.signal_flush_s,
        "detect.site_wait_s": s.detect.site_wait_s,
    }.items():
        if value < 0:
            raise ConfigError(f"invalid configuration: {key}: must be >= 0, got {value}")
    if s.detect.site_min_fraction > 1:
        raise ConfigError(f"invalid configuration: detect.site_min_fraction: must be <= 1, got {s.detect.site_min_fraction}")
    if not 0 < s.server.port < 65536:
        raise ConfigError(f"invalid configuration: server.port: must be 1-65535, got {s.server.port}")
