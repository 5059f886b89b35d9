"""SQLite storage: connections per thread, WAL, migrations, and the write transaction."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils
from sqlite_utils.db import sqlite3

from engine.storage import forks
from engine.storage.doorbell import Doorbell
from engine.storage.interface import StorageUnavailable
from engine.storage.sqlite.repositories import SqliteUnitOfWork
from engine.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION

try:
    import fcntl
except ImportError:  # not POSIX: writes do not announce themselves, batches never hold off
    fcntl = None

__all__ = ["SYNCHRONOUS", "SqliteStorage", "sqlite3"]

log = logging.getLogger(__name__)

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
# What SQLite says when the file cannot be used right now (not a bug of the statement).
_UNAVAILABLE = ("database is locked", "disk i/o error", "unable to open database",
                "database or disk is full", "readonly database")


@contextmanager
def _availability() -> Iterator[None]:
    """Report a file that cannot be used as StorageUnavailable (a 503), other errors as they are."""
    try:
        yield
    except sqlite3.OperationalError as error:
        if any(text in str(error).lower() for text in _UNAVAILABLE):
            raise StorageUnavailable(f"the database cannot be used: {error}") from error
        raise


_STORES: weakref.WeakSet[SqliteStorage] = weakref.WeakSet()
_INHERITED: list = []  # a forked child's copies of its parent's connections, never used


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


forks.after_fork_in_child(_after_fork_in_child)





class SqliteStorage:
    """One SQLite file: connections per thread, schema migrations, and the write transaction."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL",
                 busy_timeout_ms: int = 30_000):
        self.path = str(path)
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # Rung after a commit that queued background work (see `work_queued`).
        self.doorbell = Doorbell()
        # Writes hold a shared lock on this file while they wait for and hold the write lock,
        # so a background writer (the batch worker) can see them and let them go first.
        self._intent_path = None
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if fcntl is not None:
                self._intent_path = self.path + "-writers"
        self.migrate()
        _STORES.add(self)

    # -- connections ---------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        """A new connection in autocommit mode; transactions are begun explicitly."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a sync worker serves one request at a time)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
            self._local.uow = SqliteUnitOfWork(conn)
        return conn

    def _uow(self) -> SqliteUnitOfWork:
        self.conn  # noqa: B018 - opens this thread's connection and its repositories
        return self._local.uow

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = self._local.uow = None
        intent = getattr(self._local, "intent", None)
        if intent is not None:
            os.close(intent)
            self._local.intent = None

    @property
    def sqlite_version(self) -> str:
        return self.conn.execute("SELECT sqlite_version()").fetchone()[0]

    def describe(self) -> str:
        return f"SQLite {self.sqlite_version} at {self.path} (synchronous={self.synchronous})"

    # -- schema --------------------------------------------------------------------------

    def _use_wal(self, conn) -> None:
        """Switch the file to WAL (persistent). Several processes starting on a new file may
        race for it, and SQLite answers "locked" without waiting, so retry for the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def migrate(self) -> None:
        """Bring the file's schema to SCHEMA_VERSION, one migration per transaction."""
        conn = self.connect()
        try:
            self._use_wal(conn)
            db = sqlite_utils.Database(conn, recursive_triggers=False)
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[version](db)
                    conn.execute(f"PRAGMA user_version = {version}")
                    log.info("migrated %s to schema version %d", self.path, version)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[SqliteUnitOfWork]:
        """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error."""
        conn = self.conn
        uow = self._local.uow
        announced = self._announce()
        self._local.queued = False
        try:
            with _availability():
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield uow
                except BaseException:
                    if conn.in_transaction:  # a failed COMMIT or a lost file may have ended it
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        finally:
            if announced is not None:
                fcntl.flock(announced, fcntl.LOCK_UN)
            queued, self._local.queued = self._local.queued, False
        if queued:
            self.doorbell.ring()

    def work_queued(self) -> None:
        """Inside a write transaction: it queues background work (an outbox row, a batch, a state
        with a timer), so ring the doorbell once it has committed (never if it rolls back)."""
        self._local.queued = True

    # -- foreground and background writers -----------------------------------------------
    #
    # SQLite's busy handler sleeps 1, 2, 5, ... up to 100 ms between attempts, so a writer that
    # commits back to back (a batch) can keep another waiting for seconds. Foreground writes
    # therefore hold a shared flock on `<database>-writers` while they wait and write, and a
    # background writer checks it between its transactions and holds off while it is held.

    def _intent(self) -> int | None:
        """This thread's descriptor of the intent file (flocks belong to open descriptions)."""
        if self._intent_path is None:
            return None
        fd = getattr(self._local, "intent", None)
        if fd is None:
            fd = self._local.intent = os.open(self._intent_path, os.O_RDWR | os.O_CREAT, 0o600)
        return fd

    def _announce(self) -> int | None:
        if getattr(self._local, "background", False):
            return None
        fd = self._intent()
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return None  # a background writer is looking at this instant; it will see us next
        return fd

    def writers_waiting(self) -> bool:
        """Whether a foreground write, in any thread or process, waits for or holds the lock."""
        fd = self._intent()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    @contextmanager
    def background(self) -> Iterator[None]:
        """This thread's writes in the block are background ones: they do not announce."""
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = False

    def _after_fork_in_child(self) -> None:
        """A forked child must not use its parent's connections or intent descriptors (SQLite
        forbids carrying a connection across fork; flocks belong to the shared open file), nor
        close them: it keeps them unused and opens its own."""
        _INHERITED.append(self._local)
        self._local = threading.local()
        self.doorbell = Doorbell()

    @contextmanager
    def read(self) -> Iterator[SqliteUnitOfWork]:
        """One read transaction: every statement in it sees the same snapshot."""
        conn = self.conn
        with _availability():
            conn.execute("BEGIN")
            try:
                yield self._local.uow
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
