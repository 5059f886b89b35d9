"""Moving up: copy a SQLite database into an empty PostgreSQL database, and prove the copy.

Every table is copied whole (participants, their attribute index, events with their sequences,
idempotency answers, outbox, deliveries, batches and their items); the per-participant event
counters and the id sequences are set from what was copied. The target must be empty. Then each
table is read back from both sides in key order and compared by row count and a SHA-256 of its
rows in one canonical form, so a copy that differs in a single value is reported.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import psycopg

from engine.storage.postgres import PostgresStorage
from engine.storage.postgres.queries import index_number
from engine.storage.sqlite import SqliteStorage

__all__ = ["CopyRefused", "TableCopy", "copy_database"]


class CopyRefused(Exception):
    """The copy cannot be made (or did not verify); nothing in the target is to be trusted."""


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]         # the PostgreSQL columns, in the order of `source`
    source: str                      # SQLite SELECT of those values, in key order
    target: str                      # PostgreSQL SELECT of the same values, in the same order
    convert: Callable[[tuple], tuple] = tuple  # a SQLite row as PostgreSQL takes it


def _attribute_row(row: tuple) -> tuple:
    tenant_id, type_, name, participant_id, value = row
    if isinstance(value, str):
        return tenant_id, type_, name, participant_id, None, value
    return tenant_id, type_, name, participant_id, index_number(value), None


def _event_row(row: tuple) -> tuple:
    return (*row[:8], bool(row[8]), *row[9:])


_PARTICIPANT = ("tenant_id", "id", "type", "unique_code", "name", "owner", "category",
                "sub_category", "template_id", "state", "properties", "version", "created_at",
                "updated_at", "state_entered_at", "created_by", "updated_by", "callback",
                "callback_secret", "archived_at", "timer_blocked_version")
_EVENT = ("seq", "tenant_id", "id", "participant_id", "participant_type", "sequence", "version",
          "command_name", "success", "request_id", "created_at", "body")
_IDEMPOTENCY = ("tenant_id", "request_id", "fingerprint", "status", "response", "created_at",
                "lease_until")
_OUTBOX = ("tenant_id", "id", "event_id", "participant_id", "kind", "url", "secret", "status",
           "attempts", "next_attempt_at", "created_at", "last_error", "lease_until",
           "lease_owner", "delivered_at", "method", "headers", "payload")
_DELIVERY = ("tenant_id", "id", "outbox_id", "attempt", "at", "status_code", "error",
             "duration_ms", "outcome")
_BATCH = ("tenant_id", "id", "type", "kind", "status", "total", "success", "failed",
          "created_at", "completed_at", "request_id", "user_info", "callback",
          "callback_secret", "token")
_ITEM = ("tenant_id", "batch_id", "idx", "body", "status", "participant_id", "event_id",
         "reason", "error_code")


def _plain(columns: Iterable[str], prefix: str = "") -> str:
    return ", ".join(prefix + c for c in columns)


TABLES = (
    _Table("participants", _PARTICIPANT,
           f"SELECT {_plain(_PARTICIPANT)} FROM participants ORDER BY tenant_id, id",
           f"SELECT {_plain(_PARTICIPANT)} FROM participants ORDER BY tenant_id, id"),
    _Table("attribute_index",
           ("tenant_id", "type", "name", "participant_id", "value_number", "value_text"),
           "SELECT tenant_id, type, name, participant_id, value FROM attribute_index"
           " ORDER BY tenant_id, type, name, participant_id",
           "SELECT tenant_id, type, name, participant_id, value_number, value_text"
           " FROM attribute_index ORDER BY tenant_id, type, name, participant_id",
           _attribute_row),
    _Table("events", _EVENT,
           f"SELECT {_plain(_EVENT)} FROM events ORDER BY seq",
           f"SELECT {_plain(_EVENT)} FROM events ORDER BY seq", _event_row),
    _Table("idempotency", _IDEMPOTENCY,
           f"SELECT {_plain(_IDEMPOTENCY)} FROM idempotency ORDER BY tenant_id, request_id",
           f"SELECT {_plain(_IDEMPOTENCY)} FROM idempotency ORDER BY tenant_id, request_id"),
    _Table("outbox", _OUTBOX,
           f"SELECT {_plain(_OUTBOX)} FROM outbox ORDER BY id",
           f"SELECT {_plain(_OUTBOX)} FROM outbox ORDER BY id"),
    # SQLite's deliveries carry no tenant: it is their outbox row's
    _Table("deliveries", _DELIVERY,
           "SELECT o.tenant_id, " + _plain(_DELIVERY[1:], "d.") + " FROM deliveries d"
           " JOIN outbox o ON o.id = d.outbox_id ORDER BY d.id",
           f"SELECT {_plain(_DELIVERY)} FROM deliveries ORDER BY id"),
    _Table("batches", _BATCH,
           f"SELECT {_plain(_BATCH)} FROM batches ORDER BY tenant_id, id",
           f"SELECT {_plain(_BATCH)} FROM batches ORDER BY tenant_id, id"),
    _Table("batch_items", _ITEM,
           "SELECT b.tenant_id, " + _plain(_ITEM[1:], "i.") + " FROM batch_items i"
           " JOIN batches b ON b.id = i.batch_id ORDER BY b.tenant_id, i.batch_id, i.idx",
           f"SELECT {_plain(_ITEM)} FROM batch_items ORDER BY tenant_id, batch_id, idx"),
)
_COUNTED = {"deliveries": "SELECT COUNT(*) FROM deliveries",
            "batch_items": "SELECT COUNT(*) FROM batch_items"}


def _canonical(value):
    """One form for a value read from either side: numbers exact, booleans as 0/1."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else repr(float(value))
    if isinstance(value, float):
        return int(value) if value.is_integer() and math.isfinite(value) else repr(value)
    return value


def _digest(rows: Iterator[tuple]) -> tuple[int, str]:
    digest, count = hashlib.sha256(), 0
    for row in rows:
        digest.update(json.dumps([_canonical(v) for v in row], ensure_ascii=False,
                                 default=str).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()


def _target_empty(conn: psycopg.Connection) -> list[str]:
    return [t.name for t in TABLES
            if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {t.name})").fetchone()[0]]


def copy_database(source: str, target: str, *, progress=lambda line: None) -> list[TableCopy]:
    """Copy the SQLite database at `source` into the empty PostgreSQL database `target`."""
    sqlite = SqliteStorage(source)
    postgres = PostgresStorage(target)  # creates the schema when the target has none
    lite = sqlite.connect()
    try:
        with postgres.connect() as conn:
            if not_empty := _target_empty(conn):
                raise CopyRefused(f"the target is not empty (rows in {', '.join(not_empty)}); "
                                  "copy only into a new database")
            with conn.transaction():
                for table in TABLES:
                    with conn.cursor() as cursor, cursor.copy(
                            f"COPY {table.name} ({_plain(table.columns)}) FROM STDIN") as copy:
                        for row in lite.execute(table.source):
                            copy.write_row(table.convert(row))
                    progress(f"copied {table.name}")
                conn.execute("INSERT INTO event_sequences (tenant_id, participant_id, last)"
                             " SELECT tenant_id, participant_id, MAX(sequence) FROM events"
                             " GROUP BY tenant_id, participant_id")
                for name, column in (("events", "seq"), ("outbox", "id"), ("deliveries", "id")):
                    conn.execute(f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'),"
                                 f" COALESCE((SELECT MAX({column}) FROM {name}), 0) + 1, false)")
            report = []
            for table in TABLES:
                expected = _digest(table.convert(r) for r in lite.execute(table.source))
                copied = _digest(iter(conn.execute(table.target)))
                total = lite.execute(_COUNTED.get(table.name, f"SELECT COUNT(*) FROM "
                                                              f"{table.name}")).fetchone()[0]
                if expected != copied or expected[0] != total:
                    raise CopyRefused(
                        f"{table.name} does not verify: {expected[0]} rows read, {copied[0]} in "
                        f"the target, {total} in the source"
                        + ("" if expected[0] != copied[0] else "; the rows differ"))
                report.append(TableCopy(table.name, copied[0], copied[1]))
                progress(f"verified {table.name}: {copied[0]} rows, sha256 {copied[1][:16]}…")
            return report
    finally:
        lite.close()
        sqlite.close()
        postgres.close()
