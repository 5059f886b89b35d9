"""The PostgreSQL backend: schema, migrations and every SQL statement it runs."""

from engine.storage.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage"]
