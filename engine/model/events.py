"""The event envelope, in the seed's shape (the log itself is the storage's)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from email.utils import formatdate

from engine.model.definitions import Definition

__all__ = ["COMMANDS", "EventContext", "envelope", "entity"]

DOMAIN = "participants"
EVENT_VERSION = "1.0.0"

# kind -> (command name stem, business command verb)
COMMANDS = {
    "create": ("ParticipantCreation", "Create"),
    "update": ("ParticipantUpdation", "Update"),
    "state": ("ParticipantStateUpdation", "StateUpdate"),
    "combined": ("ParticipantAttributeAndStateUpdation", "Update"),
}


def command_name(kind: str, success: bool) -> str:
    return COMMANDS[kind][0] + ("SuccessEvent" if success else "FailedEvent")


@dataclass(frozen=True, slots=True)
class EventContext:
    """Who asked for the change, and where the outcome goes."""

    tenant_id: str
    request_id: str
    user_info: dict | None = None
    callback: dict | None = None        # {url, meta}: the request's, else the stored one
    batch_id: str | None = None


def entity(definition: Definition, row: dict) -> dict:
    """The participant after the operation, keyed as in the seed's event example."""
    indexed = set(definition.indexed_attributes)
    properties = row["properties"]
    sub = definition.sub_states.get(row["state"])
    callback = row.get("callback") or {}
    return {
        "domain": DOMAIN,
        "entityType": "participantEntity",
        "aggregateRoot": f"{DOMAIN}.{definition.plural}",
        "type": definition.plural,
        "tenant_id": row["tenant_id"],
        "participant_type": definition.plural,
        "participant_id": row["id"],
        "participant_code": row["unique_code"],
        "owner_id": row.get("owner"),
        "participant_name": row.get("name"),
        "category": row.get("category"),
        "sub_category": row.get("sub_category"),
        "template_id": row.get("template_id"),
        "is_active": not (sub and sub.terminal),
        "state": row["state"],
        "indexed_attributes": {k: v for k, v in properties.items() if k in indexed},
        "non_indexed_attributes": {k: v for k, v in properties.items() if k not in indexed},
        "callback": callback.get("url"),
        "version": row["version"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "created_by": row.get("created_by"),
        "updated_by": row.get("updated_by"),
    }


def envelope(*, definition: Definition, kind: str, ctx: EventContext, participant_id: str,
             unique_code: str | None, success: bool, reason: str = "",
             error_code: str | None = None, errors: list | None = None, data: dict,
             entity_after: dict | None, version: int, sequence: int, created_at: int,
             event_code: str | None = None, reason_code: str | None = None) -> dict:
    """One event record: the seed's envelope plus `version`, `sequence` and `errors`."""
    name = command_name(kind, success)
    event = {
        "id": str(uuid.uuid4()),
        "eventVersion": EVENT_VERSION,
        "eventType": name,
        "createdTime": formatdate(created_at / 1000, usegmt=True),
        "sequentialExecution": False,
        "domain": DOMAIN,
        "participant_id": participant_id,
        "participant_type": definition.plural,
        "tenant_id": ctx.tenant_id,
        "tenantId": ctx.tenant_id,
        "batchId": ctx.batch_id,
        "requestId": ctx.request_id,
        "failureReason": reason,
        "callback": ctx.callback,
        "userInfo": ctx.user_info,
        "uniqueCode": unique_code,
        "errorCode": error_code,
    }
    if event_code is not None:
        event["smEventCode"] = event_code
        event["smReasonCode"] = reason_code
    record = {
        "businessCommand": f"{DOMAIN}{definition.plural.capitalize()}Entity{COMMANDS[kind][1]}",
        "requestId": ctx.request_id,
        "entityName": definition.plural,
        "entityVersion": definition.version,
        "commandName": name,
        "payloadValidated": success,
        "reason": reason,
        "errorCode": error_code,
        "entityInstanceId": participant_id,
        "tenantId": ctx.tenant_id,
        "version": version,
        "sequence": sequence,
        "createdAt": created_at,
        "data": data,
        "entity": entity_after if success and entity_after is not None else {},
        "callbackMeta": (ctx.callback or {}).get("meta"),
        "event": event,
    }
    if not success:
        record["errors"] = errors or []
    return record
