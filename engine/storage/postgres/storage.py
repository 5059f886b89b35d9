"""PostgreSQL storage: a connection pool per process, migrations, and the transactions."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from engine.storage import forks
from engine.storage.doorbell import Doorbell
from engine.storage.interface import StorageConflict, StorageUnavailable
from engine.storage.postgres.repositories import PostgresUnitOfWork
from engine.storage.postgres.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

__all__ = ["PostgresStorage"]

log = logging.getLogger(__name__)

# Races PostgreSQL reports as errors: the transaction rolled back, and running the unit of work
# again sees the winner.
_CONFLICTS = (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected,
              psycopg.errors.SerializationFailure)
# The database cannot be used right now (not a bug of the statement): connection refused or
# lost, server shutting down, no pooled connection in time, statement or lock timeout.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout,
                PoolTimeout)


@contextmanager
def _availability() -> Iterator[None]:
    try:
        yield
    except _CONFLICTS as error:
        raise StorageConflict(f"a concurrent transaction won: {error}") from error
    except _UNAVAILABLE as error:
        raise StorageUnavailable(f"the database cannot be used: {error}") from error


def _lock_key(*parts: str) -> int:
    """A 64-bit advisory lock key (or channel name part) from text, the same in every process."""
    digest = hashlib.blake2b("\n".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_STORES: weakref.WeakSet[PostgresStorage] = weakref.WeakSet()
# A forked child's copies of its parent's pools and connections: never used, never closed (a
# close would tell the server to end the parent's sessions), never collected.
_INHERITED: list = []


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


forks.after_fork_in_child(_after_fork_in_child)


class PostgresStorage:
    """One PostgreSQL schema: a connection pool per process, migrations, and transactions.

    Write transactions are READ COMMITTED: the repositories lock what they decide on (the
    participant's row, its idempotency key, its event sequence), so concurrent writes of one
    participant queue as they do on SQLite. Reads are REPEATABLE READ READ ONLY snapshots.
    """

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 4,
                 pool_timeout: float = 10.0, connect_timeout: int = 5,
                 statement_timeout_ms: int = 60_000, lock_timeout_ms: int = 30_000,
                 idle_in_transaction_timeout_ms: int = 60_000, notify: bool = True):
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError("the pool needs 0 <= pool_min <= pool_max and pool_max >= 1")
        self.url = url
        self.pool_min, self.pool_max, self.pool_timeout = pool_min, pool_max, pool_timeout
        self.timeouts = {"statement_timeout": statement_timeout_ms,
                         "lock_timeout": lock_timeout_ms,
                         "idle_in_transaction_session_timeout": idle_in_transaction_timeout_ms}
        self.notify = notify
        given = conninfo_to_dict(url)
        self._connect_kwargs = {}
        if "connect_timeout" not in given:
            self._connect_kwargs["connect_timeout"] = connect_timeout
        if "application_name" not in given:
            self._connect_kwargs["application_name"] = "participant-service"
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0
        self._connections: weakref.WeakSet = weakref.WeakSet()  # every one this process opened
        self._doorbell = Doorbell()
        self._listener: _Listener | None = None
        self._where = ""
        self.schema = ""
        self._schema_version = 0
        self.migrate()
        self.channel = f"participants_{_lock_key('channel', self.schema) & (2**63 - 1):x}"
        _STORES.add(self)

    # -- connections ---------------------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """A new connection of this process (autocommit: transactions are begun explicitly)."""
        conn = psycopg.connect(self.url, autocommit=True, **self._connect_kwargs)
        self._connections.add(conn)
        return conn

    def _configure(self, conn: psycopg.Connection) -> None:
        """Every pooled connection gets the timeouts (the URL may carry other options)."""
        self._connections.add(conn)
        settings = ", ".join("set_config(%s, %s, false)" for _ in self.timeouts)
        conn.execute(f"SELECT {settings}", [part for name, ms in self.timeouts.items()
                                            for part in (name, str(int(ms)))])

    def _pool_here(self) -> ConnectionPool:
        """This process's pool, opened on first use (never one inherited across a fork)."""
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._lock:
            pool = self._pool
            if pool is None or self._pool_pid != os.getpid():
                if pool is not None:
                    _INHERITED.append(pool)
                pool = ConnectionPool(
                    self.url, min_size=self.pool_min, max_size=self.pool_max,
                    kwargs={"autocommit": True, **self._connect_kwargs},
                    configure=self._configure, check=ConnectionPool.check_connection,
                    timeout=self.pool_timeout, name=f"participants-{os.getpid()}",
                    num_workers=2, open=False)
                pool.open(wait=False)
                self._pool, self._pool_pid = pool, os.getpid()
            return pool

    def _getconn(self) -> tuple[ConnectionPool, psycopg.Connection]:
        for _ in range(3):
            pool = self._pool_here()
            try:
                return pool, pool.getconn()
            except PoolClosed:  # close() ran in another thread meanwhile: use a new pool
                continue
        raise StorageUnavailable("the connection pool was closed")

    def close(self) -> None:
        """Close this process's pool and listener; the next transaction opens a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()

    def _after_fork_in_child(self) -> None:
        """A forked child keeps its parent's connections unused and unclosed, and makes their
        sockets point at /dev/null, so not even their collection can end the parent's
        sessions; it opens its own pool when it first needs one."""
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for conn in list(self._connections):
                _INHERITED.append(conn)
                try:
                    os.dup2(devnull, conn.pgconn.socket)
                except (psycopg.OperationalError, OSError):
                    pass  # closed already
        finally:
            os.close(devnull)
        _INHERITED.append((self._pool, self._listener))
        self._connections = weakref.WeakSet()
        self._pool, self._pool_pid, self._listener = None, 0, None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._doorbell = Doorbell()

    # -- schema --------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction. Processes starting together
        queue on an advisory lock keyed by the schema, so each migration runs once."""
        try:
            with self.connect() as conn, conn.transaction():
                schema = conn.execute("SELECT current_schema()").fetchone()[0]
                if schema is None:
                    raise ValueError("no schema of the database URL's search_path exists")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("migrate", schema),))
                exists = conn.execute("SELECT to_regclass(format('%%I.schema_version', %s::text))",
                                      (schema,)).fetchone()[0]
                if exists is None:
                    conn.execute(VERSION_TABLE)
                current = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[version])
                    conn.execute("INSERT INTO schema_version (version, applied_at)"
                                 " VALUES (%s, %s)", (version, time.time_ns() // 1_000_000))
                    log.info("migrated schema %s to version %d", schema, version)
                self.schema, self._schema_version = schema, max(current, SCHEMA_VERSION)
                info = conn.info
                version = info.server_version
                self._where = (f"PostgreSQL {version // 10000}.{version % 10000} at "
                               f"{info.host}:{info.port}/{info.dbname}")
        except _UNAVAILABLE as error:
            raise StorageUnavailable(f"the database cannot be used: {error}") from error

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def describe(self) -> str:
        return f"{self._where} (schema {self.schema}, pool {self.pool_min}-{self.pool_max})"

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, writing: bool) -> Iterator[psycopg.Connection]:
        with _availability():
            pool, conn = self._getconn()
            try:
                conn.isolation_level = (IsolationLevel.READ_COMMITTED if writing
                                        else IsolationLevel.REPEATABLE_READ)
                conn.read_only = not writing
                with conn.transaction():
                    yield conn
            finally:
                pool.putconn(conn)

    @contextmanager
    def write(self) -> Iterator[PostgresUnitOfWork]:
        """One READ COMMITTED write transaction: COMMIT, or ROLLBACK on any error."""
        self._local.queued = False
        try:
            with self._transaction(writing=True) as conn:
                yield PostgresUnitOfWork(conn, writing=True)
                if self._local.queued and self.notify:  # delivered on commit, if it commits
                    conn.execute("SELECT pg_notify(%s, '')", (self.channel,))
        finally:
            queued, self._local.queued = getattr(self._local, "queued", False), False
        if queued:
            self._doorbell.ring()

    @contextmanager
    def read(self) -> Iterator[PostgresUnitOfWork]:
        """One REPEATABLE READ READ ONLY transaction: every statement sees the same snapshot."""
        with self._transaction(writing=False) as conn:
            yield PostgresUnitOfWork(conn, writing=False)

    def work_queued(self) -> None:
        """Inside a write transaction: it queues background work, so ring the doorbell once it
        has committed (never if it rolls back), here and, by NOTIFY, in other processes."""
        self._local.queued = True

    def writers_waiting(self) -> bool:
        """Writers lock rows, not the database: a background write never holds up others."""
        return False

    @contextmanager
    def background(self) -> Iterator[None]:
        yield

    @property
    def doorbell(self) -> Doorbell:
        """Rung after this process's commits that queued work, and on other processes' (by
        LISTEN/NOTIFY, a hint only: the dispatcher's poll stays the truth)."""
        if self.notify and self._listener is None:
            with self._lock:
                if self._listener is None:
                    self._listener = _Listener(self)
                    self._listener.start()
        return self._doorbell


class _Listener(threading.Thread):
    """LISTENs on the schema's channel on a connection of its own and rings the doorbell."""

    def __init__(self, storage: PostgresStorage):
        super().__init__(name="participants-listen", daemon=True)
        self.storage = storage
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=1)

    def run(self) -> None:
        storage = self.storage
        while not self.stopping.is_set():
            try:
                with storage.connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(storage.channel)))
                    storage._doorbell.ring()  # anything sent while we were not listening
                    while not self.stopping.is_set():
                        if any(True for _ in conn.notifies(timeout=0.2)):
                            storage._doorbell.ring()
            except psycopg.Error as error:
                log.info("not listening for other processes' work (%s); polling only", error)
                self.stopping.wait(1.0)
