"""The SQLite backend: schema, migrations and every SQL statement it runs."""

from engine.storage.sqlite.storage import SYNCHRONOUS, SqliteStorage, sqlite3

__all__ = ["SYNCHRONOUS", "SqliteStorage", "sqlite3"]
