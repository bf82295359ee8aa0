"""The shared PostgreSQL dedupe index and the Kafka ingest sink built on it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from tests.contract.kafka_backend import kafka_settings
from tests.contract.pg_backend import fresh_schema

from vendwatch import bus
from vendwatch.config import BusSettings, KafkaSettings, Settings, StateSettings
from vendwatch.ingest.sink import LogIngestSink, Pending, dedupe_key, open_sink


@pytest.fixture
def settings() -> Iterator[Settings]:
    with fresh_schema() as dsn:
        yield Settings(state=StateSettings(backend="postgres", postgres_dsn=dsn))


def _dedupe(settings: Settings, clock=None):  # type: ignore[no-untyped-def]
    from vendwatch.ingest.dedupe_pg import PostgresDedupe

    return PostgresDedupe(settings, clock=clock) if clock else PostgresDedupe(settings)


def test_claim_confirm_and_duplicates(settings: Settings) -> None:
    d = _dedupe(settings)
    assert d.claim([b"a", b"b", b"a"]) == [True, True, False]
    assert d.claim([b"a"]) == [None], "claimed, not yet stored: the caller must retry later"
    d.confirm([b"a", b"b"])
    assert d.claim([b"b", b"c"]) == [False, True]
    d.release([b"c"])
    assert d.claim([b"c"]) == [True], "a released claim can be claimed again"
    d.confirm([b"c"])
    d.release([b"c"])  # release never forgets a stored event
    assert d.claim([b"c"]) == [False]
    d.close()


def test_abandoned_claim_expires_after_the_lease(settings: Settings) -> None:
    # a collector claimed, then died before appending: the event is not stored anywhere
    now = [10_000 * 86_400.0 + 3600]
    crashed, other = _dedupe(settings, clock=lambda: now[0]), _dedupe(settings, clock=lambda: now[0])
    assert crashed.claim([b"k"]) == [True]
    assert other.claim([b"k"]) == [None]
    now[0] += other.lease_s + 1
    assert other.claim([b"k"]) == [True], "the retry stores the event instead of calling it a duplicate"
    crashed.close()
    other.close()


def test_concurrent_replicas_claim_each_key_exactly_once(settings: Settings) -> None:
    replicas = [_dedupe(settings) for _ in range(3)]
    keys = [i.to_bytes(4, "big") for i in range(300)]
    wins: list[list[bool | None]] = [[] for _ in replicas]
    barrier = threading.Barrier(len(replicas))

    def run(i: int) -> None:
        barrier.wait()
        for j in range(0, len(keys), 50):
            wins[i].extend(replicas[i].claim(keys[j : j + 50]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_key = [sum(w[k] is True for w in wins) for k in range(len(keys))]
    assert per_key == [1] * len(keys), "exactly one replica stores each event"
    assert all(w[k] in (True, None) for w in wins for k in range(len(keys))), "unconfirmed: in flight, not duplicate"
    for r in replicas:
        r.close()


def test_window_spans_days_and_old_days_expire(settings: Settings) -> None:
    now = [10_000 * 86_400.0]
    d = _dedupe(settings, clock=lambda: now[0])
    assert d.claim([b"k"]) == [True]
    d.confirm([b"k"])
    now[0] += 86_400  # next day: yesterday's keys still count
    assert d.claim([b"k"]) == [False]
    now[0] += d.window_days * 86_400 + 86_400  # past the window: the day table is dropped
    assert d.claim([b"k"]) == [True]
    tables = d.db.query("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
                        " AND tablename LIKE 'ingest\\_seen\\_%'")
    assert tables[0][0] == 1
    d.close()


def test_dedupe_refuses_sqlite_state() -> None:
    from vendwatch.ingest.dedupe_pg import PostgresDedupe

    with pytest.raises(ValueError, match="state.backend"):
        PostgresDedupe(Settings())


def _pending(device: str, eid: str) -> Pending:
    return Pending(device, eid, f'{{"event_id":"{eid}"}}'.encode())


def test_kafka_sink_stores_new_events_once(settings: Settings) -> None:
    ks = kafka_settings()
    s = Settings(state=settings.state, bus=BusSettings(backend="kafka", kafka=ks))
    from vendwatch.bus.kafka import KafkaLog

    log = KafkaLog(ks)
    sink = open_sink(log, s)
    assert isinstance(sink, LogIngestSink)
    assert sink.commit([_pending("d1", "e1"), _pending("d2", "e2")], [("d3", b"bad")]) == [True, True]
    assert sink.commit([_pending("d1", "e1"), _pending("d1", "e3")], []) == [False, True]
    assert sum(log.end_offsets(bus.EVENTS).values()) == 3
    assert sum(log.end_offsets(bus.REJECTED).values()) == 1
    log.close()


def test_failed_append_releases_claims(settings: Settings) -> None:
    from vendwatch.bus.kafka import KafkaLog
    from vendwatch.ingest.dedupe_pg import PostgresDedupe

    dead = KafkaLog(KafkaSettings(bootstrap_servers="127.0.0.1:1", delivery_timeout_ms=1000,
                                  extra={"socket.connection.setup.timeout.ms": "1000"}))
    dedupe = PostgresDedupe(settings)
    sink = LogIngestSink(dead, dedupe)
    with pytest.raises(bus.LogUnavailable):
        sink.commit([_pending("d1", "e1")], [])
    assert dedupe.claim([dedupe_key("d1", "e1")]) == [True], "the retry must not be taken for a duplicate"
    dedupe.close()
