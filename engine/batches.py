"""Batches: accepted in one short transaction, then applied item by item, each its own write.

A batch is a list of create or update bodies. Accepting it stores the batch, every item and the
idempotency answer together. The BatchWorker (run by the dispatcher) then applies the pending
items in order through `Service.execute`, so each item is one `BEGIN IMMEDIATE` transaction with
its own event, its own idempotency key and its outcome recorded in that same transaction: other
writers are served between items, one bad item never rolls back another, and an item re-run after
a crash is a replay, never a duplicate. When no item is pending the batch is completed and its
callback (the summary) is put in the outbox.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import commands, idempotency
from .conventions import compact_json
from .errors import BatchNotFound, ParticipantNotFound, RequestInFlight
from .store import Store, sqlite3

if TYPE_CHECKING:
    from .registry import ParticipantType
    from .service import Service

__all__ = ["Batch", "BatchWorker", "ITEM_SEPARATOR", "Item", "accept", "listed", "record_item",
           "status"]

log = logging.getLogger(__name__)

KINDS = ("create", "update")
# An item's request id is '{batch request id}·batch:{index}': '·' is not printable ASCII, so no
# client can send an id that collides with an item's.
ITEM_SEPARATOR = "·batch:"
MAX_ISSUES_IN_REASON = 5

_COLUMNS = ("id, tenant_id, type, kind, status, total, success, failed, created_at, completed_at,"
            " request_id, user_info, callback, callback_secret, token")


@dataclass(frozen=True, slots=True)
class Item:
    """One item as accepted: what to store, and why it cannot be applied (None if it can)."""

    body: Any
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    tenant_id: str
    type: str
    kind: str                  # create or update
    status: str                # pending, processing, completed
    total: int
    success: int
    failed: int
    created_at: int
    completed_at: int | None
    request_id: str
    user_info: dict | None
    callback: dict | None
    callback_secret: str | None
    token: str | None


def _batch(row) -> Batch:
    values = list(row)
    for i in (11, 12):
        values[i] = json.loads(values[i]) if values[i] is not None else None
    return Batch(*values)


def _load(conn, batch_id: str) -> Batch | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
    return _batch(row) if row else None


def _json(value) -> str | None:
    return None if value is None else compact_json(value)


# -- accepting ---------------------------------------------------------------------------------

def accept(store: Store, *, tenant_id: str, plural: str, kind: str, request_id: str,
           fingerprint: str, items: list[Item], user_info: dict | None, callback: dict | None,
           callback_secret: str | None, token: str | None, now: int,
           render: Callable[[str], tuple[int, str]]) -> tuple[int, str, bool]:
    """Store a batch and its items with the request's answer; a repeat replays that answer.

    Returns (status, body, replayed). Items that carry a reason are stored as failed already.
    """
    if kind not in KINDS:
        raise ValueError(f"a batch creates or updates, not {kind!r}")
    batch_id = f"batch:{uuid.uuid4()}"
    rows = [(batch_id, i, _json(item.body), "pending" if item.reason is None else "failed",
             item.reason) for i, item in enumerate(items)]
    failed = sum(1 for item in items if item.reason is not None)
    with store.write() as conn:
        replay = idempotency.lookup(conn, tenant_id, request_id, fingerprint, now)
        if replay is not None:
            return replay[0], replay[1], True
        conn.execute(
            f"INSERT INTO batches ({_COLUMNS}) VALUES (?, ?, ?, ?, 'pending', ?, 0, ?, ?, NULL,"
            " ?, ?, ?, ?, ?)",
            (batch_id, tenant_id, plural, kind, len(items), failed, now, request_id,
             _json(user_info), _json(callback), callback_secret, token))
        conn.executemany("INSERT INTO batch_items (batch_id, idx, body, status, reason)"
                         " VALUES (?, ?, ?, ?, ?)", rows)
        status_code, body = render(batch_id)
        idempotency.save(conn, tenant_id, request_id, fingerprint, status_code, body, now)
        store.work_queued()  # a dispatcher of this process starts on it at once
    return status_code, body, False


# -- outcomes ----------------------------------------------------------------------------------

def _failure_reason(record: dict) -> str:
    """The event's reason with the problems it names: 'invalid attributes ($.x: ...)'."""
    return record["reason"] + listed(record.get("errors") or [])


def listed(issues: list[dict]) -> str:
    """' ($.path: message; ...)' for the first few issues, '' for none."""
    if not issues:
        return ""
    shown = "; ".join(f"{i['path']}: {i['message']}" for i in issues[:MAX_ISSUES_IN_REASON])
    more = len(issues) - MAX_ISSUES_IN_REASON
    return f" ({shown}" + (f"; and {more} more" if more > 0 else "") + ")"


def record_item(conn, batch_id: str, index: int, record: dict) -> None:
    """Record an item's outcome from its event, in the event's own transaction."""
    success = bool(record["payloadValidated"])
    _finish(conn, batch_id, index, success=success, participant_id=record["entityInstanceId"],
            event_id=record["event"]["id"],
            reason=None if success else _failure_reason(record), error_code=record["errorCode"])


def _finish(conn, batch_id: str, index: int, *, success: bool, participant_id: str | None,
            event_id: str | None, reason: str | None, error_code: str | None) -> None:
    cursor = conn.execute(
        "UPDATE batch_items SET status = ?, participant_id = ?, event_id = ?, reason = ?,"
        " error_code = ? WHERE batch_id = ? AND idx = ? AND status = 'pending'",
        ("success" if success else "failed", participant_id, event_id, reason, error_code,
         batch_id, index))
    if cursor.rowcount == 1:
        conn.execute("UPDATE batches SET success = success + ?, failed = failed + ? WHERE id = ?",
                     (int(success), int(not success), batch_id))


def _summary(conn, batch: Batch) -> dict:
    """OS1's BatchResponse: meta, then errors and successes by refID (the item's index)."""
    errors, successes = [], []
    for index, state, participant_id, event_id, reason, error_code in conn.execute(
            "SELECT idx, status, participant_id, event_id, reason, error_code FROM batch_items"
            " WHERE batch_id = ? AND status != 'pending' ORDER BY idx", (batch.id,)):
        if state == "success":
            successes.append({"refID": index, "id": participant_id, "eventId": event_id})
            continue
        entry = {"refID": index, "reason": reason}
        if error_code is not None:
            entry["errorCode"] = error_code
        if participant_id is not None:
            entry["id"] = participant_id
        if event_id is not None:
            entry["eventId"] = event_id
        errors.append(entry)
    return {"batchId": batch.id, "participantType": batch.type,
            "meta": {"status": batch.status, "success": batch.success, "failed": batch.failed,
                     "total": batch.total},
            "errors": errors, "success": successes}


def status(store: Store, tenant_id: str, plural: str, batch_id: str) -> dict:
    """The batch's summary as one consistent snapshot; another tenant's batch is not found."""
    with store.read() as conn:
        batch = _load(conn, batch_id)
        if batch is None or batch.tenant_id != tenant_id or batch.type != plural:
            raise BatchNotFound(batch_id)
        return _summary(conn, batch)


# -- processing --------------------------------------------------------------------------------

def _render(participant_id: str, record: dict, state: str | None) -> tuple[int, str]:
    return 202, ""  # an item's answer is its batch_items row; nobody replays it over HTTP


class BatchWorker:
    """Applies pending items of unfinished batches, oldest batch first, one transaction each."""

    def __init__(self, types: Mapping[str, ParticipantType], service: Service,
                 clock: Callable[[], float] = time.time, per_batch: int = 100,
                 max_hold_off: float = 0.1, round_seconds: float = 1.0):
        self.types = types
        self.service = service
        self.clock = clock
        self.per_batch = per_batch   # items of one batch per round, so a big batch shares
        self.max_hold_off = max_hold_off   # seconds an item waits for foreground writes, at most
        self.round_seconds = round_seconds  # a round ends after this (deliveries wait for it)

    @property
    def store(self) -> Store:
        return self.service.store

    def run_once(self, limit: int = 200, stop: threading.Event | None = None) -> int:
        """Apply up to `limit` pending items, for about `round_seconds` at most; completes
        batches left with none. Returns how many items were applied.

        Its writes are background ones: before each item it holds off (up to `max_hold_off`)
        while foreground writes wait for the write lock, so clients are served first.
        """
        with self.store.background():
            return self._run(limit, stop)

    def due(self, conn) -> bool:
        """Whether a batch is unfinished (a cheap read: the status index, no write lock)."""
        return conn.execute("SELECT 1 FROM batches WHERE status IN ('pending', 'processing')"
                            " LIMIT 1").fetchone() is not None

    def _hold_off(self) -> None:
        deadline = time.monotonic() + self.max_hold_off
        while self.store.writers_waiting() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _run(self, limit: int, stop: threading.Event | None) -> int:
        open_batches = [_batch(row) for row in self.store.conn.execute(
            f"SELECT {_COLUMNS} FROM batches WHERE status IN ('pending', 'processing')"
            " ORDER BY created_at, id").fetchall()]
        ends = time.monotonic() + self.round_seconds
        done = attempted = 0
        for batch in open_batches:
            if done >= limit or (stop is not None and stop.is_set()):
                break
            if attempted and time.monotonic() >= ends:
                break
            take = min(self.per_batch, limit - done)
            pending = self.store.conn.execute(
                "SELECT idx, body FROM batch_items WHERE batch_id = ? AND status = 'pending'"
                " ORDER BY idx LIMIT ?", (batch.id, take)).fetchall()
            if pending and batch.status == "pending":
                self._start(batch)
            for index, body in pending:
                if stop is not None and stop.is_set():
                    return done
                if attempted and time.monotonic() >= ends:
                    return done
                attempted += 1
                self._hold_off()
                done += self._apply(batch, index, json.loads(body))
            if len(pending) < take:
                self._complete(batch)
        return done

    def _start(self, batch: Batch) -> None:
        with self.store.write() as conn:
            conn.execute("UPDATE batches SET status = 'processing' WHERE id = ?"
                         " AND status = 'pending'", (batch.id,))

    def _fail(self, batch: Batch, index: int, reason: str,
              participant_id: str | None = None) -> None:
        """An item that is refused before it becomes an event (no event is written)."""
        with self.store.write() as conn:
            _finish(conn, batch.id, index, success=False, participant_id=participant_id,
                    event_id=None, reason=reason, error_code=None)

    def _apply(self, batch: Batch, index: int, body: dict) -> bool:
        """Apply one item; False when it stays pending for a later round."""
        ptype = self.types.get(batch.type)
        if ptype is None:
            self._fail(batch, index, f"unknown participant type '{batch.type}'")
            return True
        context = dict(
            tenant_id=batch.tenant_id, request_id=f"{batch.request_id}{ITEM_SEPARATOR}{index}",
            fingerprint=idempotency.fingerprint("BATCH", batch.id, index),
            user_info=batch.user_info, callback_secret=batch.callback_secret, token=batch.token,
            batch_id=batch.id, batch_item=index)
        if batch.kind == "update":
            body = dict(body)
            context["participant_id"] = body.pop("id")
        command = commands.build(batch.kind, body, **context)
        try:
            self.service.execute(ptype, command, _render)
        except ParticipantNotFound as error:  # what a single update answers with 404
            self._fail(batch, index, f"{error} in this tenant", error.participant_id)
        except RequestInFlight:
            return False  # another worker is calling this item's onRequest hook
        except sqlite3.Error:
            raise  # the database is unavailable: the item stays pending for the next round
        except Exception:
            log.exception("batch %s item %d could not be applied", batch.id, index)
            self._fail(batch, index, "internal error: the item was not applied")
        return True

    def _complete(self, batch: Batch) -> bool:
        """Mark the batch completed once no item is pending, and queue its callback."""
        now = int(self.clock() * 1000)
        with self.store.write() as conn:
            if conn.execute("SELECT 1 FROM batch_items WHERE batch_id = ? AND status = 'pending'"
                            " LIMIT 1", (batch.id,)).fetchone():
                return False
            cursor = conn.execute(
                "UPDATE batches SET status = 'completed', completed_at = ?, token = NULL,"
                " callback_secret = NULL WHERE id = ? AND status != 'completed'", (now, batch.id))
            if cursor.rowcount != 1:
                return False  # another worker completed it
            completed = _load(conn, batch.id)
            url = (batch.callback or {}).get("url")
            if url:
                payload = {**_summary(conn, completed), "callbackMeta": batch.callback.get("meta")}
                conn.execute(
                    "INSERT INTO outbox (event_id, tenant_id, participant_id, kind, url, secret,"
                    " status, attempts, next_attempt_at, created_at, method, headers, payload)"
                    " VALUES (?, ?, ?, 'batchCallback', ?, ?, 'pending', 0, ?, ?, 'POST', NULL, ?)",
                    (batch.id, batch.tenant_id, batch.id, url, batch.callback_secret, now, now,
                     _json(payload)))
                self.store.work_queued()
        log.info("batch %s completed: %d succeeded, %d failed", batch.id, completed.success,
                 completed.failed)
        return True
