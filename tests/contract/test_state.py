"""Contract of the state store; every database backend runs the same tests.

SQLite (embedded) and PostgreSQL (scale-out, a real server from scripts/services.sh).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from tests.contract.pg_backend import fresh_schema

from vendwatch import events as ev
from vendwatch.bus.base import Record
from vendwatch.config import Settings
from vendwatch.runtime import Context
from vendwatch.state import migrations
from vendwatch.state.db import Database, SqliteDatabase
from vendwatch.state.projector import DeviceStateProjector
from vendwatch.state.store import RegistryError, StateStore


@contextmanager
def _sqlite(tmp_path: Path) -> Iterator[Callable[[], Database]]:
    yield lambda: SqliteDatabase(tmp_path / "state.db")


@contextmanager
def _postgres(tmp_path: Path) -> Iterator[Callable[[], Database]]:
    from vendwatch.state.postgres import PostgresDatabase

    with fresh_schema() as dsn:
        yield lambda: PostgresDatabase(dsn, pool_size=4)


DB_BACKENDS: dict[str, Callable[[Path], AbstractContextManager[Callable[[], Database]]]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(DB_BACKENDS))
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """A factory of Database handles on one fresh, empty database."""
    opened: list[Database] = []

    with DB_BACKENDS[request.param](tmp_path) as factory:
        def make() -> Database:
            db = factory()
            opened.append(db)
            return db

        yield make
        for db in opened:
            db.close()


@pytest.fixture
def store(open_db: Callable[[], Database]) -> StateStore:
    st = StateStore(open_db())
    st.migrate()
    return st


# -- registry ---------------------------------------------------------------------
def test_device_registry_roundtrip(store: StateStore) -> None:
    token = store.add_device("vm-1", "site-a", serial="S1", model="M", location="hall",
                             heartbeat_interval_s=60, meta={"floor": 2})
    store.add_device("vm-2", "site-b")
    store.add_device("vm-3", "site-a")
    d = store.get_device("vm-1")
    assert d is not None
    assert (d.site_id, d.serial, d.model, d.location, d.heartbeat_interval_s, d.meta) == (
        "site-a", "S1", "M", "hall", 60, {"floor": 2})
    assert d.status == "active" and d.created_at > 0
    assert store.get_device("nope") is None
    assert [x.device_id for x in store.list_devices()] == ["vm-1", "vm-2", "vm-3"]
    assert [x.device_id for x in store.list_devices(site_id="site-a")] == ["vm-1", "vm-3"]
    assert [x.device_id for x in store.list_devices(limit=1, after="vm-1")] == ["vm-2"]
    assert store.count_devices() == 3
    assert store.authenticate_device(token).device_id == "vm-1"  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="already exists"):
        store.add_device("vm-1")


def test_disabled_device_cannot_authenticate(store: StateStore) -> None:
    token = store.add_device("vm-1")
    store.set_device_status("vm-1", "disabled")
    assert store.authenticate_device(token) is None
    store.set_device_status("vm-1", "active")
    assert store.authenticate_device(token) is not None
    with pytest.raises(RegistryError):
        store.set_device_status("missing", "active")


def test_token_rotation_grace_and_revocation(store: StateStore) -> None:
    old = store.add_device("vm-1")
    new = store.rotate_device_token("vm-1", grace_s=3600)
    assert store.authenticate_device(old) is not None, "old token valid during the grace period"
    assert store.authenticate_device(new) is not None
    newest = store.rotate_device_token("vm-1", grace_s=0)
    assert store.authenticate_device(old) is None
    assert store.authenticate_device(new) is None
    assert store.authenticate_device(newest) is not None
    assert store.authenticate_device("vwd_not-a-token") is None
    with pytest.raises(RegistryError):
        store.rotate_device_token("missing")


def test_operator_tokens(store: StateStore) -> None:
    tok = store.add_operator_token("alice", "operator")
    p = store.authenticate_operator(tok)
    assert p is not None and p.name == "alice" and p.can("viewer") and not p.can("admin")
    with pytest.raises(RegistryError):
        store.add_operator_token("alice", "viewer")
    with pytest.raises(RegistryError):
        store.add_operator_token("bob", "root")
    store.revoke_operator_token("alice")
    assert store.authenticate_operator(tok) is None
    assert store.list_operator_tokens() == [("alice", "operator", True)]


def test_deleting_a_device_cascades_to_its_tokens(store: StateStore) -> None:
    store.add_device("vm-1")
    store.db.execute("DELETE FROM devices WHERE device_id=?", ("vm-1",))
    assert store.db.one("SELECT count(*) FROM device_tokens")[0] == 0  # type: ignore[index]


# -- device state (through the real projector) -------------------------------------
def _stored(device: str, type_: str, data: dict, at: datetime, seq: int) -> bytes:
    return ev.encode(ev.StoredEvent(
        event_id=f"{device}-{seq}", device_id=device, type=type_, occurred_at=at, received_at=at,
        data=msgspec.Raw(msgspec.json.encode(data)), seq=seq, site_id="s1"))


def test_device_state_projection(store: StateStore, tmp_path: Path) -> None:
    ctx = Context(Settings(data_dir=str(tmp_path)), _state=store)
    proj = DeviceStateProjector(ctx)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    values = [
        _stored("vm-1", "heartbeat", {"uptime_s": 40}, t0, 1),
        _stored("vm-1", "fault", {"code": "JAM", "state": "active"}, t0 + timedelta(seconds=5), 2),
        _stored("vm-2", "heartbeat", {}, t0, 1),
        _stored("vm-1", "heartbeat", {"uptime_s": 30}, t0 - timedelta(seconds=5), 3),  # older: ignored
    ]
    recs = [Record("events", 0, i, "k", v, 0) for i, v in enumerate(values)]
    proj.process(recs[:2])
    proj.process(recs[2:])
    s1 = store.get_device_state("vm-1")
    assert s1 is not None
    assert s1["events"] == 3 and s1["last_seq"] == 3 and s1["site_id"] == "s1"
    assert s1["health"]["uptime_s"] == 40
    assert list(s1["active_faults"]) == ["JAM"]
    assert store.count_device_states() == 2
    assert [s["device_id"] for s in store.list_device_states(after="vm-1")] == ["vm-2"]
    # the stage's positions are stored with its output
    assert store.load_checkpoint(f"{proj.checkpoint_name}:events/0") == b"4"


# -- checkpoints and transactions ----------------------------------------------------
def test_checkpoints_roundtrip_binary(store: StateStore) -> None:
    blob = bytes(range(256)) * 10
    assert store.load_checkpoint("c") is None
    store.save_checkpoint("c", blob)
    assert store.load_checkpoint("c") == blob
    store.save_checkpoint("c", b"v2")
    assert store.load_checkpoint("c") == b"v2"


def test_failed_transaction_leaves_nothing(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.db.transaction() as tx:
        store.save_checkpoint("c", b"x", tx=tx)
        store.add_device("vm-1", tx=tx)
        raise RuntimeError("boom")
    assert store.load_checkpoint("c") is None
    assert store.get_device("vm-1") is None


def test_nested_transaction_joins_outer(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.db.transaction():
        store.save_checkpoint("inner", b"x")  # opens its own transaction: joins the outer one
        raise RuntimeError("boom")
    assert store.load_checkpoint("inner") is None


def test_portable_sql_literals(store: StateStore) -> None:
    # '?' and '%' inside string literals are data, not placeholders
    row = store.db.one("SELECT '?', '%', ? || '%'", ("a",))
    assert tuple(row) == ("?", "%", "a%")  # type: ignore[arg-type]


def test_concurrent_writers_do_not_lose_updates(open_db: Callable[[], Database]) -> None:
    st = StateStore(open_db())
    st.migrate()
    st.db.execute("CREATE TABLE counters(name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    st.db.execute("INSERT INTO counters VALUES ('c', 0)")
    dbs = [open_db() for _ in range(3)]

    def bump(db: Database) -> None:
        for _ in range(20):
            db.execute("UPDATE counters SET n = n + 1 WHERE name = ?", ("c",))

    threads = [threading.Thread(target=bump, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert st.db.one("SELECT n FROM counters")[0] == 60  # type: ignore[index]


# -- migrations ----------------------------------------------------------------------
def test_migrations_are_idempotent(open_db: Callable[[], Database]) -> None:
    db = open_db()
    first = migrations.apply(db)
    assert ("core", 1) in first
    assert migrations.apply(db) == []
    tables = {"devices", "device_tokens", "operator_tokens", "device_state", "checkpoints"}
    for t in tables:
        assert db.one(f"SELECT count(*) FROM {t}") == (0,)


def test_concurrent_migrations_apply_each_once(open_db: Callable[[], Database]) -> None:
    # several processes starting at once all run migrate(); each migration runs once
    migrations.register("ztest_concurrent", 1, "CREATE TABLE zt_concurrent(x {bigint}, b {blob})")
    try:
        dbs = [open_db() for _ in range(4)]
        results: list[list[tuple[str, int]]] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(dbs))

        def run(db: Database) -> None:
            barrier.wait()
            try:
                results.append(migrations.apply(db))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(d,)) for d in dbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        applied = sorted(k for r in results for k in r)
        assert ("core", 1) in applied and ("ztest_concurrent", 1) in applied
        assert applied == sorted(migrations._REGISTRY), "every migration applied exactly once"
        rows = dbs[0].query("SELECT component, version FROM schema_migrations ORDER BY component, version")
        assert [tuple(r) for r in rows] == sorted(migrations._REGISTRY)
    finally:
        migrations._REGISTRY.pop(("ztest_concurrent", 1), None)


def test_ddl_placeholders_resolve(open_db: Callable[[], Database]) -> None:
    db = open_db()
    db.execute(db.ddl("CREATE TABLE t_serial(id {serial_pk}, big {bigint}, b {blob}, doc TEXT DEFAULT '{{}}')"))
    db.execute("INSERT INTO t_serial(big, b) VALUES (?, ?)", (2**40, b"\x00\xff"))
    db.execute("INSERT INTO t_serial(big, b) VALUES (?, ?)", (1, b""))
    rows = db.query("SELECT id, big, b, doc FROM t_serial ORDER BY id")
    assert [r[0] for r in rows] == [1, 2]
    assert rows[0][1] == 2**40 and bytes(rows[0][2]) == b"\x00\xff" and rows[0][3] == "{}"


def test_a_connection_lost_mid_transaction_is_unavailability_and_the_next_one_works() -> None:
    """PostgreSQL restarting (or a proxy cutting idle connections) ends a transaction with a
    connection-level error: it is reported as DatabaseUnavailable (one line in the
    supervisor's log, never blamed on a record) and the pool hands out a fresh connection next."""
    import psycopg

    from vendwatch.state.postgres import DatabaseUnavailable, PostgresDatabase

    with fresh_schema() as dsn:
        db = PostgresDatabase(dsn, pool_size=1)
        try:
            with pytest.raises(DatabaseUnavailable, match="lost the connection to PostgreSQL") as exc, \
                    db.transaction() as tx:
                pid = tx.query("SELECT pg_backend_pid()")[0][0]
                with psycopg.connect(dsn, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                tx.query("SELECT 1")
            assert "password" not in str(exc.value) and exc.value.__cause__ is not None
            with db.transaction() as tx:
                assert tx.query("SELECT 1") == [(1,)]
            # an error of the statement itself stays what it is (the caller's to handle)
            with pytest.raises(psycopg.errors.UndefinedTable), db.transaction() as tx:
                tx.query("SELECT * FROM no_such_table")
        finally:
            db.close()


def test_a_deadlock_between_two_transactions_is_a_conflict_to_retry_not_a_crash() -> None:
    """Two orchestrator replicas that lock the same rows in opposite orders (a site incident
    and its device incidents) deadlock; PostgreSQL aborts one. That one is reported as a
    ``TransactionConflict`` (an ``Unavailable``: one line in the supervisor's log, a 503 with
    Retry-After on the API, never blamed on a record), and the other commits."""
    import threading

    from vendwatch.errors import Unavailable
    from vendwatch.state.postgres import PostgresDatabase, TransactionConflict

    with fresh_schema() as dsn:
        db = PostgresDatabase(dsn, pool_size=2)
        try:
            db.execute("CREATE TABLE rows_(k TEXT PRIMARY KEY, v INTEGER)")
            db.execute("INSERT INTO rows_ VALUES ('a', 0), ('b', 0)")
            both_locked = threading.Barrier(2, timeout=10)
            outcomes: dict[str, BaseException | None] = {}

            def replica(first: str, second: str) -> None:
                try:
                    with db.transaction() as tx:
                        tx.execute("UPDATE rows_ SET v=v+1 WHERE k=?", (first,))
                        both_locked.wait()
                        tx.execute("UPDATE rows_ SET v=v+1 WHERE k=?", (second,))
                    outcomes[first] = None
                except BaseException as e:  # noqa: BLE001 - the test inspects it
                    outcomes[first] = e

            threads = [threading.Thread(target=replica, args=p) for p in (("a", "b"), ("b", "a"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            errors = [e for e in outcomes.values() if e is not None]
            assert len(outcomes) == 2 and len(errors) == 1, outcomes
            assert isinstance(errors[0], TransactionConflict) and isinstance(errors[0], Unavailable), repr(errors[0])
            assert "deadlock" in str(errors[0])
            assert db.query("SELECT sum(v) FROM rows_") == [(2,)]  # one transaction committed, whole
            with db.transaction() as tx:  # the connection of the aborted one works again
                assert tx.query("SELECT 1") == [(1,)]
        finally:
            db.close()


def test_a_pool_renewed_by_another_thread_is_used_and_a_closed_store_is_unavailable() -> None:
    """After an outage one thread replaces the connection pool and closes the old one; a
    thread that picked up the old pool a moment before gets a connection from the new one
    (psycopg_pool's PoolClosed was a raw error, a 500 on the API). A store that is closed
    answers DatabaseUnavailable."""
    from psycopg_pool import PoolClosed

    from vendwatch.state.postgres import DatabaseUnavailable, PostgresDatabase

    with fresh_schema() as dsn:
        db = PostgresDatabase(dsn, pool_size=1)
        old, fresh = db.pool, db._new_pool()
        fresh.open(wait=True, timeout=10)

        def renewed_meanwhile(timeout: float | None = None) -> object:
            db.pool = fresh  # what _through_outage does on another thread
            old.close()
            raise PoolClosed(f"the pool {old.name!r} is already closed")

        old.getconn = renewed_meanwhile  # type: ignore[method-assign]
        with db.transaction() as tx:
            assert tx.query("SELECT 1") == [(1,)]
        db.close()
        with pytest.raises(DatabaseUnavailable, match="closed"), db.transaction():
            pass


def test_unreachable_postgres_is_a_clear_error() -> None:
    from vendwatch.state.postgres import DatabaseUnavailable, PostgresDatabase

    t0 = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="cannot connect") as exc:
        PostgresDatabase("postgresql://u:secret@127.0.0.1:1/x", connect_timeout_s=1)
    assert "secret" not in str(exc.value)
    assert time.monotonic() - t0 < 10



