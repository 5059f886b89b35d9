"""Delivers the outbox after commit: at least once, in event order per participant."""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from engine.delivery.outbound import OutboundRefused, send
from engine.delivery.signing import signature_headers
from engine.storage.interface import Claimed, Storage, StorageUnavailable

__all__ = ["DEFAULT_POLL_SECONDS", "DeliveryPolicy", "Dispatcher"]

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 86400)  # seconds before each retry
DEFAULT_POLL_SECONDS = 1.0  # an idle dispatcher looks for other processes' work this often


@dataclass(frozen=True)
class DeliveryPolicy:
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.1                # +/- this fraction of each delay
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    lease_seconds: int = 60            # a crashed dispatcher's claims come back after this
    batch: int = 20
    max_delay: int = 86400             # cap for Retry-After

    @property
    def attempts(self) -> int:
        return len(self.schedule) + 1


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: str                       # delivered, retry, failed
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Dispatcher:
    """Claims due outbox rows with a lease, delivers them, and records every attempt."""

    def __init__(self, storage: Storage, *, allow_private: bool = False,
                 policy: DeliveryPolicy | None = None, clock: Callable[[], float] = time.time,
                 timers=None, batches=None, sender=send):
        self.storage = storage
        self.allow_private = allow_private
        self.policy = policy or DeliveryPolicy()
        self.clock = clock
        self.timers = timers
        self.batches = batches
        self.sender = sender
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # What a round could not store because the database went away in its middle: outcomes
        # of deliveries made, and leases of rows it did not get to. The next round stores them
        # first, so a delivered row is not sent again and the others wait for no lease.
        self._unrecorded: list[tuple[Claimed, Attempt]] = []
        self._unattempted: list[Claimed] = []

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- claiming ----------------------------------------------------------------------------

    def claim(self) -> list[Claimed]:
        """Lease up to `batch` due rows, at most one per participant, oldest first.

        A read finds out first whether any row is claimable, so an idle dispatcher never takes
        the write lock."""
        now = self._now_ms()
        with self.storage.read() as uow:
            if not uow.outbox.claimable(now):
                return []
        with self.storage.write() as uow:
            return uow.outbox.claim(now, self.policy.batch,
                                    now + self.policy.lease_seconds * 1000, self.owner)

    # -- delivering --------------------------------------------------------------------------

    def attempt(self, row: Claimed) -> Attempt:
        """One HTTP attempt for a claimed row; never raises for network trouble."""
        url, method = row.url, row.method
        body = row.body.encode("utf-8")
        headers = dict(row.headers or {})
        headers.update(signature_headers(row.secret, row.event_id, int(self.clock()), body))
        headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            reply = self.sender(url, method=method or "POST", headers=headers, body=body,
                                allow_private=self.allow_private,
                                connect_timeout=self.policy.connect_timeout,
                                read_timeout=self.policy.read_timeout)
        except OutboundRefused as error:
            return Attempt("failed", None, f"refused: {error}", self._since(started))
        except ValueError as error:  # e.g. a header value HTTP cannot carry: retrying won't help
            return Attempt("failed", None, f"cannot send: {error}", self._since(started))
        except OSError as error:
            return Attempt("retry", None, f"{type(error).__name__}: {error}", self._since(started))
        if 200 <= reply.status < 300:
            return Attempt("delivered", reply.status, None, reply.elapsed_ms)
        if reply.status == 410:
            return Attempt("failed", 410, "410 Gone: the receiver asked to stop", reply.elapsed_ms)
        return Attempt("retry", reply.status, f"HTTP {reply.status}", reply.elapsed_ms,
                       _retry_after(reply.headers.get("retry-after"), self.clock()))

    @staticmethod
    def _since(started: float) -> int:
        return int((time.monotonic() - started) * 1000)

    def record(self, row: Claimed, result: Attempt) -> str:
        """Store the attempt and the row's new status (only while we still hold its lease)."""
        attempts = row.attempts + 1
        now = self._now_ms()
        outcome = result.outcome
        if outcome == "retry" and attempts >= self.policy.attempts:
            outcome = "failed"
        with self.storage.write() as uow:
            uow.outbox.record(row, attempts, now, result.status_code, result.error,
                              result.duration_ms, outcome)
            if outcome == "retry":
                delay = self.policy.schedule[attempts - 1]
                delay *= 1 + random.uniform(-self.policy.jitter, self.policy.jitter)
                if result.retry_after is not None:
                    delay = max(delay, min(result.retry_after, self.policy.max_delay))
                uow.outbox.retry(row, self.owner, attempts, now + int(delay * 1000),
                                 result.error)
            else:
                # Delivered or given up: the secret and any header tokens are no longer needed.
                uow.outbox.finish(row, self.owner, outcome, attempts, result.error,
                                  now if outcome == "delivered" else None)
        return outcome

    # -- looking for work without the write lock ----------------------------------------------

    def next_due(self, after: int | None = None) -> int | None:
        """When something is next due (epoch ms on this dispatcher's clock): an outbox row, a
        timer, or an unfinished batch (due now); None when nothing is waiting at all. With
        `after`, only what falls due later than that counts (batches never do).

        A few indexed reads in one snapshot; never the write lock."""
        with self.storage.read() as uow:
            if after is None and self.batches is not None and self.batches.due(uow):
                return self._now_ms()
            due = uow.outbox.next_due(-1 if after is None else after)
            if self.timers is not None:
                timer = self.timers.next_due(uow, after)
                if timer is not None and (due is None or timer < due):
                    due = timer
        return due

    def wake(self) -> None:
        """Make a waiting `run` look for work now (and notice that its stop event is set)."""
        self.storage.doorbell.ring()

    # -- loops -------------------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Run due timers, apply some batch items, then deliver one round of the outbox.

        Returns how many batch items were applied plus how many rows were attempted.
        """
        self._settle()
        if self.timers is not None:
            try:
                self.timers.run_due(self.clock())
            except StorageUnavailable:
                raise  # the round cannot go on: run() says so in one line
            except Exception:  # timers must never hold up deliveries
                log.exception("state timers failed this round")
        applied = 0
        if self.batches is not None:
            try:
                applied = self.batches.run_once(stop=stop)
            except StorageUnavailable:
                raise
            except Exception:  # nor must batches
                log.exception("batch items failed this round")
        rows = self.claim()
        for i, row in enumerate(rows):
            if stop is not None and stop.is_set():
                self.release(rows[i:])
                return applied + i
            result = self.attempt(row)
            try:
                self.record(row, result)
            except StorageUnavailable:
                self._unrecorded.append((row, result))
                self._unattempted = rows[i + 1:]
                raise
        return applied + len(rows)

    def _settle(self) -> None:
        """Store what an earlier round could not: the outcomes of the rows it delivered (while
        their leases are still ours, so they are not sent again), then give back the leases of
        the rows it never attempted. Raises StorageUnavailable while the database is away."""
        while self._unrecorded:
            row, result = self._unrecorded[0]
            self.record(row, result)
            self._unrecorded.pop(0)
        if self._unattempted:
            self.release(self._unattempted)
            self._unattempted = []

    def release(self, rows: list[Claimed]) -> None:
        """Give back leases we will not use (on shutdown), so others need not wait them out."""
        with self.storage.write() as uow:
            uow.outbox.release(rows, self.owner)

    def run(self, stop: threading.Event, idle: float = DEFAULT_POLL_SECONDS) -> None:
        """Loop until `stop` is set; an in-flight delivery is always finished first.

        Between rounds it asks `next_due` (a read) and runs a round only when something is due,
        so an idle dispatcher never takes the write lock. It then sleeps until the next due
        time, at most `idle` seconds (the poll that finds other processes' work), and wakes at
        once when this process commits background work (the store's doorbell). Set `stop` and
        call `wake()` to stop at once; `stop` alone is seen within `idle` seconds.
        """
        log.info("dispatcher %s started", self.owner)
        bell = self.storage.doorbell
        try:
            while not stop.is_set():
                seen = bell.rings
                busy, due = 0, None
                try:
                    now = self._now_ms()
                    due = self.next_due()
                    if due is not None and due <= now:
                        busy = self.run_once(stop)
                        if not busy:  # due, yet nothing could be done: look again later
                            due = self.next_due(after=now)
                except StorageUnavailable as error:  # one line a round, as a request's 503
                    log.warning("dispatcher %s: the database is unavailable (%s); trying again "
                                "in %s s", self.owner, error, idle)
                    due = None
                except Exception:  # keep delivering: one bad row must not stop the loop
                    log.exception("dispatcher round failed")
                    due = None
                if busy:
                    continue
                wait = idle if due is None else min(idle, (due - self._now_ms()) / 1000)
                bell.wait(seen, max(wait, 0.001))
        finally:
            self.storage.close()  # this thread's connection
            log.info("dispatcher %s stopped", self.owner)
