"""Named locks in the product database (connectors/db/locks.py) on real SQLite and PostgreSQL: one holder at a time,
and a holder that dies never keeps the lock."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from connectors.db import DatabaseLock, ProductStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def store(database_url: str) -> Iterator[ProductStore]:
    s = ProductStore(database_url, connect_timeout_s=10.0)  # local, but the machine may be loaded
    s.migrate()
    yield s
    s.close()


def test_only_one_holder_of_a_database_lock_at_a_time(store: ProductStore) -> None:
    a, b = DatabaseLock(store, "retrain"), DatabaseLock(store, "retrain")
    assert a.try_acquire()
    assert not b.try_acquire()
    assert a.held() and not b.held()
    assert DatabaseLock(store, "another-name").try_acquire()
    a.release()
    assert b.try_acquire()
    b.release()


@pytest.mark.postgres
def test_postgres_lock_goes_with_its_connection_when_the_holder_dies(postgres_url: str) -> None:
    store = ProductStore(postgres_url)
    store.migrate()
    holder = DatabaseLock(store, "retrain")
    assert holder.try_acquire()
    assert holder._conn is not None
    holder._conn.invalidate()  # what a killed process looks like to the server: its session ends
    other = DatabaseLock(store, "retrain")
    deadline = time.monotonic() + 60
    while not other.try_acquire() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert other.acquired
    other.release()
    store.close()


def test_sqlite_lease_of_a_holder_that_stopped_renewing_can_be_taken_over(sqlite_url: str) -> None:
    store = ProductStore(sqlite_url)
    store.migrate()
    # a 2 s lease, not 0.6 s: on a loaded machine the lease could run out before the second try below is made
    dead = DatabaseLock(store, "retrain", lease_s=2.0)
    assert dead.try_acquire()
    dead._stop.set()  # the heartbeat stops, as when the process is killed
    other = DatabaseLock(store, "retrain", lease_s=2.0)
    assert not other.try_acquire()
    time.sleep(2.5)
    assert other.try_acquire()
    assert not dead.held()
    other.release()


def test_sqlite_lease_is_renewed_while_the_holder_lives(sqlite_url: str) -> None:
    store = ProductStore(sqlite_url)
    store.migrate()
    # a 2 s lease renewed every 2/3 s, checked after more than twice its length; with 0.6 s (renewed every 0.2 s) a
    # heartbeat 0.4 s late on a loaded machine would let another holder in
    live = DatabaseLock(store, "retrain", lease_s=2.0)
    assert live.try_acquire()
    time.sleep(5.0)
    assert not DatabaseLock(store, "retrain", lease_s=2.0).try_acquire()
    assert live.held()
    live.release()
