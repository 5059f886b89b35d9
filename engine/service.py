"""Create, update and transition participants: validate, decide, then one atomic write."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import batches, events, idempotency
from . import failures as F
from .commands import Command
from .conventions import compact_json, index_value
from .decisions import Failure, Snapshot, decide
from .errors import Issue, ParticipantNotFound, PreconditionFailed
from .events import EventContext
from .hooks import HookCaller, expand_headers, hook_body, waits
from .registry import ParticipantType
from .store import Store, StoredParticipant

__all__ = ["Command", "Service", "WriteResult", "participant_id_for"]

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "participant-service/participants")


def participant_id_for(tenant_id: str, plural: str, unique_code: str) -> str:
    """`{plural}:{uuid5}` from tenant, type and uniqueCode: a repeated create names the same id."""
    return f"{plural}:{uuid.uuid5(_NAMESPACE, json.dumps([tenant_id, plural, unique_code]))}"


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: int
    body: str
    replayed: bool


Render = Callable[[str, dict, "str | None"], tuple[int, str]]


def _has_timer(ptype: ParticipantType, state: str) -> bool:
    """Whether a participant entering `state` starts a timer: a ttl, or a terminalTTL. (A timer
    unblocked by a later write without a transition is found by the dispatcher's next poll.)"""
    sub = ptype.definition.sub_states.get(state)
    return sub is not None and (sub.ttl is not None or (
        sub.terminal and ptype.definition.terminal_ttl is not None))


class Service:
    """The participant operations over one Store."""

    def __init__(self, store: Store, *, idempotency_retention_ms: int = 86_400_000,
                 prune_every: int = 500, hooks: HookCaller | None = None,
                 hook_lease_ms: int = 120_000, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self.hooks = hooks or HookCaller()
        self.hook_lease_ms = hook_lease_ms
        self.retention_ms = idempotency_retention_ms
        self.prune_every = prune_every
        self._writes = 0

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- reads -----------------------------------------------------------------------------

    def get(self, tenant_id: str, participant_id: str) -> StoredParticipant:
        participant = self.store.participant(self.store.conn, tenant_id, participant_id)
        if participant is None:
            raise ParticipantNotFound(participant_id)
        return participant

    def history(self, tenant_id: str, participant_id: str, limit: int, offset: int):
        """A page of the participant's events; archived participants keep their history."""
        conn = self.store.conn
        if self.store.participant(conn, tenant_id, participant_id, archived=True) is None:
            raise ParticipantNotFound(participant_id)
        return events.history(conn, tenant_id, participant_id, limit, offset)

    # -- writes ----------------------------------------------------------------------------

    def execute(self, ptype: ParticipantType, command: Command, render: Render) -> WriteResult:
        """Run one write: replay it if already answered, else decide and commit it at once.

        A waited onRequest hook is called first, outside any database lock, while the request
        id is reserved (a repeat meanwhile gets 409).
        """
        if waits(command.on_request):
            now = self._now_ms()
            with self.store.write() as conn:
                replay = idempotency.lookup(conn, command.tenant_id, command.request_id,
                                            command.fingerprint, now)
                if replay is not None:
                    return WriteResult(replay[0], replay[1], True)
                self._target(conn, ptype, command)  # 404 and 412 before calling anybody
                idempotency.reserve(conn, command.tenant_id, command.request_id,
                                    command.fingerprint, now, self.hook_lease_ms)
            try:
                command, hook_record = self.hooks.on_request(command)
                return self._commit(ptype, command, render, hook_record)
            except BaseException:
                with self.store.write() as conn:
                    idempotency.release(conn, command.tenant_id, command.request_id)
                raise
        return self._commit(ptype, command, render, None)

    def _commit(self, ptype: ParticipantType, command: Command, render: Render,
                hook_record: dict | None) -> WriteResult:
        now = self._now_ms()
        with self.store.write() as conn:
            replay = idempotency.lookup(conn, command.tenant_id, command.request_id,
                                        command.fingerprint, now, reserved=hook_record is not None)
            if replay is not None:
                return WriteResult(replay[0], replay[1], True)
            record, state = self._apply(conn, ptype, command, now, hook_record)
            if command.batch_id is not None:  # the item's outcome commits with its event
                batches.record_item(conn, command.batch_id, command.batch_item, record)
            status, body = render(record["entityInstanceId"], record, state)
            idempotency.save(conn, command.tenant_id, command.request_id, command.fingerprint,
                             status, body, now)
            self._writes += 1
            if self._writes % self.prune_every == 0:
                idempotency.prune(conn, now - self.retention_ms)
        return WriteResult(status, body, False)

    def _target(self, conn, ptype: ParticipantType, command: Command
                ) -> tuple[str, StoredParticipant | None]:
        """The participant the command is about; 404 or 412 when it cannot apply."""
        if command.kind == "create":
            participant_id = participant_id_for(command.tenant_id, ptype.plural,
                                                command.unique_code)
            return participant_id, self.store.participant(conn, command.tenant_id,
                                                          participant_id, archived=True)
        participant_id = command.participant_id
        current = self.store.participant(conn, command.tenant_id, participant_id)
        if current is None or current.type != ptype.plural:
            raise ParticipantNotFound(participant_id)
        if command.if_match is not None and command.if_match != current.version:
            raise PreconditionFailed(command.if_match, current.version)
        return participant_id, current

    def _apply(self, conn, ptype: ParticipantType, command: Command, now: int,
               hook_record: dict | None = None) -> tuple[dict, str | None]:
        definition = ptype.definition
        participant_id, current = self._target(conn, ptype, command)

        kind = command.kind
        if kind == "update" and command.change.event_code is not None:
            kind = "combined"
        if command.hook_issue is not None:
            result = Failure(F.HOOK_REJECTED, (command.hook_issue,))
        elif command.kind == "create" and current is not None:
            result = Failure(F.ALREADY_EXISTS, (Issue("$.uniqueCode", (
                f"a {definition.singular} with uniqueCode '{command.unique_code}' already "
                f"exists: {participant_id}")),))
        else:
            snapshot = None if current is None else Snapshot(current.state, current.properties,
                                                             current.core)
            result = decide(ptype, snapshot, command.change)

        stored_callback = current.callback if current else None
        callback = command.callback or stored_callback
        ctx = EventContext(command.tenant_id, command.request_id, command.user_info, callback,
                           command.batch_id)
        data = {"entityName": definition.plural, "appId": "participants",
                "updatedBy": command.user_info, "updatedAt": str(now),
                "uniqueCode": command.unique_code or (current.unique_code if current else None),
                **command.data}
        if hook_record is not None:
            data["onRequest"] = hook_record
        sequence = events.next_sequence(conn, command.tenant_id, participant_id)
        common = dict(definition=definition, kind=kind, ctx=ctx, participant_id=participant_id,
                      unique_code=data["uniqueCode"], data=data, sequence=sequence,
                      created_at=now, event_code=command.change.event_code,
                      reason_code=command.change.reason_code)
        if not result.ok:
            record = events.envelope(
                **common, success=False, reason=result.reason, error_code=result.error_code,
                errors=[i.as_dict() for i in result.issues], entity_after=None,
                version=current.version if current else 0)
            events.append(conn, record)
            if command.timer:  # do not retry a timer that cannot apply until something changes
                conn.execute("UPDATE participants SET timer_blocked_version = version"
                             " WHERE tenant_id = ? AND id = ?", (command.tenant_id, participant_id))
            self._enqueue(conn, command, record, callback, now, failed=True,
                          secret=self._secret(command, current))
            return record, current.state if current else None

        row = self._save(conn, ptype, command, current, participant_id, result, now)
        record = events.envelope(**common, success=True, version=row["version"],
                                 entity_after=events.entity(definition, row))
        events.append(conn, record)
        self._enqueue(conn, command, record, callback, now, failed=False,
                      secret=self._secret(command, current))
        return record, row["state"]

    def _save(self, conn, ptype, command: Command, current: StoredParticipant | None,
              participant_id: str, outcome, now: int) -> dict:
        """Insert or compare-and-set the participant row and its index rows."""
        core = outcome.core
        user = json.dumps(command.user_info) if command.user_info is not None else None
        properties = compact_json(outcome.properties)
        callback = command.callback or (current.callback if current else None)
        callback_json = json.dumps(callback) if callback is not None else None
        secret = self._secret(command, current)
        if current is None:
            version, created_at, created_by, entered = 1, now, command.user_info, now
            conn.execute(
                "INSERT INTO participants (tenant_id, id, type, unique_code, name, owner,"
                " category, sub_category, template_id, state, properties, version, created_at,"
                " updated_at, state_entered_at, created_by, updated_by, callback, callback_secret)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                (command.tenant_id, participant_id, ptype.plural, command.unique_code,
                 core.get("name"), core.get("owner"), core.get("category"),
                 core.get("subCategory"), core.get("templateId"), outcome.state, properties,
                 now, now, now, user, user, callback_json, secret),
            )
        else:
            version, created_at, created_by = current.version + 1, current.created_at, \
                current.created_by
            # any transition, a self-loop included, re-enters its sub-state and restarts its ttl
            entered = now if outcome.transitioned else current.state_entered_at
            cursor = conn.execute(
                "UPDATE participants SET name = ?, owner = ?, category = ?, sub_category = ?,"
                " template_id = ?, state = ?, properties = ?, version = version + 1,"
                " updated_at = ?, state_entered_at = ?, updated_by = ?, callback = ?,"
                " callback_secret = ?, timer_blocked_version = NULL"
                " WHERE tenant_id = ? AND id = ? AND version = ?",
                (core.get("name"), core.get("owner"), core.get("category"),
                 core.get("subCategory"), core.get("templateId"), outcome.state, properties,
                 now, entered, user, callback_json, secret, command.tenant_id, participant_id,
                 current.version),
            )
            if cursor.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; never write blind
                raise RuntimeError(f"compare-and-set failed on {participant_id}")
            conn.execute("DELETE FROM attribute_index WHERE tenant_id = ? AND type = ?"
                         " AND participant_id = ?",
                         (command.tenant_id, ptype.plural, participant_id))
        if (current is None or outcome.transitioned) and _has_timer(ptype, outcome.state):
            self.store.work_queued()  # a new due time for the dispatcher (see _has_timer)
        indexed = [(command.tenant_id, ptype.plural, name, index_value(outcome.properties[name]),
                    participant_id)
                   for name in ptype.definition.indexed_attributes if name in outcome.properties]
        if indexed:
            conn.executemany("INSERT INTO attribute_index (tenant_id, type, name, value,"
                             " participant_id) VALUES (?, ?, ?, ?, ?)", indexed)
        return {
            "tenant_id": command.tenant_id, "id": participant_id, "type": ptype.plural,
            "unique_code": command.unique_code or current.unique_code,
            "name": core.get("name"), "owner": core.get("owner"),
            "category": core.get("category"), "sub_category": core.get("subCategory"),
            "template_id": core.get("templateId"), "state": outcome.state,
            "properties": outcome.properties, "version": version, "created_at": created_at,
            "updated_at": now, "state_entered_at": entered, "created_by": created_by,
            "updated_by": command.user_info, "callback": callback,
        }

    @staticmethod
    def _secret(command: Command, current: StoredParticipant | None) -> str | None:
        """The callback secret: this request's, else the one stored with the callback."""
        if command.callback_secret:
            return command.callback_secret
        return current.callback_secret if current else None

    def _enqueue(self, conn, command: Command, record: dict, callback: dict | None, now: int,
                 *, failed: bool, secret: str | None) -> None:
        """Outbox rows for the deliveries this event owes, in the event's transaction."""
        rows = []
        if callback and callback.get("url"):
            rows.append(("callback", callback["url"], "POST", None, None))
        on_error = command.on_error
        if failed and on_error and on_error.get("url"):
            rows.append(("onError", on_error["url"], on_error.get("method") or "POST",
                         expand_headers(on_error.get("requestHeader"), command), None))
        on_request = command.on_request
        if on_request and on_request.get("url") and not waits(on_request):
            rows.append(("onRequest", on_request["url"], on_request.get("method") or "POST",
                         expand_headers(on_request.get("requestHeader"), command),
                         hook_body(on_request, command).decode()))
        if rows:
            self.store.work_queued()  # the dispatcher hears of it once this commits
        for kind, url, method, headers, payload in rows:
            conn.execute(
                "INSERT INTO outbox (event_id, tenant_id, participant_id, kind, url, secret,"
                " status, attempts, next_attempt_at, created_at, method, headers, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)",
                (record["event"]["id"], command.tenant_id, record["entityInstanceId"], kind, url,
                 secret, now, now, method.upper(),
                 json.dumps(headers) if headers else None, payload),
            )
