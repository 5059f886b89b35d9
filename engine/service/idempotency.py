"""Idempotency keys: the first response to (tenant, request id) is stored with the write."""

from __future__ import annotations

import hashlib

from engine.errors import RequestIdReused, RequestInFlight
from engine.model.conventions import compact_json
from engine.storage.interface import UnitOfWork

__all__ = ["PRUNE_STEP", "fingerprint", "lookup"]

PRUNE_STEP = 1000  # keys forgotten in one go, so pruning never holds the write lock for long


def fingerprint(method: str, path: str, body) -> str:
    """A digest of the request: method, path and canonical JSON body."""
    canonical = compact_json(body, sort_keys=True)
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).hexdigest()


def lookup(uow: UnitOfWork, tenant_id: str, request_id: str, digest: str, now: int, *,
           reserved: bool = False) -> tuple[int, str] | None:
    """Inside a write: the stored (status, body) to replay, None if the key is free (it is
    then this write's: a concurrent request with the same key waits for this write to end and
    replays its answer); raises on conflicts.

    `reserved` says the caller holds the key's reservation itself (it called a hook meanwhile).
    """
    key = uow.idempotency.claim(tenant_id, request_id, digest, now)
    if key is None:
        return None
    if key.fingerprint != digest:
        raise RequestIdReused(request_id)
    if key.response is None:
        if not reserved and key.lease_until is not None and key.lease_until > now:
            raise RequestInFlight(request_id)
        return None  # an abandoned reservation (its process died): take it over
    return key.status, key.response
