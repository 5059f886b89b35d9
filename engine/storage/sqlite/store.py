"""SQLite storage: schema and migrations (sqlite-utils), and the few statements of the hot path."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from sqlite_utils.db import sqlite3

from engine.storage.doorbell import Doorbell

try:
    import fcntl
except ImportError:  # not POSIX: writes do not announce themselves, batches never hold off
    fcntl = None

__all__ = ["SCHEMA_VERSION", "Store", "StoredParticipant", "sqlite3"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_APPEND_ONLY = """
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE is refused'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE is refused'); END;
-- REPLACE deletes the conflicting row without firing DELETE triggers (unless recursive
-- triggers are on); refusing any insert that would conflict closes that door too.
CREATE TRIGGER IF NOT EXISTS events_no_replace BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq OR id = NEW.id
             OR (tenant_id = NEW.tenant_id AND participant_id = NEW.participant_id
                 AND sequence = NEW.sequence))
BEGIN SELECT RAISE(ABORT, 'events are append-only: REPLACE is refused'); END;
"""


def _migrate_1(db: sqlite_utils.Database) -> None:
    db["participants"].create({
        "tenant_id": str, "id": str, "type": str, "unique_code": str, "name": str,
        "owner": str, "category": str, "sub_category": str, "template_id": str,
        "state": str, "properties": str, "version": int, "created_at": int,
        "updated_at": int, "state_entered_at": int, "created_by": str, "updated_by": str,
        "callback": str, "archived_at": int,
    }, pk=("tenant_id", "id"), not_null={"type", "unique_code", "state", "properties",
                                          "version", "created_at", "updated_at"})
    db["participants"].create_index(["tenant_id", "type", "created_at"])
    db["participants"].create_index(["tenant_id", "type", "unique_code"], unique=True)
    db["participants"].create_index(["state", "state_entered_at"])
    db["attribute_index"].create({
        "tenant_id": str, "type": str, "name": str, "value": bytes, "participant_id": str,
    }, pk=("tenant_id", "type", "name", "participant_id"))
    # value is declared BLOB (no type affinity), so numbers compare as numbers, text as text
    db.execute("CREATE INDEX attribute_index_lookup ON attribute_index "
               "(tenant_id, type, name, value, participant_id)")
    db["events"].create({
        "seq": int, "id": str, "tenant_id": str, "participant_id": str, "participant_type": str,
        "sequence": int, "version": int, "command_name": str, "success": int,
        "request_id": str, "created_at": int, "body": str,
    }, pk="seq", not_null={"id", "tenant_id", "participant_id", "sequence", "body"})
    db["events"].create_index(["id"], unique=True)
    db["events"].create_index(["tenant_id", "participant_id", "sequence"], unique=True)
    db["idempotency"].create({
        "tenant_id": str, "request_id": str, "fingerprint": str, "status": int,
        "response": str, "created_at": int, "lease_until": int,
    }, pk=("tenant_id", "request_id"))
    db["idempotency"].create_index(["created_at"])
    db["outbox"].create({
        "id": int, "event_id": str, "tenant_id": str, "participant_id": str, "kind": str,
        "url": str, "secret": str, "status": str, "attempts": int, "next_attempt_at": int,
        "created_at": int, "last_error": str,
    }, pk="id", not_null={"event_id", "url", "status", "kind"})
    db["outbox"].create_index(["status", "next_attempt_at"])
    db.executescript(_APPEND_ONLY)


def _migrate_2(db: sqlite_utils.Database) -> None:
    """Delivery leases and attempts, hook requests in the outbox, timer bookkeeping."""
    outbox = db["outbox"]
    for name, kind in (("lease_until", int), ("lease_owner", str), ("delivered_at", int),
                       ("method", str), ("headers", str), ("payload", str)):
        outbox.add_column(name, kind)
    outbox.create_index(["tenant_id", "participant_id", "status", "id"])
    db["deliveries"].create({
        "id": int, "outbox_id": int, "attempt": int, "at": int, "status_code": int,
        "error": str, "duration_ms": int, "outcome": str,
    }, pk="id", not_null={"outbox_id", "attempt", "at", "outcome"})
    db["deliveries"].create_index(["outbox_id", "attempt"])
    participants = db["participants"]
    participants.add_column("callback_secret", str)
    participants.add_column("timer_blocked_version", int)
    participants.create_index(["type", "state", "state_entered_at"])


def _migrate_3(db: sqlite_utils.Database) -> None:
    """Batches: one row per accepted batch request, one per item, processed item by item."""
    db["batches"].create({
        "id": str, "tenant_id": str, "type": str, "kind": str, "status": str, "total": int,
        "success": int, "failed": int, "created_at": int, "completed_at": int,
        "request_id": str, "user_info": str, "callback": str, "callback_secret": str,
        "token": str,
    }, pk="id", not_null={"tenant_id", "type", "kind", "status", "total", "success", "failed",
                          "created_at", "request_id"})
    db["batches"].create_index(["status", "created_at"])
    db["batch_items"].create({
        "batch_id": str, "idx": int, "body": str, "status": str, "participant_id": str,
        "event_id": str, "reason": str, "error_code": str,
    }, pk=("batch_id", "idx"), not_null={"body", "status"})
    db["batch_items"].create_index(["batch_id", "status", "idx"])


def _migrate_4(db: sqlite_utils.Database) -> None:
    """Index rows by participant: every write replaces its participant's rows, and without this
    the DELETE scanned all of the type's rows in the tenant (15 ms per write at 10,000)."""
    db["attribute_index"].create_index(["tenant_id", "type", "participant_id"])


def _migrate_5(db: sqlite_utils.Database) -> None:
    """Live participants by state and entry time, for the timers: finding the next due ttl or
    terminalTTL then never walks the archived ones (which stay in their terminal state)."""
    db.execute("CREATE INDEX participants_live_state ON participants"
               " (type, state, state_entered_at) WHERE archived_at IS NULL")


MIGRATIONS = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3, 4: _migrate_4, 5: _migrate_5}


_STORES: weakref.WeakSet[Store] = weakref.WeakSet()
_INHERITED: list = []  # a forked child's copies of its parent's connections, never used


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class StoredParticipant:
    tenant_id: str
    id: str
    type: str
    unique_code: str
    name: str | None
    owner: str | None
    category: str | None
    sub_category: str | None
    template_id: str | None
    state: str
    properties: dict
    version: int
    created_at: int
    updated_at: int
    state_entered_at: int
    created_by: dict | None
    updated_by: dict | None
    callback: dict | None
    callback_secret: str | None = None

    @property
    def core(self) -> dict:
        return {"name": self.name, "owner": self.owner, "category": self.category,
                "subCategory": self.sub_category, "templateId": self.template_id}


PARTICIPANT_COLUMNS = (
    "tenant_id, id, type, unique_code, name, owner, category, sub_category, template_id, "
    "state, properties, version, created_at, updated_at, state_entered_at, created_by, "
    "updated_by, callback, callback_secret"
)


def _load_json(text):
    return json.loads(text) if text is not None else None


def participant_from_row(row) -> StoredParticipant:
    values = list(row)
    for i in (10, 15, 16, 17):
        values[i] = _load_json(values[i])
    return StoredParticipant(*values)


class Store:
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
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        intent = getattr(self._local, "intent", None)
        if intent is not None:
            os.close(intent)
            self._local.intent = None

    @property
    def sqlite_version(self) -> str:
        return self.conn.execute("SELECT sqlite_version()").fetchone()[0]

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
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error."""
        conn = self.conn
        announced = self._announce()
        self._local.queued = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
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
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every statement in it sees the same snapshot."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- hot-path statements -------------------------------------------------------------

    def participant(self, conn, tenant_id: str, participant_id: str, *,
                    archived: bool = False) -> StoredParticipant | None:
        """The participant, or None; archived ones only when `archived` is true."""
        row = conn.execute(
            f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = ? AND id = ?"
            + ("" if archived else " AND archived_at IS NULL"),
            (tenant_id, participant_id),
        ).fetchone()
        return participant_from_row(row) if row else None
