"""Batches: accepted in one short transaction, then applied item by item, each its own write.

A batch is a list of create or update bodies. Accepting it stores the batch, every item and the
idempotency answer together. The batch worker (engine.jobs.batchworker, run by the dispatcher)
then applies the pending items in order through `Service.execute`, so each item is one write
transaction with its own event, its own idempotency key and its outcome recorded in that same
transaction: other writers are served between items, one bad item never rolls back another,
and an item re-run after a crash is a replay, never a duplicate. When no item is pending the
batch is completed and its callback (the summary) is put in the outbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import BatchNotFound
from engine.service import idempotency
from engine.service.retries import retrying
from engine.storage.interface import Batch, BatchItem, Storage

__all__ = ["ITEM_SEPARATOR", "KINDS", "Item", "accept", "item_outcome", "listed", "status",
           "summary"]

KINDS = ("create", "update")
# An item's request id is '{batch request id}·batch:{index}': '·' is not printable ASCII, so no
# client can send an id that collides with an item's.
ITEM_SEPARATOR = "·batch:"
MAX_ISSUES_IN_REASON = 5


@dataclass(frozen=True, slots=True)
class Item:
    """One item as accepted: what to store, and why it cannot be applied (None if it can)."""

    body: Any
    reason: str | None = None


# -- accepting ---------------------------------------------------------------------------------

def accept(storage: Storage, *, tenant_id: str, plural: str, kind: str, request_id: str,
           fingerprint: str, items: list[Item], user_info: dict | None, callback: dict | None,
           callback_secret: str | None, token: str | None, now: int,
           render: Callable[[str], tuple[int, str]]) -> tuple[int, str, bool]:
    """Store a batch and its items with the request's answer; a repeat replays that answer.

    Returns (status, body, replayed). Items that carry a reason are stored as failed already.
    """
    if kind not in KINDS:
        raise ValueError(f"a batch creates or updates, not {kind!r}")
    failed = sum(1 for item in items if item.reason is not None)
    batch = Batch(f"batch:{uuid.uuid4()}", tenant_id, plural, kind, "pending", len(items), 0,
                  failed, now, None, request_id, user_info, callback, callback_secret, token)
    rows = [BatchItem(i, "pending" if item.reason is None else "failed", item.body,
                      reason=item.reason) for i, item in enumerate(items)]

    def unit() -> tuple[int, str, bool]:
        with storage.write() as uow:
            replay = idempotency.lookup(uow, tenant_id, request_id, fingerprint, now)
            if replay is not None:
                return replay[0], replay[1], True
            uow.batches.add(batch, rows)
            status_code, body = render(batch.id)
            uow.idempotency.save(tenant_id, request_id, fingerprint, status_code, body, now)
            storage.work_queued()  # the dispatcher's batch worker hears of it once committed
        return status_code, body, False

    return retrying(unit)


# -- outcomes ----------------------------------------------------------------------------------

def listed(issues: list[dict]) -> str:
    """' ($.path: message; ...)' for the first few issues, '' for none."""
    if not issues:
        return ""
    shown = "; ".join(f"{i['path']}: {i['message']}" for i in issues[:MAX_ISSUES_IN_REASON])
    more = len(issues) - MAX_ISSUES_IN_REASON
    return f" ({shown}" + (f"; and {more} more" if more > 0 else "") + ")"


def item_outcome(index: int, record: dict) -> BatchItem:
    """An item's outcome from its event: the event's reason with the problems it names."""
    success = bool(record["payloadValidated"])
    return BatchItem(index, "success" if success else "failed",
                     participant_id=record["entityInstanceId"], event_id=record["event"]["id"],
                     reason=None if success else record["reason"] + listed(
                         record.get("errors") or []),
                     error_code=record["errorCode"])


def summary(batch: Batch, outcomes: list[BatchItem]) -> dict:
    """OS1's BatchResponse: meta, then errors and successes by refID (the item's index)."""
    errors, successes = [], []
    for item in outcomes:
        if item.status == "success":
            successes.append({"refID": item.index, "id": item.participant_id,
                              "eventId": item.event_id})
            continue
        entry = {"refID": item.index, "reason": item.reason}
        if item.error_code is not None:
            entry["errorCode"] = item.error_code
        if item.participant_id is not None:
            entry["id"] = item.participant_id
        if item.event_id is not None:
            entry["eventId"] = item.event_id
        errors.append(entry)
    return {"batchId": batch.id, "participantType": batch.type,
            "meta": {"status": batch.status, "success": batch.success, "failed": batch.failed,
                     "total": batch.total},
            "errors": errors, "success": successes}


def status(storage: Storage, tenant_id: str, plural: str, batch_id: str) -> dict:
    """The batch's summary as one consistent snapshot; another tenant's batch is not found."""
    with storage.read() as uow:
        batch = uow.batches.get(tenant_id, batch_id)
        if batch is None or batch.type != plural:
            raise BatchNotFound(batch_id)
        return summary(batch, uow.batches.outcomes(batch))
