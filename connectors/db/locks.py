"""Named locks in the product database that a killed process never leaves held: only one process retrains at a time,
and only one runs the retraining scheduler, across replicas.

`DatabaseLock`: on PostgreSQL a session advisory lock (`pg_try_advisory_lock`) on a connection of its own, released
by the server when that connection closes. On SQLite a lease row in `learner_locks` renewed by a heartbeat thread; a
holder that dies stops renewing, and the lease can be taken over once it expires.

What it must not do: decide what a lock guards, or import `daemon/` or `learner/`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from connectors.db.connection import DatabaseUnavailable, now
from connectors.db.models import LEARNER_LOCKS
from connectors.db.store import ProductStore

__all__ = ["DatabaseLock", "LockLost", "process_holder"]

log = logging.getLogger(__name__)


def process_holder() -> str:
    """`host:pid`, how a process names itself in locks and in the retraining run log."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LockLost(RuntimeError):
    """A lock this process held is no longer held (connection lost, lease taken over)."""


class DatabaseLock:
    """A named, non-blocking, process-crash-safe lock in the product database (see the module docstring).

    `try_acquire()` returns False at once when another process holds it. `held()` checks the lock is still
    ours (PostgreSQL: the lock's connection answers; SQLite: the lease row still names us). `release()` is
    idempotent. SQLite leases last `lease_s` and are renewed every `lease_s / 3` seconds.
    """

    def __init__(self, store: ProductStore, name: str, *, lease_s: float = 60.0) -> None:
        self.store = store
        self.database = store.database
        self.name = name
        self.lease_s = lease_s
        self.holder = f"{process_holder()}:{uuid.uuid4().hex[:8]}"
        self.key = int.from_bytes(hashlib.sha256(f"shelfsight-lock:{name}".encode()).digest()[:8], "big", signed=True)
        self._conn: Connection | None = None
        self._acquired = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._lost = threading.Event()

    def __enter__(self) -> DatabaseLock:
        if not self.try_acquire():
            raise RuntimeError(f"lock {self.name!r} is held by another process")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def acquired(self) -> bool:
        return self._acquired

    def try_acquire(self) -> bool:
        if self._acquired:
            return True
        if self.database.dialect == "postgresql":
            self._acquired = self._try_advisory()
        else:
            self._acquired = self._try_lease()
            if self._acquired:
                self._stop.clear()
                self._lost.clear()
                self._heartbeat = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
                self._heartbeat.start()
        if self._acquired:
            log.info("lock %r acquired by %s", self.name, self.holder)
        return self._acquired

    def held(self) -> bool:
        if not self._acquired:
            return False
        if self.database.dialect == "postgresql":
            try:
                assert self._conn is not None
                self._conn.exec_driver_sql("SELECT 1")
                return True
            except DBAPIError:
                return False
        return not self._lost.is_set() and self._lease_is_ours()

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        if self.database.dialect == "postgresql":
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.execute(select(func.pg_advisory_unlock(self.key)))
                except DBAPIError as exc:  # connection already gone: the server released the lock with it
                    log.debug("advisory unlock failed (%s); the lock went with its connection", exc)
                finally:
                    conn.close()
        else:
            self._stop.set()
            if self._heartbeat is not None:
                self._heartbeat.join(timeout=5)
            try:
                with self.database.transaction(write=True) as conn:
                    conn.execute(
                        delete(LEARNER_LOCKS).where(
                            LEARNER_LOCKS.c.name == self.name, LEARNER_LOCKS.c.holder == self.holder
                        )
                    )
            except DatabaseUnavailable as exc:
                log.warning("could not delete lease %r (%s); it expires by itself", self.name, exc)
        log.info("lock %r released by %s", self.name, self.holder)

    # -- PostgreSQL --------------------------------------------------------------------------------
    def _try_advisory(self) -> bool:
        try:
            conn = self.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as exc:
            raise self.database.unavailable(exc) from exc
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(self.key))).scalar_one())
        except DBAPIError:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    # -- SQLite leases -----------------------------------------------------------------------------
    def _try_lease(self) -> bool:
        t = LEARNER_LOCKS
        acquired = now()
        expires = acquired + timedelta(seconds=self.lease_s)
        with self.database.transaction(write=True) as conn:
            conn.execute(delete(t).where(t.c.name == self.name, t.c.expires_at < acquired))
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(t).values(name=self.name, holder=self.holder, acquired_at=acquired, expires_at=expires)
                    )
            except IntegrityError:
                return False
        return True

    def _lease_is_ours(self) -> bool:
        t = LEARNER_LOCKS
        query = select(t.c.holder).where(t.c.name == self.name, t.c.expires_at >= now())
        with self.database.transaction() as conn:
            return conn.execute(query).scalar() == self.holder

    def _renew(self) -> None:
        t = LEARNER_LOCKS
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self.database.transaction(write=True) as conn:
                    renewed = conn.execute(
                        update(t)
                        .where(t.c.name == self.name, t.c.holder == self.holder, t.c.expires_at >= now())
                        .values(expires_at=now() + timedelta(seconds=self.lease_s))
                    ).rowcount
            except DatabaseUnavailable as exc:
                log.warning("could not renew lease %r: %s", self.name, exc)
                continue
            if not renewed:
                log.error("lease %r was lost (expired and taken over); stop using it", self.name)
                self._lost.set()
                return
