"""The repositories of one SQLite connection: every statement the engine runs on SQLite."""

from __future__ import annotations

import json

from engine.storage import rows
from engine.storage.interface import DueTimer, IdempotencyKey
from engine.storage.rows import BATCH_COLUMNS, PARTICIPANT_COLUMNS
from engine.storage.sqlite import queries

__all__ = ["SqliteUnitOfWork"]


class _Participants:
    def __init__(self, conn):
        self.conn = conn

    def get(self, tenant_id, participant_id, *, archived=False):
        row = self.conn.execute(
            f"SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE tenant_id = ? AND id = ?"
            + ("" if archived else " AND archived_at IS NULL"),
            (tenant_id, participant_id)).fetchone()
        return rows.participant_from_row(row) if row else None

    def insert(self, p):
        self.conn.execute(
            "INSERT INTO participants (name, owner, category, sub_category, template_id, state,"
            " properties, updated_at, state_entered_at, updated_by, callback, callback_secret,"
            " tenant_id, id, type, unique_code, version, created_at, created_by)"
            " VALUES (:name, :owner, :category, :sub_category, :template_id, :state,"
            " :properties, :updated_at, :state_entered_at, :updated_by, :callback,"
            " :callback_secret, :tenant_id, :id, :type, :unique_code, :version, :created_at,"
            " :created_by)", rows.participant_row(p))

    def update(self, p, expected_version):
        cursor = self.conn.execute(
            "UPDATE participants SET name = :name, owner = :owner, category = :category,"
            " sub_category = :sub_category, template_id = :template_id, state = :state,"
            " properties = :properties, updated_at = :updated_at,"
            " state_entered_at = :state_entered_at, updated_by = :updated_by,"
            " callback = :callback, callback_secret = :callback_secret, version = :version,"
            " timer_blocked_version = NULL"
            " WHERE tenant_id = :tenant_id AND id = :id AND version = :expected_version",
            {**rows.participant_row(p), "expected_version": expected_version})
        return cursor.rowcount == 1

    def set_index(self, tenant_id, plural, participant_id, values, *, replace):
        if replace:
            self.conn.execute("DELETE FROM attribute_index WHERE tenant_id = ? AND type = ?"
                              " AND participant_id = ?", (tenant_id, plural, participant_id))
        if values:
            self.conn.executemany(
                "INSERT INTO attribute_index (tenant_id, type, name, value, participant_id)"
                " VALUES (?, ?, ?, ?, ?)",
                [(tenant_id, plural, name, value, participant_id) for name, value in values])

    def block_timer(self, tenant_id, participant_id):
        self.conn.execute("UPDATE participants SET timer_blocked_version = version"
                          " WHERE tenant_id = ? AND id = ?", (tenant_id, participant_id))

    def search(self, definition, tenant_id, query):
        found, total = queries.run(self.conn, definition, tenant_id, query,
                                   PARTICIPANT_COLUMNS)
        return [rows.participant_from_row(r) for r in found], total

    def due_timers(self, plural, state, entered_before, limit):
        return [DueTimer(*row) for row in self.conn.execute(
            "SELECT tenant_id, id, version, state_entered_at FROM participants"
            " WHERE type = ? AND state = ? AND state_entered_at <= ? AND archived_at IS NULL"
            " AND (timer_blocked_version IS NULL OR timer_blocked_version != version)"
            " ORDER BY state_entered_at LIMIT ?", (plural, state, entered_before, limit))]

    def next_timer(self, waits, after):
        # One statement of indexed reads (live participants by type, state and entry time).
        parts, params = [], []
        for plural, state, wait_ms, skip_blocked in waits:
            parts.append(
                "SELECT (SELECT state_entered_at FROM participants WHERE type = ? AND state = ?"
                " AND archived_at IS NULL"
                + (" AND (timer_blocked_version IS NULL OR timer_blocked_version != version)"
                   if skip_blocked else "")
                + ("" if after is None else " AND state_entered_at > ?")
                + " ORDER BY state_entered_at LIMIT 1) + ? AS due")
            params += [plural, state] + ([] if after is None else [after - wait_ms]) + [wait_ms]
        if not parts:
            return None
        return self.conn.execute(f"SELECT MIN(due) FROM ({' UNION ALL '.join(parts)})",
                                 params).fetchone()[0]

    @staticmethod
    def _terminal(plural, states, entered_before):
        marks = ",".join("?" * len(states))
        return (f"WHERE type = ? AND state IN ({marks}) AND state_entered_at <= ?"
                " AND archived_at IS NULL", (plural, *states, entered_before))

    def archivable(self, plural, states, entered_before):
        where, params = self._terminal(plural, states, entered_before)
        return self.conn.execute(f"SELECT 1 FROM participants {where} LIMIT 1",
                                 params).fetchone() is not None

    def archive(self, plural, states, entered_before, now):
        where, params = self._terminal(plural, states, entered_before)
        return self.conn.execute(f"UPDATE participants SET archived_at = ? {where}",
                                 (now, *params)).rowcount


class _Events:
    def __init__(self, conn):
        self.conn = conn

    def next_sequence(self, tenant_id, participant_id):
        # One writer at a time (BEGIN IMMEDIATE), so MAX + 1 cannot race.
        row = self.conn.execute(
            "SELECT MAX(sequence) FROM events WHERE tenant_id = ? AND participant_id = ?",
            (tenant_id, participant_id)).fetchone()
        return (row[0] or 0) + 1

    def append(self, record):
        row = rows.event_row(record)
        self.conn.execute(
            "INSERT INTO events (id, tenant_id, participant_id, participant_type, sequence,"
            " version, command_name, success, request_id, created_at, body)"
            " VALUES (:id, :tenant_id, :participant_id, :participant_type, :sequence, :version,"
            " :command_name, :success, :request_id, :created_at, :body)", row)
        return row["body"]

    def history(self, tenant_id, participant_id, limit, offset):
        total = self.conn.execute(
            "SELECT COUNT(*) FROM events WHERE tenant_id = ? AND participant_id = ?",
            (tenant_id, participant_id)).fetchone()[0]
        found = self.conn.execute(
            "SELECT body FROM events WHERE tenant_id = ? AND participant_id = ?"
            " ORDER BY sequence LIMIT ? OFFSET ?",
            (tenant_id, participant_id, limit, offset)).fetchall()
        return [json.loads(r[0]) for r in found], total


class _Idempotency:
    def __init__(self, conn):
        self.conn = conn

    def find(self, tenant_id, request_id):
        row = self.conn.execute(
            "SELECT fingerprint, status, response, lease_until FROM idempotency"
            " WHERE tenant_id = ? AND request_id = ?", (tenant_id, request_id)).fetchone()
        return IdempotencyKey(*row) if row else None

    def claim(self, tenant_id, request_id, fingerprint, now):
        # Writers are serialized (BEGIN IMMEDIATE): nobody else can claim the key meanwhile.
        return self.find(tenant_id, request_id)

    def reserve(self, tenant_id, request_id, fingerprint, now, lease_until):
        self.conn.execute(
            "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
            " created_at, lease_until) VALUES (?, ?, ?, NULL, NULL, ?, ?)"
            " ON CONFLICT (tenant_id, request_id) DO UPDATE SET lease_until = excluded.lease_until",
            (tenant_id, request_id, fingerprint, now, lease_until))

    def release(self, tenant_id, request_id):
        self.conn.execute("DELETE FROM idempotency WHERE tenant_id = ? AND request_id = ?"
                          " AND response IS NULL", (tenant_id, request_id))

    def save(self, tenant_id, request_id, fingerprint, status, body, now):
        self.conn.execute(
            "INSERT INTO idempotency (tenant_id, request_id, fingerprint, status, response,"
            " created_at, lease_until) VALUES (?, ?, ?, ?, ?, ?, NULL)"
            " ON CONFLICT (tenant_id, request_id) DO UPDATE SET status = excluded.status,"
            " response = excluded.response, lease_until = NULL",
            (tenant_id, request_id, fingerprint, status, body, now))

    def prune(self, older_than, limit):
        return self.conn.execute(
            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency"
            " WHERE created_at < ? AND response IS NOT NULL LIMIT ?)",
            (older_than, limit)).rowcount


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


class _Outbox:
    def __init__(self, conn):
        self.conn = conn

    def add(self, entries, now):
        self.conn.executemany(
            "INSERT INTO outbox (event_id, tenant_id, participant_id, kind, url, secret,"
            " status, attempts, next_attempt_at, created_at, method, headers, payload)"
            " VALUES (:event_id, :tenant_id, :participant_id, :kind, :url, :secret, 'pending',"
            " 0, :next_attempt_at, :created_at, :method, :headers, :payload)",
            [rows.outbox_row(e, now) for e in entries])

    def claimable(self, now):
        return self.conn.execute(_CLAIMABLE, {"now": now, "batch": 1}).fetchone() is not None

    def claim(self, now, limit, lease_until, owner):
        ids = [r[0] for r in self.conn.execute(_CLAIMABLE, {"now": now, "batch": limit})]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        self.conn.execute(
            f"UPDATE outbox SET status = 'leased', lease_until = ?, lease_owner = ?"
            f" WHERE id IN ({marks})", [lease_until, owner, *ids])
        return [rows.claimed_from_row(row) for row in self.conn.execute(
            "SELECT o.id, o.tenant_id, o.event_id, o.kind, o.url, o.secret, o.attempts,"
            " o.method, o.headers, COALESCE(o.payload, e.body) FROM outbox o"
            f" LEFT JOIN events e ON e.id = o.event_id WHERE o.id IN ({marks}) ORDER BY o.id",
            ids)]

    def next_due(self, after):
        return self.conn.execute(_OUTBOX_DUE, {"after": after}).fetchone()[0]

    def record(self, claimed, attempt, at, status_code, error, duration_ms, outcome):
        self.conn.execute(
            "INSERT INTO deliveries (outbox_id, attempt, at, status_code, error, duration_ms,"
            " outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (claimed.id, attempt, at, status_code, error, duration_ms, outcome))

    def retry(self, claimed, owner, attempts, next_attempt_at, error):
        self.conn.execute(
            "UPDATE outbox SET status = 'pending', attempts = ?, next_attempt_at = ?,"
            " last_error = ?, lease_until = NULL, lease_owner = NULL"
            " WHERE id = ? AND lease_owner = ?",
            (attempts, next_attempt_at, error, claimed.id, owner))

    def finish(self, claimed, owner, outcome, attempts, error, delivered_at):
        self.conn.execute(
            "UPDATE outbox SET status = ?, attempts = ?, last_error = ?, delivered_at = ?,"
            " secret = NULL, headers = NULL, lease_until = NULL, lease_owner = NULL"
            " WHERE id = ? AND lease_owner = ?",
            (outcome, attempts, error, delivered_at, claimed.id, owner))

    def release(self, claimed, owner):
        self.conn.executemany(
            "UPDATE outbox SET status = 'pending', lease_until = NULL, lease_owner = NULL"
            " WHERE id = ? AND lease_owner = ?", [(c.id, owner) for c in claimed])


class _Batches:
    def __init__(self, conn):
        self.conn = conn

    def add(self, batch, items):
        self.conn.execute(
            f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (:id, :tenant_id, :type, :kind,"
            " :status, :total, :success, :failed, :created_at, :completed_at, :request_id,"
            " :user_info, :callback, :callback_secret, :token)", rows.batch_row(batch))
        self.conn.executemany(
            "INSERT INTO batch_items (batch_id, idx, body, status, reason)"
            " VALUES (:batch_id, :idx, :body, :status, :reason)",
            [rows.item_row(batch, i) for i in items])

    def get(self, tenant_id, batch_id):
        row = self.conn.execute(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?"
                                " AND tenant_id = ?", (batch_id, tenant_id)).fetchone()
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
            "SELECT idx, body FROM batch_items WHERE batch_id = ? AND status = 'pending'"
            " ORDER BY idx LIMIT ?", (batch.id, limit))]

    def start(self, batch):
        self.conn.execute("UPDATE batches SET status = 'processing' WHERE id = ?"
                          " AND status = 'pending'", (batch.id,))

    def finish_item(self, tenant_id, batch_id, item):
        cursor = self.conn.execute(
            "UPDATE batch_items SET status = ?, participant_id = ?, event_id = ?, reason = ?,"
            " error_code = ? WHERE batch_id = ? AND idx = ? AND status = 'pending'"
            " AND EXISTS (SELECT 1 FROM batches WHERE id = ? AND tenant_id = ?)",
            (item.status, item.participant_id, item.event_id, item.reason, item.error_code,
             batch_id, item.index, batch_id, tenant_id))
        if cursor.rowcount == 1:
            success = item.status == "success"
            self.conn.execute("UPDATE batches SET success = success + ?, failed = failed + ?"
                              " WHERE id = ?", (int(success), int(not success), batch_id))

    def complete(self, batch, now):
        if self.conn.execute("SELECT 1 FROM batch_items WHERE batch_id = ? AND status = 'pending'"
                             " LIMIT 1", (batch.id,)).fetchone():
            return None
        cursor = self.conn.execute(
            "UPDATE batches SET status = 'completed', completed_at = ?, token = NULL,"
            " callback_secret = NULL WHERE id = ? AND status != 'completed'", (now, batch.id))
        if cursor.rowcount != 1:
            return None  # another worker completed it
        return self.get(batch.tenant_id, batch.id)

    def outcomes(self, batch):
        return [rows.outcome_from_row(row) for row in self.conn.execute(
            "SELECT idx, status, participant_id, event_id, reason, error_code"
            " FROM batch_items WHERE batch_id = ? AND status != 'pending' ORDER BY idx",
            (batch.id,))]


class SqliteUnitOfWork:
    """The repositories over one connection; one per thread, reused across transactions."""

    __slots__ = ("participants", "events", "idempotency", "outbox", "batches")

    def __init__(self, conn):
        self.participants = _Participants(conn)
        self.events = _Events(conn)
        self.idempotency = _Idempotency(conn)
        self.outbox = _Outbox(conn)
        self.batches = _Batches(conn)

