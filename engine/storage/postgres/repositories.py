"""The repositories of one PostgreSQL connection: every statement the engine runs on
PostgreSQL. Inside a write they lock what they read and decide on (READ COMMITTED)."""

from __future__ import annotations

import hashlib
import json

from engine.storage import rows
from engine.storage.interface import DueTimer, IdempotencyKey
from engine.storage.postgres import queries
from engine.storage.postgres.queries import index_number
from engine.storage.rows import BATCH_COLUMNS, PARTICIPANT_COLUMNS

__all__ = ["PARTICIPANT_COLUMNS", "PostgresUnitOfWork"]


def _absent(*texts: str) -> bool:
    """Whether a key cannot be stored at all (PostgreSQL text holds no U+0000), so no row has
    it; asking would be an error instead of 'not found'."""
    return any("\0" in text for text in texts)


def _participant_lock(tenant_id: str, participant_id: str) -> int:
    """The advisory lock key of a participant id (64 bits of a digest; a collision only makes
    two creates wait for each other)."""
    digest = hashlib.blake2b(f"{tenant_id}\n{participant_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Participants:
    def __init__(self, conn, writing: bool):
        self.conn = conn
        self.writing = writing

    def _select(self, tenant_id, participant_id, archived):
        lock = " FOR UPDATE" if self.writing else ""
        return self.conn.execute(
            f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = %s AND id = %s"
            + ("" if archived else " AND archived_at IS NULL") + lock,
            (tenant_id, participant_id)).fetchone()

    def get(self, tenant_id, participant_id, *, archived=False):
        if _absent(tenant_id, participant_id):
            return None
        row = self._select(tenant_id, participant_id, archived)
        if row is None and self.writing:
            # No row to lock: a concurrent create of this id would not wait for us, nor we for
            # it. Both take this lock first, so the second sees the first's participant.
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)",
                              (_participant_lock(tenant_id, participant_id),))
            row = self._select(tenant_id, participant_id, archived)
        return rows.participant_from_row(row) if row else None

    def insert(self, p):
        self.conn.execute(
            "INSERT INTO participants (name, owner, category, sub_category, template_id, state,"
            " properties, updated_at, state_entered_at, updated_by, callback, callback_secret,"
            " tenant_id, id, type, unique_code, version, created_at, created_by)"
            " VALUES (%(name)s, %(owner)s, %(category)s, %(sub_category)s, %(template_id)s,"
            " %(state)s, %(properties)s, %(updated_at)s, %(state_entered_at)s, %(updated_by)s,"
            " %(callback)s, %(callback_secret)s, %(tenant_id)s, %(id)s, %(type)s,"
            " %(unique_code)s, %(version)s, %(created_at)s, %(created_by)s)",
            rows.participant_row(p))

    def update(self, p, expected_version):
        cursor = self.conn.execute(
            "UPDATE participants SET name = %(name)s, owner = %(owner)s,"
            " category = %(category)s, sub_category = %(sub_category)s,"
            " template_id = %(template_id)s, state = %(state)s, properties = %(properties)s,"
            " updated_at = %(updated_at)s, state_entered_at = %(state_entered_at)s,"
            " updated_by = %(updated_by)s, callback = %(callback)s,"
            " callback_secret = %(callback_secret)s, version = %(version)s,"
            " timer_blocked_version = NULL WHERE tenant_id = %(tenant_id)s AND id = %(id)s"
            " AND version = %(expected_version)s",
            {**rows.participant_row(p), "expected_version": expected_version})
        return cursor.rowcount == 1

    def set_index(self, tenant_id, plural, participant_id, values, *, replace):
        if replace:
            self.conn.execute("DELETE FROM attribute_index WHERE tenant_id = %s AND type = %s"
                              " AND participant_id = %s", (tenant_id, plural, participant_id))
        if values:
            with self.conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO attribute_index (tenant_id, type, name, participant_id,"
                    " value_number, value_text)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    [(tenant_id, plural, name, participant_id,
                      None if isinstance(value, str) else index_number(value),
                      value if isinstance(value, str) else None) for name, value in values])

    def block_timer(self, tenant_id, participant_id):
        self.conn.execute("UPDATE participants SET timer_blocked_version = version"
                          " WHERE tenant_id = %s AND id = %s", (tenant_id, participant_id))

    def search(self, definition, tenant_id, query):
        found, total = queries.run(self.conn, definition, tenant_id, query,
                                   PARTICIPANT_COLUMNS)
        return [rows.participant_from_row(r) for r in found], total

    def due_timers(self, plural, state, entered_before, limit):
        return [DueTimer(*row) for row in self.conn.execute(
            "SELECT tenant_id, id, version, state_entered_at FROM participants"
            " WHERE type = %s AND state = %s AND state_entered_at <= %s AND archived_at IS NULL"
            " AND (timer_blocked_version IS NULL OR timer_blocked_version != version)"
            " ORDER BY state_entered_at LIMIT %s", (plural, state, entered_before, limit))]

    def next_timer(self, waits, after):
        # One statement of indexed reads (live participants by type, state and entry time).
        parts, params = [], []
        for plural, state, wait_ms, skip_blocked in waits:
            parts.append(
                "SELECT (SELECT state_entered_at FROM participants WHERE type = %s"
                " AND state = %s AND archived_at IS NULL"
                + (" AND (timer_blocked_version IS NULL OR timer_blocked_version != version)"
                   if skip_blocked else "")
                + ("" if after is None else " AND state_entered_at > %s")
                + " ORDER BY state_entered_at LIMIT 1) + %s AS due")
            params += [plural, state] + ([] if after is None else [after - wait_ms]) + [wait_ms]
        if not parts:
            return None
        return self.conn.execute(
            f"SELECT MIN(due) FROM ({' UNION ALL '.join(parts)}) AS timers",
            params).fetchone()[0]

    @staticmethod
    def _terminal(plural, states, entered_before):
        return ("WHERE type = %s AND state = ANY(%s) AND state_entered_at <= %s"
                " AND archived_at IS NULL", (plural, list(states), entered_before))

    def archivable(self, plural, states, entered_before):
        where, params = self._terminal(plural, states, entered_before)
        return self.conn.execute(f"SELECT 1 FROM participants {where} LIMIT 1",
                                 params).fetchone() is not None

    def archive(self, plural, states, entered_before, now):
        # Rows a writer holds are left for the next round rather than waited for.
        where, params = self._terminal(plural, states, entered_before)
        return self.conn.execute(
            "UPDATE participants SET archived_at = %s WHERE (tenant_id, id) IN"
            f" (SELECT tenant_id, id FROM participants {where} FOR UPDATE SKIP LOCKED)",
            (now, *params)).rowcount


class _Events:
    def __init__(self, conn):
        self.conn = conn

    def next_sequence(self, tenant_id, participant_id):
        # The row stays locked until the write ends: a concurrent writer of the same
        # participant waits for it, and a rollback gives the number back.
        return self.conn.execute(
            "INSERT INTO event_sequences (tenant_id, participant_id, last) VALUES (%s, %s, 1)"
            " ON CONFLICT (tenant_id, participant_id)"
            " DO UPDATE SET last = event_sequences.last + 1 RETURNING last",
            (tenant_id, participant_id)).fetchone()[0]

    def append(self, record):
        row = rows.event_row(record)
        self.conn.execute(
            "INSERT INTO events (id, tenant_id, participant_id, participant_type, sequence,"
            " version, command_name, success, request_id, created_at, body)"
            " VALUES (%(id)s, %(tenant_id)s, %(participant_id)s, %(participant_type)s,"
            " %(sequence)s, %(version)s, %(command_name)s, %(success)s, %(request_id)s,"
            " %(created_at)s, %(body)s)", row)
        return row["body"]

    def history(self, tenant_id, participant_id, limit, offset):
        if _absent(tenant_id, participant_id):
            return [], 0
        total = self.conn.execute(
            "SELECT COUNT(*) FROM events WHERE tenant_id = %s AND participant_id = %s",
            (tenant_id, participant_id)).fetchone()[0]
        found = self.conn.execute(
            "SELECT body FROM events WHERE tenant_id = %s AND participant_id = %s"
            " ORDER BY sequence LIMIT %s OFFSET %s",
            (tenant_id, participant_id, limit, offset)).fetchall()
        return [json.loads(r[0]) for r in found], total


class _Idempotency:
    def __init__(self, conn):
        self.conn = conn

    def find(self, tenant_id, request_id):
        if _absent(tenant_id, request_id):
            return None
        row = self.conn.execute(
            "SELECT fingerprint, status, response, lease_until FROM idempotency"
            " WHERE tenant_id = %s AND request_id = %s", (tenant_id, request_id)).fetchone()
        return IdempotencyKey(*row) if row else None

    def claim(self, tenant_id, request_id, fingerprint, now):
        # A placeholder (no answer, no lease): a concurrent claim of the same key waits on its
        # uncommitted row, then finds what this write stored (or inserts its own if this one
        # rolled back, which removes the placeholder). save() and reserve() fill it in.
        inserted = self.conn.execute(
            "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
            " created_at, lease_until) VALUES (%s, %s, %s, NULL, NULL, %s, NULL)"
            " ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING 1",
            (tenant_id, request_id, fingerprint, now)).fetchone()
        return None if inserted else self.find(tenant_id, request_id)

    def reserve(self, tenant_id, request_id, fingerprint, now, lease_until):
        self.conn.execute(
            "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
            " created_at, lease_until) VALUES (%s, %s, %s, NULL, NULL, %s, %s)"
            " ON CONFLICT (tenant_id, request_id) DO UPDATE"
            " SET lease_until = excluded.lease_until",
            (tenant_id, request_id, fingerprint, now, lease_until))

    def release(self, tenant_id, request_id):
        self.conn.execute("DELETE FROM idempotency WHERE tenant_id = %s AND request_id = %s"
                          " AND response IS NULL", (tenant_id, request_id))

    def save(self, tenant_id, request_id, fingerprint, status, body, now):
        self.conn.execute(
            "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
            " created_at, lease_until) VALUES (%s, %s, %s, %s, %s, %s, NULL)"
            " ON CONFLICT (tenant_id, request_id) DO UPDATE SET status = excluded.status,"
            " response = excluded.response, lease_until = NULL",
            (tenant_id, request_id, fingerprint, status, body, now))

    def prune(self, older_than, limit):
        return self.conn.execute(
            "DELETE FROM idempotency WHERE (tenant_id, request_id) IN"
            " (SELECT tenant_id, request_id FROM idempotency"
            "  WHERE created_at < %s AND response IS NOT NULL LIMIT %s FOR UPDATE SKIP LOCKED)",
            (older_than, limit)).rowcount


# Due rows, at most one per participant (its oldest open row) and oldest first. Rows another
# dispatcher is claiming right now are skipped, not waited for; its claim is the same query, so
# while one participant's oldest row is open (pending or leased) no later row of it qualifies.
_CLAIMABLE = """
SELECT o.tenant_id, o.id FROM outbox o
WHERE ((o.status = 'pending' AND o.next_attempt_at <= %(now)s)
       OR (o.status = 'leased' AND o.lease_until < %(now)s))
  AND NOT EXISTS (SELECT 1 FROM outbox p
                  WHERE p.tenant_id = o.tenant_id AND p.participant_id = o.participant_id
                    AND p.status IN ('pending', 'leased') AND p.id < o.id)
ORDER BY o.id LIMIT %(batch)s
"""

_CLAIM = f"""
WITH claimed AS ({_CLAIMABLE} FOR UPDATE OF o SKIP LOCKED),
leased AS (
  UPDATE outbox o SET status = 'leased', lease_until = %(lease_until)s, lease_owner = %(owner)s
  FROM claimed c WHERE o.tenant_id = c.tenant_id AND o.id = c.id
  RETURNING o.id, o.tenant_id, o.event_id, o.kind, o.url, o.secret, o.attempts, o.method,
            o.headers, o.payload)
SELECT l.id, l.tenant_id, l.event_id, l.kind, l.url, l.secret, l.attempts, l.method, l.headers,
       COALESCE(l.payload, e.body)
FROM leased l LEFT JOIN events e ON e.tenant_id = l.tenant_id AND e.id = l.event_id
ORDER BY l.id
"""

# When the outbox next has something due: the earliest pending attempt, or the first lease to
# expire (a row leased until T can be claimed from T + 1). Both are reads of partial indexes.
_OUTBOX_DUE = """
SELECT MIN(due) FROM (
  SELECT MIN(next_attempt_at) AS due FROM outbox
  WHERE status = 'pending' AND next_attempt_at > %(after)s
  UNION ALL
  SELECT MIN(lease_until) + 1 FROM outbox WHERE status = 'leased' AND lease_until >= %(after)s
) AS due
"""


class _Outbox:
    def __init__(self, conn):
        self.conn = conn

    def add(self, entries, now):
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO outbox (event_id, tenant_id, participant_id, kind, url, secret,"
                " status, attempts, next_attempt_at, created_at, method, headers, payload)"
                " VALUES (%(event_id)s, %(tenant_id)s, %(participant_id)s, %(kind)s, %(url)s,"
                " %(secret)s, 'pending', 0, %(next_attempt_at)s, %(created_at)s, %(method)s,"
                " %(headers)s, %(payload)s)", [rows.outbox_row(e, now) for e in entries])

    def claimable(self, now):
        return self.conn.execute(_CLAIMABLE, {"now": now, "batch": 1}).fetchone() is not None

    def claim(self, now, limit, lease_until, owner):
        found = self.conn.execute(_CLAIM, {"now": now, "batch": limit,
                                           "lease_until": lease_until, "owner": owner})
        return [rows.claimed_from_row(row) for row in found]

    def next_due(self, after):
        return self.conn.execute(_OUTBOX_DUE, {"after": after}).fetchone()[0]

    def record(self, claimed, attempt, at, status_code, error, duration_ms, outcome):
        self.conn.execute(
            "INSERT INTO deliveries (tenant_id, outbox_id, attempt, at, status_code, error,"
            " duration_ms, outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (claimed.tenant_id, claimed.id, attempt, at, status_code, error, duration_ms,
             outcome))

    def retry(self, claimed, owner, attempts, next_attempt_at, error):
        self.conn.execute(
            "UPDATE outbox SET status = 'pending', attempts = %s, next_attempt_at = %s,"
            " last_error = %s, lease_until = NULL, lease_owner = NULL"
            " WHERE tenant_id = %s AND id = %s AND lease_owner = %s",
            (attempts, next_attempt_at, error, claimed.tenant_id, claimed.id, owner))

    def finish(self, claimed, owner, outcome, attempts, error, delivered_at):
        self.conn.execute(
            "UPDATE outbox SET status = %s, attempts = %s, last_error = %s, delivered_at = %s,"
            " secret = NULL, headers = NULL, lease_until = NULL, lease_owner = NULL"
            " WHERE tenant_id = %s AND id = %s AND lease_owner = %s",
            (outcome, attempts, error, delivered_at, claimed.tenant_id, claimed.id, owner))

    def release(self, claimed, owner):
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "UPDATE outbox SET status = 'pending', lease_until = NULL, lease_owner = NULL"
                " WHERE tenant_id = %s AND id = %s AND lease_owner = %s",
                [(c.tenant_id, c.id, owner) for c in claimed])


class _Batches:
    def __init__(self, conn):
        self.conn = conn

    def add(self, batch, items):
        self.conn.execute(
            f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (%(id)s, %(tenant_id)s, %(type)s,"
            " %(kind)s, %(status)s, %(total)s, %(success)s, %(failed)s, %(created_at)s,"
            " %(completed_at)s, %(request_id)s, %(user_info)s, %(callback)s,"
            " %(callback_secret)s, %(token)s)", rows.batch_row(batch))
        with self.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO batch_items (tenant_id, batch_id, idx, body, status, reason)"
                " VALUES (%(tenant_id)s, %(batch_id)s, %(idx)s, %(body)s, %(status)s,"
                " %(reason)s)", [rows.item_row(batch, i) for i in items])

    def get(self, tenant_id, batch_id):
        if _absent(tenant_id, batch_id):
            return None
        row = self.conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE tenant_id = %s"
                                " AND id = %s", (tenant_id, batch_id)).fetchone()
        return rows.batch_from_row(row) if row else None

    def unfinished(self):
        return [rows.batch_from_row(row) for row in self.conn.execute(
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE status IN ('pending', 'processing')"
            " ORDER BY created_at, id")]

    def any_unfinished(self):
        return self.conn.execute("SELECT 1 FROM batches WHERE status IN ('pending',"
                                 " 'processing') LIMIT 1").fetchone() is not None

    def pending(self, batch, limit):
        return [rows.pending_item_from_row(row) for row in self.conn.execute(
            "SELECT idx, body FROM batch_items WHERE tenant_id = %s AND batch_id = %s"
            " AND status = 'pending' ORDER BY idx LIMIT %s", (batch.tenant_id, batch.id, limit))]

    def start(self, batch):
        self.conn.execute("UPDATE batches SET status = 'processing' WHERE tenant_id = %s"
                          " AND id = %s AND status = 'pending'", (batch.tenant_id, batch.id))

    def finish_item(self, tenant_id, batch_id, item):
        cursor = self.conn.execute(
            "UPDATE batch_items SET status = %s, participant_id = %s, event_id = %s,"
            " reason = %s, error_code = %s"
            " WHERE tenant_id = %s AND batch_id = %s AND idx = %s AND status = 'pending'",
            (item.status, item.participant_id, item.event_id, item.reason, item.error_code,
             tenant_id, batch_id, item.index))
        if cursor.rowcount == 1:
            success = item.status == "success"
            self.conn.execute("UPDATE batches SET success = success + %s, failed = failed + %s"
                              " WHERE tenant_id = %s AND id = %s",
                              (int(success), int(not success), tenant_id, batch_id))

    def complete(self, batch, now):
        if self.conn.execute("SELECT 1 FROM batch_items WHERE tenant_id = %s AND batch_id = %s"
                             " AND status = 'pending' LIMIT 1",
                             (batch.tenant_id, batch.id)).fetchone():
            return None
        cursor = self.conn.execute(
            "UPDATE batches SET status = 'completed', completed_at = %s, token = NULL,"
            " callback_secret = NULL WHERE tenant_id = %s AND id = %s"
            " AND status != 'completed'", (now, batch.tenant_id, batch.id))
        if cursor.rowcount != 1:
            return None  # another worker completed it
        return self.get(batch.tenant_id, batch.id)

    def outcomes(self, batch):
        return [rows.outcome_from_row(row) for row in self.conn.execute(
            "SELECT idx, status, participant_id, event_id, reason, error_code"
            " FROM batch_items WHERE tenant_id = %s AND batch_id = %s"
            " AND status != 'pending' ORDER BY idx", (batch.tenant_id, batch.id))]


class PostgresUnitOfWork:
    """The repositories over one pooled connection, for one transaction."""

    __slots__ = ("participants", "events", "idempotency", "outbox", "batches")

    def __init__(self, conn, *, writing: bool):
        self.participants = _Participants(conn, writing)
        self.events = _Events(conn)
        self.idempotency = _Idempotency(conn)
        self.outbox = _Outbox(conn)
        self.batches = _Batches(conn)
