"""The batch worker: applies the pending items of unfinished batches through the service.

Run by the dispatcher in rounds. Each item is one `Service.execute` (its own transaction, its
own event, its own idempotency key, its outcome recorded with the event); when a batch has no
pending item left it is completed and its summary goes to the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from engine.errors import ParticipantNotFound, RequestInFlight, UnstorableText
from engine.model import commands
from engine.model.conventions import compact_json
from engine.model.types import ParticipantType
from engine.service import idempotency
from engine.service.batches import ITEM_SEPARATOR, summary
from engine.service.participants import Service
from engine.storage.interface import (
    Batch,
    BatchItem,
    OutboxEntry,
    StorageConflict,
    StorageUnavailable,
)

__all__ = ["BatchWorker"]

log = logging.getLogger(__name__)


def _render(participant_id: str, record: dict, state: str | None) -> tuple[int, str]:
    return 202, ""  # an item's answer is its batch_items row; nobody replays it over HTTP


class BatchWorker:
    """Applies pending items of unfinished batches, oldest batch first, one transaction each."""

    def __init__(self, types: Mapping[str, ParticipantType], service: Service,
                 clock: Callable[[], float] = time.time, per_batch: int = 100,
                 max_hold_off: float = 0.1, round_seconds: float = 1.0):
        self.types = types
        self.service = service
        self.storage = service.storage
        self.clock = clock
        self.per_batch = per_batch   # items of one batch per round, so a big batch shares
        self.max_hold_off = max_hold_off   # seconds an item waits for foreground writes, at most
        self.round_seconds = round_seconds  # a round ends after this (deliveries wait for it)

    def run_once(self, limit: int = 200, stop: threading.Event | None = None) -> int:
        """Apply up to `limit` pending items, for about `round_seconds` at most; completes
        batches left with none. Returns how many items were applied.

        Its writes are background ones: before each item it holds off (up to `max_hold_off`)
        while foreground writes wait for the write lock, so clients are served first.
        """
        with self.storage.background():
            return self._run(limit, stop)

    def due(self, uow) -> bool:
        """Whether a batch is unfinished (a cheap read: the status index, no write lock)."""
        return uow.batches.any_unfinished()

    def _hold_off(self) -> None:
        deadline = time.monotonic() + self.max_hold_off
        while self.storage.writers_waiting() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def _run(self, limit: int, stop: threading.Event | None) -> int:
        with self.storage.read() as uow:
            open_batches = uow.batches.unfinished()
        ends = time.monotonic() + self.round_seconds
        done = attempted = 0
        for batch in open_batches:
            if done >= limit or (stop is not None and stop.is_set()):
                break
            if attempted and time.monotonic() >= ends:
                break
            take = min(self.per_batch, limit - done)
            with self.storage.read() as uow:
                pending = uow.batches.pending(batch, take)
            if pending and batch.status == "pending":
                with self.storage.write() as uow:
                    uow.batches.start(batch)
            for item in pending:
                if stop is not None and stop.is_set():
                    return done
                if attempted and time.monotonic() >= ends:
                    return done
                attempted += 1
                self._hold_off()
                done += self._apply(batch, item.index, item.body)
            if len(pending) < take:
                self._complete(batch)
        return done

    def _fail(self, batch: Batch, index: int, reason: str,
              participant_id: str | None = None) -> None:
        """An item that is refused before it becomes an event (no event is written)."""
        with self.storage.write() as uow:
            uow.batches.finish_item(batch.tenant_id, batch.id, BatchItem(
                index, "failed", participant_id=participant_id, reason=reason))

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
        except UnstorableText as error:  # what a single request answers with 400
            self._fail(batch, index, str(error))
        except RequestInFlight:
            return False  # another worker is calling this item's onRequest hook
        except (StorageUnavailable, StorageConflict):
            raise  # the database is unavailable or busy: the item stays pending for next round
        except Exception:
            log.exception("batch %s item %d could not be applied", batch.id, index)
            self._fail(batch, index, "internal error: the item was not applied")
        return True

    def _complete(self, batch: Batch) -> bool:
        """Mark the batch completed once no item is pending, and queue its callback."""
        now = int(self.clock() * 1000)
        with self.storage.write() as uow:
            completed = uow.batches.complete(batch, now)
            if completed is None:
                return False  # items still pending, or another worker completed it
            url = (batch.callback or {}).get("url")
            if url:
                payload = {**summary(completed, uow.batches.outcomes(completed)),
                           "callbackMeta": batch.callback.get("meta")}
                uow.outbox.add([OutboxEntry(batch.id, batch.tenant_id, batch.id,
                                            "batchCallback", url, batch.callback_secret,
                                            payload=compact_json(payload))], now)
                self.storage.work_queued()
        log.info("batch %s completed: %d succeeded, %d failed", batch.id, completed.success,
                 completed.failed)
        return True
