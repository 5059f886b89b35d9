"""Delivers the outbox after commit: at least once, in event order per participant.

A round claims up to `claim_size` due rows, at most one per participant (the claim skips a row while
an earlier one of its participant is pending or leased), so the rows of one round can be sent at
the same time: up to `concurrency` deliveries are in flight, over keep-alive connections per
host. Outcomes are stored as they come in, all those that arrived meanwhile in one write
transaction, so a delivery costs a fraction of a commit instead of one each.
"""

from __future__ import annotations

import email.utils
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from engine.delivery.outbound import Connections, OutboundRefused, send
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
    concurrency: int = 16              # deliveries of a round in flight at once
    batch: int = 0                     # rows claimed per round; 0: 4 x concurrency
    # Under load, rounds start at most this often unless the last one claimed a full batch:
    # the rows committed meanwhile then share one claim and one record transaction instead of
    # costing two commits every few rows (commits the service's own writes wait for).
    round_interval: float = 0.01
    max_delay: int = 86400             # cap for Retry-After

    @property
    def claim_size(self) -> int:
        """Rows a round claims (one per participant at most): a few waves of `concurrency`, so
        claims do not sit leased for long while other dispatchers could take them."""
        return self.batch or 4 * self.concurrency

    @property
    def worst_attempt_ms(self) -> int:
        """The longest one attempt can take: a connect and a read that both time out."""
        return int((self.connect_timeout + self.read_timeout) * 1000)

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
                 timers=None, batches=None, sender=None):
        self.storage = storage
        self.allow_private = allow_private
        self.policy = policy or DeliveryPolicy()
        self.clock = clock
        self.timers = timers
        self.batches = batches
        self.sender = sender  # None: `send`, or a round's keep-alive `Connections.send`
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # What a round could not store because the database went away in its middle: outcomes
        # of deliveries made, and leases of rows it did not get to. The next round stores them
        # first, so a delivered row is not sent again and the others wait for no lease.
        self._unrecorded: list[tuple[Claimed, Attempt]] = []
        self._unattempted: list[Claimed] = []
        self._lease_until = 0  # when the leases of the last claim end (epoch ms)
        self._claimed = 0  # rows the last round claimed

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- claiming ----------------------------------------------------------------------------

    def claim(self) -> list[Claimed]:
        """Lease up to `claim_size` due rows, at most one per participant, oldest first.

        A read finds out first whether any row is claimable, so an idle dispatcher never takes
        the write lock."""
        now = self._now_ms()
        with self.storage.read() as uow:
            if not uow.outbox.claimable(now):
                return []
        lease_until = now + self.policy.lease_seconds * 1000
        with self.storage.write() as uow:
            rows = uow.outbox.claim(now, self.policy.claim_size, lease_until, self.owner)
        self._lease_until = lease_until
        return rows

    # -- delivering --------------------------------------------------------------------------

    def attempt(self, row: Claimed, sender: Callable | None = None) -> Attempt:
        """One HTTP attempt for a claimed row; never raises for network trouble."""
        url, method = row.url, row.method
        body = row.body.encode("utf-8")
        headers = dict(row.headers or {})
        headers.update(signature_headers(row.secret, row.event_id, int(self.clock()), body))
        headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            reply = (sender or self.sender or send)(
                url, method=method or "POST", headers=headers, body=body,
                allow_private=self.allow_private, connect_timeout=self.policy.connect_timeout,
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
        return self.record_all([(row, result)])[0]

    def record_all(self, results: list[tuple[Claimed, Attempt]]) -> list[str]:
        """`record` for several attempts in one write transaction; their outcomes."""
        now = self._now_ms()
        with self.storage.write() as uow:
            return [self._store(uow, row, result, now) for row, result in results]

    def _store(self, uow, row: Claimed, result: Attempt, now: int) -> str:
        attempts = row.attempts + 1
        outcome = result.outcome
        if outcome == "retry" and attempts >= self.policy.attempts:
            outcome = "failed"
        uow.outbox.record(row, attempts, now, result.status_code, result.error,
                          result.duration_ms, outcome)
        if outcome == "retry":
            delay = self.policy.schedule[attempts - 1]
            delay *= 1 + random.uniform(-self.policy.jitter, self.policy.jitter)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, self.policy.max_delay))
            uow.outbox.retry(row, self.owner, attempts, now + int(delay * 1000), result.error)
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
        self._claimed = len(rows)
        return applied + self._deliver(rows, stop)

    def _deliver(self, rows: list[Claimed], stop: threading.Event | None) -> int:
        """Attempt the claimed rows, up to `concurrency` at once, storing outcomes as they
        arrive; returns how many were attempted. Rows not started when `stop` is set, or too
        close to the end of their lease for a slow attempt to finish inside it, are handed
        back. If the database goes away, what is known waits in `_unrecorded`/`_unattempted`."""
        if not rows:
            return 0
        if len(rows) == 1:  # the common case of a quiet system: no threads to start
            return self._deliver_one(rows[0], stop)
        gone = threading.Event()  # the database went away: start nothing more
        workers = min(self.policy.concurrency, len(rows))
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for i, row in enumerate(rows):
            todo.put((i, row))
        done: queue.SimpleQueue = queue.SimpleQueue()

        def work(sender) -> None:
            while True:
                try:
                    i, row = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    result = None
                    if gone.is_set() or (stop is not None and stop.is_set()):
                        pass  # handed back
                    elif i < workers or (self._now_ms() + self.policy.worst_attempt_ms
                                         <= self._lease_until):
                        result = self.attempt(row, sender)
                    # else it might outlive its lease, and another dispatcher could send it too
                    done.put((row, result))
                except BaseException as error:  # a bug: reported by the round, not lost
                    done.put((row, error))

        attempted, unattempted, failure, bug = 0, [], None, None
        with Connections(per_host=workers) as connections:
            # Daemon threads of this round, not an executor: at interpreter exit an executor's
            # queued work would all run before the stop event of an exiting process is set.
            threads = [threading.Thread(target=work, args=(self.sender or connections.send,),
                                        name=f"delivery-{self.owner}-{n}", daemon=True)
                       for n in range(workers)]
            for thread in threads:
                thread.start()
            left = len(rows)
            while left:
                arrived = [done.get()]
                while True:  # and whatever else has finished meanwhile: one transaction
                    try:
                        arrived.append(done.get_nowait())
                    except queue.Empty:
                        break
                left -= len(arrived)
                results = []
                for row, result in sorted(arrived, key=lambda pair: pair[0].id):
                    if result is None:
                        unattempted.append(row)
                    elif isinstance(result, BaseException):
                        bug = bug or result
                    else:
                        results.append((row, result))
                attempted += len(results)
                if failure is not None:
                    self._unrecorded += results
                elif results:
                    try:
                        self.record_all(results)
                    except StorageUnavailable as error:
                        gone.set()
                        failure = error
                        self._unrecorded += results
            for thread in threads:
                thread.join()
        if failure is not None:
            self._unattempted += unattempted
            raise failure
        if unattempted:
            self.release(unattempted)
        if bug is not None:
            raise bug
        return attempted

    def _deliver_one(self, row: Claimed, stop: threading.Event | None) -> int:
        if stop is not None and stop.is_set():
            self.release([row])
            return 0
        result = self.attempt(row)
        try:
            self.record(row, result)
        except StorageUnavailable:
            self._unrecorded.append((row, result))
            raise
        return 1

    def _settle(self) -> None:
        """Store what an earlier round could not: the outcomes of the rows it delivered (while
        their leases are still ours, so they are not sent again), then give back the leases of
        the rows it never attempted. Raises StorageUnavailable while the database is away."""
        if self._unrecorded:
            self.record_all(self._unrecorded)
            self._unrecorded = []
        if self._unattempted:
            self.release(self._unattempted)
            self._unattempted = []

    def release(self, rows: list[Claimed]) -> None:
        """Give back leases we will not use (on shutdown), so others need not wait them out."""
        with self.storage.write() as uow:
            uow.outbox.release(rows, self.owner)

    def run(self, stop: threading.Event, idle: float = DEFAULT_POLL_SECONDS) -> None:
        """Loop until `stop` is set; deliveries in flight are always finished first.

        Between rounds it asks `next_due` (a read) and runs a round only when something is due,
        so an idle dispatcher never takes the write lock; busy, it starts a round at most every
        `round_interval` unless the last one claimed a full batch. Idle, it sleeps until the
        next due time, at most `idle` seconds (the poll that finds other processes' work), and
        wakes at once when this process commits background work (the store's doorbell). Set
        `stop` and call `wake()` to stop at once; `stop` alone is seen within `idle` seconds.
        """
        log.info("dispatcher %s started", self.owner)
        bell = self.storage.doorbell
        try:
            while not stop.is_set():
                seen = bell.rings
                busy, due = 0, None
                started = time.monotonic()
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
                    if self._claimed < self.policy.claim_size:  # no backlog: let rows gather
                        stop.wait(self.policy.round_interval - (time.monotonic() - started))
                    continue
                wait = idle if due is None else min(idle, (due - self._now_ms()) / 1000)
                bell.wait(seen, max(wait, 0.001))
        finally:
            self.storage.close()  # this thread's connection
            log.info("dispatcher %s stopped", self.owner)
