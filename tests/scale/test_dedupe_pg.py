"""The shared PostgreSQL dedupe index and the Kafka ingest sink built on it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from tests.contract.kafka_backend import kafka_settings
from tests.contract.pg_backend import fresh_schema

from vendwatch import bus
from vendwatch.config import BusSettings, KafkaSettings, Settings, StateSettings
from vendwatch.ingest.sink import Abandoned, LogIngestSink, Pending, dedupe_key, open_sink


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
    [again] = d.claim([b"c"])
    assert isinstance(again, Abandoned), "a released claim is claimed again, and the log is searched first"
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
    claimed_at = now[0]
    now[0] += other.lease_s + 1
    assert other.claim([b"k"]) == [Abandoned(claimed_at, claimed_at + other.lease_s)], (
        "the retry is not called a duplicate: it gets the claim, with the span to search the log over")
    assert crashed.claim([b"k"]) == [None], "taken over: a new lease"
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
    [again] = dedupe.claim([dedupe_key("d1", "e1")])
    assert isinstance(again, Abandoned), "the retry must not be taken for a duplicate; it looks in the log first"
    dedupe.close()


class _Killed(BaseException):
    """SIGKILL, as far as the process that gets it is concerned: nothing after it runs."""


def _shifted_clock(shift: list[float]):  # type: ignore[no-untyped-def]
    return lambda: time.time() + shift[0]


def _kafka_sink(settings: Settings, clock):  # type: ignore[no-untyped-def]
    from vendwatch.bus.kafka import KafkaLog
    from vendwatch.ingest.dedupe_pg import PostgresDedupe

    ks = kafka_settings()
    log = KafkaLog(ks)
    log.create_topic(bus.EVENTS)
    log.create_topic(bus.REJECTED)
    return log, ks, lambda lg: LogIngestSink(lg, PostgresDedupe(settings, clock=clock))


def _stored(log, device: str) -> list[str]:  # type: ignore[no-untyped-def]
    from vendwatch.bus.base import partition_for

    p = partition_for(device, log.partitions(bus.EVENTS))
    return [json.loads(r.value)["event_id"] for r in log.read(bus.EVENTS, p, 0, 1000) if r.key == device]


def test_a_collector_killed_between_append_and_confirm_does_not_make_the_retry_a_second_copy(settings: Settings) -> None:
    shift = [0.0]
    log, ks, make = _kafka_sink(settings, _shifted_clock(shift))
    dying = make(log)

    def killed(keys):  # type: ignore[no-untyped-def]
        raise _Killed

    dying.dedupe.confirm = killed  # type: ignore[method-assign]
    with pytest.raises(_Killed):  # appended to Kafka; the process dies before confirming
        dying.commit([_pending("d1", "e1"), _pending("d1", "e2")], [])
    assert sorted(_stored(log, "d1")) == ["e1", "e2"]

    survivor = make(log)  # another replica (same broker, same PostgreSQL)
    assert survivor.commit([_pending("d1", "e1")], []) == [None], "within the lease: in flight, retry later"
    shift[0] += survivor.dedupe.lease_s + 1  # the lease is over: the device retries the batch
    assert survivor.commit([_pending("d1", "e1"), _pending("d1", "e2"), _pending("d1", "e3")], []) == [False, False, True]
    assert sorted(_stored(log, "d1")) == ["e1", "e2", "e3"], "each event once in the log"
    assert survivor.commit([_pending("d1", "e1")], []) == [False], "found in the log, the claim is confirmed"
    log.close()


def test_an_append_that_failed_after_kafka_stored_it_is_not_stored_again(settings: Settings) -> None:
    # the broker stored the records, but the answer never reached the collector (a delivery
    # report lost to a timeout, a connection cut after the write): the append raises
    log, ks, make = _kafka_sink(settings, time.time)
    sink = make(log)
    real = log.append_many

    def stored_then_failed(batches):  # type: ignore[no-untyped-def]
        real(batches)
        raise bus.LogUnavailable("no delivery report from Kafka within 30000 ms")

    log.append_many = stored_then_failed  # type: ignore[method-assign]
    with pytest.raises(bus.LogUnavailable):
        sink.commit([_pending("d1", "e1")], [])
    log.append_many = real  # type: ignore[method-assign]
    assert sink.commit([_pending("d1", "e1")], []) == [False], "the device's retry is a duplicate"
    assert _stored(log, "d1") == ["e1"]
    log.close()


def test_a_claim_taken_over_twice_still_searches_from_the_first_attempt(settings: Settings) -> None:
    # collector A appends and dies; B takes the expired claim over and dies before it has
    # looked; C must still look from A's attempt on, not from B's
    shift = [0.0]
    log, ks, make = _kafka_sink(settings, _shifted_clock(shift))
    a = make(log)
    a.dedupe.confirm = lambda keys: (_ for _ in ()).throw(_Killed())  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        a.commit([_pending("d1", "e1")], [])
    b = make(log)
    shift[0] += b.dedupe.lease_s + 1
    assert b.dedupe.claim([dedupe_key("d1", "e1")])[0], "B takes over (and dies at once)"
    shift[0] += b.dedupe.lease_s + 1
    c = make(log)
    assert c.commit([_pending("d1", "e1")], []) == [False]
    assert _stored(log, "d1") == ["e1"]
    log.close()


def test_a_claim_abandoned_before_midnight_is_searched_for_after_it(settings: Settings) -> None:
    now = [10_000 * 86_400.0 - 5]  # five seconds before midnight UTC
    crashed, other = _dedupe(settings, clock=lambda: now[0]), _dedupe(settings, clock=lambda: now[0])
    claimed_at = now[0]
    assert crashed.claim([b"k"]) == [True]
    now[0] += other.lease_s + 1  # the next day: the claim lives in yesterday's table
    assert other.claim([b"k"]) == [Abandoned(claimed_at, claimed_at + other.lease_s)]
    assert crashed.claim([b"k"]) == [None], "taken over (in today's table): a new lease"
    now[0] += other.lease_s + 1
    [third] = crashed.claim([b"k"])
    assert isinstance(third, Abandoned) and third.since == claimed_at, "still searched from the first attempt on"
    other.confirm([b"k"])
    assert crashed.claim([b"k"]) == [False]
    crashed.close()
    other.close()


def test_day_tables_of_an_older_release_gain_the_first_attempt_column(settings: Settings) -> None:
    from vendwatch.state.postgres import PostgresDatabase

    now = [10_000 * 86_400.0 + 60]
    db = PostgresDatabase(settings.state.postgres_dsn)
    db.execute("CREATE TABLE ingest_seen_10000(k BYTEA PRIMARY KEY, claimed_at DOUBLE PRECISION NOT NULL,"
               " confirmed BOOLEAN NOT NULL DEFAULT FALSE)")
    db.execute("INSERT INTO ingest_seen_10000(k, claimed_at, confirmed) VALUES (?, ?, TRUE), (?, ?, FALSE)",
               (b"stored", now[0] - 30, b"lost", now[0] - 3600))
    db.close()
    d = _dedupe(settings, clock=lambda: now[0])
    assert d.claim([b"stored", b"lost", b"new"]) == [False, Abandoned(now[0] - 3600, now[0] - 3600 + d.lease_s), True]
    d.close()


def test_a_log_that_cannot_be_read_makes_the_retry_wait_instead_of_storing_twice(settings: Settings) -> None:
    shift = [0.0]
    log, ks, make = _kafka_sink(settings, _shifted_clock(shift))
    dying = make(log)
    dying.dedupe.confirm = lambda keys: (_ for _ in ()).throw(_Killed())  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        dying.commit([_pending("d1", "e1")], [])
    retry = make(log)
    shift[0] += retry.dedupe.lease_s + 1
    real_read = log.read
    log.read = lambda *a, **k: []  # type: ignore[method-assign]  # every fetch times out
    with pytest.raises(bus.LogUnavailable, match="abandoned claim"):
        retry.commit([_pending("d1", "e1")], [])
    log.read = real_read  # type: ignore[method-assign]
    assert retry.commit([_pending("d1", "e1")], []) == [False], "at once, not a lease later: the claim was released"
    assert _stored(log, "d1") == ["e1"]
    log.close()


def test_concurrent_replicas_take_an_abandoned_claim_over_exactly_once(settings: Settings) -> None:
    now = [time.time()]
    crashed = _dedupe(settings, clock=lambda: now[0])
    keys = [i.to_bytes(4, "big") for i in range(300)]
    assert crashed.claim(keys) == [True] * len(keys)  # ... and the collector dies
    now[0] += crashed.lease_s + 1
    replicas = [_dedupe(settings, clock=lambda: now[0]) for _ in range(3)]
    got: list[list[object]] = [[] for _ in replicas]
    barrier = threading.Barrier(len(replicas))

    def run(i: int) -> None:
        barrier.wait()
        for j in range(0, len(keys), 50):
            got[i].extend(replicas[i].claim(keys[j : j + 50]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_key = [[g[k] for g in got] for k in range(len(keys))]
    assert all(sum(isinstance(s, Abandoned) for s in states) == 1 for states in per_key), "one replica takes it over"
    assert all(s is None for states in per_key for s in states if not isinstance(s, Abandoned)), "the others wait"
    for r in [crashed, *replicas]:
        r.close()
