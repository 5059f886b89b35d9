"""Delivers the outbox after commit: at least once, in event order per participant."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .outbound import OutboundRefused, send
from .signing import signature_headers
from .store import Store

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


_CLAIMABLE = """
SELECT o.id FROM outbox o
WHERE ((o.status = 'pending' AND o.next_attempt_at <= :now)
       OR (o.status = 'leased' AND o.lease_until < :now))
  AND NOT EXISTS (SELECT 1 FROM outbox p
                  WHERE p.tenant_id = o.tenant_id AND p.participant_id = o.participant_id
                    AND p.status IN ('pending', 'leased') AND p.id < o.id)
ORDER BY o.id LIMIT :batch
"""

# When the outbox next has something due: the earliest pending attempt, or the first lease to
# expire (a row leased until T can be claimed from T + 1). Both are reads of the status index.
_OUTBOX_DUE = """
SELECT MIN(due) FROM (
  SELECT MIN(next_attempt_at) AS due FROM outbox
  WHERE status = 'pending' AND next_attempt_at > :after
  UNION ALL
  SELECT MIN(lease_until) + 1 FROM outbox WHERE status = 'leased' AND lease_until >= :after)
"""


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

    def __init__(self, store: Store, *, allow_private: bool = False,
                 policy: DeliveryPolicy | None = None, clock: Callable[[], float] = time.time,
                 timers=None, batches=None, sender=send):
        self.store = store
        self.allow_private = allow_private
        self.policy = policy or DeliveryPolicy()
        self.clock = clock
        self.timers = timers
        self.batches = batches
        self.sender = sender
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- claiming ----------------------------------------------------------------------------

    def claim(self) -> list[tuple]:
        """Lease up to `batch` due rows, at most one per participant, oldest first.

        A read finds out first whether any row is claimable, so an idle dispatcher never takes
        the write lock."""
        now = self._now_ms()
        if self.store.conn.execute(_CLAIMABLE, {"now": now, "batch": 1}).fetchone() is None:
            return []
        with self.store.write() as conn:
            ids = [r[0] for r in conn.execute(_CLAIMABLE, {"now": now,
                                                           "batch": self.policy.batch})]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            conn.execute(
                f"UPDATE outbox SET status = 'leased', lease_until = ?, lease_owner = ?"
                f" WHERE id IN ({marks})",
                [now + self.policy.lease_seconds * 1000, self.owner, *ids])
            return conn.execute(
                "SELECT o.id, o.event_id, o.kind, o.url, o.secret, o.attempts, o.method,"
                " o.headers, COALESCE(o.payload, e.body) FROM outbox o"
                f" LEFT JOIN events e ON e.id = o.event_id WHERE o.id IN ({marks}) ORDER BY o.id",
                ids).fetchall()

    # -- delivering --------------------------------------------------------------------------

    def attempt(self, row) -> Attempt:
        """One HTTP attempt for a claimed row; never raises for network trouble."""
        _id, event_id, _kind, url, secret, _attempts, method, headers_json, payload = row
        body = (payload or "").encode("utf-8")
        headers = json.loads(headers_json) if headers_json else {}
        headers.update(signature_headers(secret, event_id, int(self.clock()), body))
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

    def record(self, row, result: Attempt) -> str:
        """Store the attempt and the row's new status (only while we still hold its lease)."""
        outbox_id, attempts = row[0], row[5] + 1
        now = self._now_ms()
        outcome = result.outcome
        if outcome == "retry" and attempts >= self.policy.attempts:
            outcome = "failed"
        with self.store.write() as conn:
            conn.execute(
                "INSERT INTO deliveries (outbox_id, attempt, at, status_code, error, duration_ms,"
                " outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (outbox_id, attempts, now, result.status_code, result.error, result.duration_ms,
                 outcome))
            if outcome == "retry":
                delay = self.policy.schedule[attempts - 1]
                delay *= 1 + random.uniform(-self.policy.jitter, self.policy.jitter)
                if result.retry_after is not None:
                    delay = max(delay, min(result.retry_after, self.policy.max_delay))
                conn.execute(
                    "UPDATE outbox SET status = 'pending', attempts = ?, next_attempt_at = ?,"
                    " last_error = ?, lease_until = NULL, lease_owner = NULL"
                    " WHERE id = ? AND lease_owner = ?",
                    (attempts, now + int(delay * 1000), result.error, outbox_id, self.owner))
            else:
                # Delivered or given up: the secret and any header tokens are no longer needed.
                conn.execute(
                    "UPDATE outbox SET status = ?, attempts = ?, last_error = ?,"
                    " delivered_at = ?, secret = NULL, headers = NULL, lease_until = NULL,"
                    " lease_owner = NULL WHERE id = ? AND lease_owner = ?",
                    (outcome, attempts, result.error, now if outcome == "delivered" else None,
                     outbox_id, self.owner))
        return outcome

    # -- looking for work without the write lock ----------------------------------------------

    def next_due(self, after: int | None = None) -> int | None:
        """When something is next due (epoch ms on this dispatcher's clock): an outbox row, a
        timer, or an unfinished batch (due now); None when nothing is waiting at all. With
        `after`, only what falls due later than that counts (batches never do).

        A few indexed reads in one snapshot; never the write lock."""
        with self.store.read() as conn:
            if after is None and self.batches is not None and self.batches.due(conn):
                return self._now_ms()
            due = conn.execute(_OUTBOX_DUE, {"after": -1 if after is None else after}
                               ).fetchone()[0]
            if self.timers is not None:
                timer = self.timers.next_due(conn, after)
                if timer is not None and (due is None or timer < due):
                    due = timer
        return due

    def wake(self) -> None:
        """Make a waiting `run` look for work now (and notice that its stop event is set)."""
        self.store.doorbell.ring()

    # -- loops -------------------------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Run due timers, apply some batch items, then deliver one round of the outbox.

        Returns how many batch items were applied plus how many rows were attempted.
        """
        if self.timers is not None:
            try:
                self.timers.run_due(self.clock())
            except Exception:  # timers must never hold up deliveries
                log.exception("state timers failed this round")
        applied = 0
        if self.batches is not None:
            try:
                applied = self.batches.run_once(stop=stop)
            except Exception:  # nor must batches
                log.exception("batch items failed this round")
        rows = self.claim()
        for i, row in enumerate(rows):
            if stop is not None and stop.is_set():
                self.release(rows[i:])
                return applied + i
            self.record(row, self.attempt(row))
        return applied + len(rows)

    def release(self, rows) -> None:
        """Give back leases we will not use (on shutdown), so others need not wait them out."""
        with self.store.write() as conn:
            conn.executemany(
                "UPDATE outbox SET status = 'pending', lease_until = NULL, lease_owner = NULL"
                " WHERE id = ? AND lease_owner = ?", [(row[0], self.owner) for row in rows])

    def run(self, stop: threading.Event, idle: float = DEFAULT_POLL_SECONDS) -> None:
        """Loop until `stop` is set; an in-flight delivery is always finished first.

        Between rounds it asks `next_due` (a read) and runs a round only when something is due,
        so an idle dispatcher never takes the write lock. It then sleeps until the next due
        time, at most `idle` seconds (the poll that finds other processes' work), and wakes at
        once when this process commits background work (the store's doorbell). Set `stop` and
        call `wake()` to stop at once; `stop` alone is seen within `idle` seconds.
        """
        log.info("dispatcher %s started", self.owner)
        bell = self.store.doorbell
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
                except Exception:  # keep delivering: one bad row must not stop the loop
                    log.exception("dispatcher round failed")
                    due = None
                if busy:
                    continue
                wait = idle if due is None else min(idle, (due - self._now_ms()) / 1000)
                bell.wait(seen, max(wait, 0.001))
        finally:
            self.store.close()  # this thread's connection
            log.info("dispatcher %s stopped", self.owner)
