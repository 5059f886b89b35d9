"""Records as rows, the same on both backends: the columns a record is read from, and the
conversions between a row and the records of engine/storage/interface.py.

The tables name their columns as the records name their fields. Reads select the columns in the
order of the record's fields (PARTICIPANT_COLUMNS, BATCH_COLUMNS); writes bind values by column
name (`:name` on SQLite, `%(name)s` on PostgreSQL), so a statement and its values cannot drift
apart. JSON columns hold compact JSON text. The statements themselves stay in the backends.
"""

from __future__ import annotations

import json
from dataclasses import fields

from engine.model.conventions import compact_json
from engine.storage.interface import Batch, BatchItem, Claimed, OutboxEntry, StoredParticipant

__all__ = [
    "BATCH_COLUMNS", "PARTICIPANT_COLUMNS", "batch_from_row", "batch_row", "claimed_from_row",
    "event_row", "item_row", "outbox_row", "outcome_from_row", "participant_from_row",
    "participant_row", "pending_item_from_row",
]


def _columns(record: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(record))


_PARTICIPANT = _columns(StoredParticipant)
_BATCH = _columns(Batch)
# The columns that hold JSON, by position in a row of the columns above.
_PARTICIPANT_JSON = tuple(_PARTICIPANT.index(c) for c in ("properties", "created_by",
                                                          "updated_by", "callback"))
_BATCH_JSON = tuple(_BATCH.index(c) for c in ("user_info", "callback"))

PARTICIPANT_COLUMNS = ", ".join(_PARTICIPANT)
BATCH_COLUMNS = ", ".join(_BATCH)


def _load(text):
    return json.loads(text) if text is not None else None


def _dump(value) -> str | None:
    return compact_json(value) if value is not None else None


def _decoded(row, json_at: tuple[int, ...]) -> list:
    values = list(row)
    for i in json_at:
        values[i] = _load(values[i])
    return values


# -- participants -------------------------------------------------------------------------------

def participant_from_row(row) -> StoredParticipant:
    """A participant from a row of PARTICIPANT_COLUMNS."""
    return StoredParticipant(*_decoded(row, _PARTICIPANT_JSON))


def participant_row(p: StoredParticipant) -> dict:
    """The participant's row, by column name (its timer and archive columns left out)."""
    return {"tenant_id": p.tenant_id, "id": p.id, "type": p.type, "unique_code": p.unique_code,
            "name": p.name, "owner": p.owner, "category": p.category,
            "sub_category": p.sub_category, "template_id": p.template_id, "state": p.state,
            "properties": compact_json(p.properties), "version": p.version,
            "created_at": p.created_at, "updated_at": p.updated_at,
            "state_entered_at": p.state_entered_at, "created_by": _dump(p.created_by),
            "updated_by": _dump(p.updated_by), "callback": _dump(p.callback),
            "callback_secret": p.callback_secret}


# -- events and the outbox ----------------------------------------------------------------------

def event_row(record: dict) -> dict:
    """An event record's row, by column name; `body` is the record as stored."""
    return {"id": record["event"]["id"], "tenant_id": record["tenantId"],
            "participant_id": record["entityInstanceId"],
            "participant_type": record["entityName"], "sequence": record["sequence"],
            "version": record["version"], "command_name": record["commandName"],
            "success": bool(record["payloadValidated"]), "request_id": record["requestId"],
            "created_at": record["createdAt"], "body": compact_json(record)}


def outbox_row(entry: OutboxEntry, now: int) -> dict:
    """A new outbox row, by column name, due at once (its status and attempts left out)."""
    return {"event_id": entry.event_id, "tenant_id": entry.tenant_id,
            "participant_id": entry.participant_id, "kind": entry.kind, "url": entry.url,
            "secret": entry.secret, "next_attempt_at": now, "created_at": now,
            "method": entry.method.upper(),
            "headers": json.dumps(entry.headers) if entry.headers else None,
            "payload": entry.payload}


def claimed_from_row(row) -> Claimed:
    """A claimed outbox row from (id, tenant_id, event_id, kind, url, secret, attempts, method,
    headers, body to send)."""
    return Claimed(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                   json.loads(row[8]) if row[8] else None, row[9] or "")


# -- batches ------------------------------------------------------------------------------------

def batch_from_row(row) -> Batch:
    """A batch from a row of BATCH_COLUMNS."""
    return Batch(*_decoded(row, _BATCH_JSON))


def batch_row(batch: Batch) -> dict:
    """The batch's row, by column name."""
    return {"id": batch.id, "tenant_id": batch.tenant_id, "type": batch.type,
            "kind": batch.kind, "status": batch.status, "total": batch.total,
            "success": batch.success, "failed": batch.failed, "created_at": batch.created_at,
            "completed_at": batch.completed_at, "request_id": batch.request_id,
            "user_info": _dump(batch.user_info), "callback": _dump(batch.callback),
            "callback_secret": batch.callback_secret, "token": batch.token}


def item_row(batch: Batch, item: BatchItem) -> dict:
    """A new batch item's row, by column name (its outcome columns left out)."""
    return {"tenant_id": batch.tenant_id, "batch_id": batch.id, "idx": item.index,
            "body": compact_json(item.body), "status": item.status, "reason": item.reason}


def pending_item_from_row(row) -> BatchItem:
    """A pending item from (idx, body)."""
    index, body = row
    return BatchItem(index, "pending", json.loads(body))


def outcome_from_row(row) -> BatchItem:
    """An applied item, its body left out, from (idx, status, participant_id, event_id, reason,
    error_code)."""
    index, status, participant_id, event_id, reason, error_code = row
    return BatchItem(index, status, None, participant_id, event_id, reason, error_code)
