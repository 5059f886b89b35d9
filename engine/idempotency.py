"""Idempotency keys: the first response to (tenant, request id) is stored with the write."""

from __future__ import annotations

import hashlib

from .conventions import compact_json
from .errors import RequestIdReused, RequestInFlight

__all__ = ["fingerprint", "lookup", "prune", "release", "reserve", "save"]


def fingerprint(method: str, path: str, body) -> str:
    """A digest of the request: method, path and canonical JSON body."""
    canonical = compact_json(body, sort_keys=True)
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).hexdigest()


def lookup(conn, tenant_id: str, request_id: str, digest: str, now: int, *,
           reserved: bool = False) -> tuple[int, str] | None:
    """The stored (status, body) to replay, None if the key is free; raises on conflicts.

    `reserved` says the caller holds the key's reservation itself (it called a hook meanwhile).
    """
    row = conn.execute(
        "SELECT fingerprint, status, response, lease_until FROM idempotency"
        " WHERE tenant_id = ? AND request_id = ?", (tenant_id, request_id),
    ).fetchone()
    if row is None:
        return None
    stored, status, response, lease_until = row
    if stored != digest:
        raise RequestIdReused(request_id)
    if response is None:
        if not reserved and lease_until is not None and lease_until > now:
            raise RequestInFlight(request_id)
        return None  # an abandoned reservation (its process died): take it over
    return status, response


def reserve(conn, tenant_id: str, request_id: str, digest: str, now: int, lease_ms: int) -> None:
    """Mark the key as in flight (for work done outside the write transaction)."""
    conn.execute(
        "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
        " created_at, lease_until) VALUES (?, ?, ?, NULL, NULL, ?, ?)"
        " ON CONFLICT (tenant_id, request_id) DO UPDATE SET lease_until = excluded.lease_until",
        (tenant_id, request_id, digest, now, now + lease_ms),
    )


def release(conn, tenant_id: str, request_id: str) -> None:
    """Drop a reservation that will get no answer (the request ended in a refusal)."""
    conn.execute("DELETE FROM idempotency WHERE tenant_id = ? AND request_id = ?"
                 " AND response IS NULL", (tenant_id, request_id))


def save(conn, tenant_id: str, request_id: str, digest: str, status: int, body: str,
         now: int) -> None:
    """Store the response, in the same transaction as the write it answers."""
    conn.execute(
        "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
        " created_at, lease_until) VALUES (?, ?, ?, ?, ?, ?, NULL)"
        " ON CONFLICT (tenant_id, request_id) DO UPDATE SET status = excluded.status,"
        " response = excluded.response, lease_until = NULL",
        (tenant_id, request_id, digest, status, body, now),
    )


def prune(conn, older_than: int, batch: int = 1000) -> int:
    """Forget keys created before `older_than` (epoch ms); returns how many were removed."""
    cursor = conn.execute(
        "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
        " WHERE created_at < ? AND response IS NOT NULL LIMIT ?)", (older_than, batch),
    )
    return cursor.rowcount
