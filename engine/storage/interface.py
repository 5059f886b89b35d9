"""The storage interface: a unit of work and the repositories the engine needs.

A backend (`engine.storage.sqlite`, `engine.storage.postgres`) implements these Protocols and
holds every SQL statement; nothing above this package sees a connection, a cursor, a dialect or
a driver. `with storage.write() as uow:` is one transaction: it commits when the block ends and
rolls back when it raises. `with storage.read() as uow:` is one consistent snapshot.

Times are epoch milliseconds; every key includes the tenant id.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from engine.storage.doorbell import Doorbell

__all__ = [
    "QUERYABLE_FIELDS", "Batch", "BatchItem", "Batches", "Claimed", "DueTimer", "Events",
    "Idempotency", "IdempotencyKey", "Outbox", "OutboxEntry", "Participants", "Storage",
    "StorageConflict", "StorageUnavailable", "StoredParticipant", "UnitOfWork",
]


# The core fields every backend can filter and sort participants by (besides indexed attributes).
QUERYABLE_FIELDS = ("id", "state", "name", "owner", "category", "subCategory", "uniqueCode",
                    "templateId", "createdAt", "updatedAt", "version")


class StorageUnavailable(Exception):
    """The database did not answer or the connection was lost; the transaction rolled back."""


class StorageConflict(Exception):
    """The transaction lost a race with a concurrent one and rolled back; retrying the whole
    unit of work sees the winner."""


# -- records ------------------------------------------------------------------------------------

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


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """What is stored for a (tenant, request id): an answer, or a reservation (no response)."""

    fingerprint: str
    status: int | None
    response: str | None
    lease_until: int | None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A delivery owed after commit: a callback, a hook call or a batch summary."""

    event_id: str
    tenant_id: str
    participant_id: str
    kind: str                      # callback, onError, onRequest, batchCallback
    url: str
    secret: str | None
    method: str = "POST"
    headers: dict | None = None
    payload: str | None = None     # None: the event's own body


@dataclass(frozen=True, slots=True)
class Claimed:
    """An outbox row leased to one dispatcher, with the body it must send."""

    id: int
    tenant_id: str
    event_id: str
    kind: str
    url: str
    secret: str | None
    attempts: int
    method: str
    headers: dict | None
    body: str


@dataclass(frozen=True, slots=True)
class DueTimer:
    tenant_id: str
    participant_id: str
    version: int
    state_entered_at: int


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


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One item of a batch and, once applied, its outcome."""

    index: int
    status: str                # pending, success, failed
    body: object = None
    participant_id: str | None = None
    event_id: str | None = None
    reason: str | None = None
    error_code: str | None = None


# -- repositories -------------------------------------------------------------------------------

class Participants(Protocol):
    def get(self, tenant_id: str, participant_id: str, *,
            archived: bool = False) -> StoredParticipant | None:
        """The participant, or None; archived ones only when `archived` is true. Inside a
        write, concurrent writes of the same participant (its creation included) wait until
        this one ends, so the compare-and-set in update() never loses to them."""

    def insert(self, participant: StoredParticipant) -> None: ...

    def update(self, participant: StoredParticipant, expected_version: int) -> bool:
        """Compare-and-set: write `participant` only if the stored version is the expected one.
        Clears a blocked timer."""

    def set_index(self, tenant_id: str, plural: str, participant_id: str,
                  values: Sequence[tuple[str, object]], *, replace: bool) -> None:
        """The participant's indexed attribute values (replacing the old ones if `replace`)."""

    def block_timer(self, tenant_id: str, participant_id: str) -> None:
        """Do not retry the participant's timer until its version changes."""

    def search(self, definition, tenant_id: str, query) -> tuple[list[StoredParticipant], int]:
        """One page of the participants matching a checked ListQuery, and their total."""

    def due_timers(self, plural: str, state: str, entered_before: int,
                   limit: int) -> list[DueTimer]:
        """Live participants whose timer in `state` is due, unblocked, oldest entry first."""

    def next_timer(self, waits: Sequence[tuple[str, str, int, bool]],
                   after: int | None) -> int | None:
        """When the earliest timer falls due (after `after`, if given), or None.

        `waits`: (plural, state, milliseconds spent there before the timer fires, whether a
        blocked timer is skipped), one per ttl and terminalTTL."""

    def archivable(self, plural: str, states: Sequence[str], entered_before: int) -> bool: ...

    def archive(self, plural: str, states: Sequence[str], entered_before: int, now: int) -> int:
        """Archive participants that entered one of `states` before `entered_before`."""


class Events(Protocol):
    def next_sequence(self, tenant_id: str, participant_id: str) -> int:
        """The next number of the participant's contiguous event sequence (from 1)."""

    def append(self, record: dict) -> str:
        """Insert one event; returns its body as stored."""

    def history(self, tenant_id: str, participant_id: str, limit: int,
                offset: int) -> tuple[list[dict], int]: ...


class Idempotency(Protocol):
    def find(self, tenant_id: str, request_id: str) -> IdempotencyKey | None: ...

    def claim(self, tenant_id: str, request_id: str, fingerprint: str,
              now: int) -> IdempotencyKey | None:
        """Inside a write: the stored key, or None when it is free and now this write's.

        A concurrent write that claims the same key waits until this one commits (then finds
        its answer) or rolls back (then the key is free again); nothing of the claim outlives
        a rollback, and save() or reserve() in the same write fills it."""

    def reserve(self, tenant_id: str, request_id: str, fingerprint: str, now: int,
                lease_until: int) -> None: ...

    def release(self, tenant_id: str, request_id: str) -> None: ...

    def save(self, tenant_id: str, request_id: str, fingerprint: str, status: int, body: str,
             now: int) -> None: ...

    def prune(self, older_than: int, limit: int) -> int: ...


class Outbox(Protocol):
    def add(self, entries: Sequence[OutboxEntry], now: int) -> None: ...

    def claimable(self, now: int) -> bool:
        """Whether any row could be claimed now (a read)."""

    def claim(self, now: int, limit: int, lease_until: int, owner: str) -> list[Claimed]:
        """Lease up to `limit` due rows, at most one per participant, oldest first."""

    def next_due(self, after: int) -> int | None:
        """When a row is next due: its next attempt, or the end of an expired lease."""

    def record(self, claimed: Claimed, attempt: int, at: int, status_code: int | None,
               error: str | None, duration_ms: int, outcome: str) -> None:
        """One delivery attempt, in the deliveries table."""

    def retry(self, claimed: Claimed, owner: str, attempts: int, next_attempt_at: int,
              error: str | None) -> None: ...

    def finish(self, claimed: Claimed, owner: str, outcome: str, attempts: int,
               error: str | None, delivered_at: int | None) -> None:
        """Delivered or given up: the secret and header tokens are erased."""

    def release(self, claimed: Sequence[Claimed], owner: str) -> None: ...


class Batches(Protocol):
    def add(self, batch: Batch, items: Sequence[BatchItem]) -> None: ...

    def get(self, tenant_id: str, batch_id: str) -> Batch | None: ...

    def unfinished(self) -> list[Batch]:
        """Pending and processing batches of every tenant, oldest first."""

    def any_unfinished(self) -> bool: ...

    def pending(self, batch: Batch, limit: int) -> list[BatchItem]: ...

    def start(self, batch: Batch) -> None: ...

    def finish_item(self, tenant_id: str, batch_id: str, item: BatchItem) -> None:
        """Record an item's outcome once (a repeat finds it no longer pending)."""

    def complete(self, batch: Batch, now: int) -> Batch | None:
        """Mark the batch completed if no item is pending; None if not (or done elsewhere)."""

    def outcomes(self, batch: Batch) -> list[BatchItem]:
        """Applied items in index order (bodies left out)."""


class UnitOfWork(Protocol):
    participants: Participants
    events: Events
    idempotency: Idempotency
    outbox: Outbox
    batches: Batches


class Storage(Protocol):
    doorbell: Doorbell

    def write(self) -> AbstractContextManager[UnitOfWork]:
        """One write transaction."""

    def read(self) -> AbstractContextManager[UnitOfWork]:
        """One read-only snapshot."""

    def background(self) -> AbstractContextManager[None]:
        """Writes in the block give way to foreground writes where the backend needs it."""

    def writers_waiting(self) -> bool: ...

    def work_queued(self) -> None:
        """Inside a write: it queued background work (an outbox row, a batch, a state with a
        timer), so ring the doorbell once it commits (never if it rolls back)."""

    def describe(self) -> str:
        """One line for the start-up log: backend, server version, where."""

    @property
    def schema_version(self) -> int: ...

    def close(self) -> None:
        """Release this thread's connection."""
