"""The storage interface (a unit of work and its repositories) and one implementation per
backend, chosen by the database setting: a file path for SQLite, a postgresql:// URL for
PostgreSQL."""

from __future__ import annotations

from engine.storage import forks  # noqa: F401 - first, so its fork hook runs before others
from engine.storage.interface import (
    Storage,
    StorageConflict,
    StorageUnavailable,
    StoredParticipant,
)

__all__ = ["Storage", "StorageConflict", "StorageUnavailable", "StoredParticipant", "is_postgres",
           "open_storage"]


def is_postgres(database: str) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))


def open_storage(database: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30_000,
                 **postgres_options) -> Storage:
    """The storage for `database`, its schema created or migrated."""
    if is_postgres(database):
        from engine.storage.postgres import PostgresStorage

        return PostgresStorage(str(database), **postgres_options)
    from engine.storage.sqlite import SqliteStorage

    return SqliteStorage(database, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
