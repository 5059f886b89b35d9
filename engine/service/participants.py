"""Create, update and transition participants: validate, decide, then one atomic write."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.delivery.hooks import HookCaller, expand_headers, hook_body, waits
from engine.errors import Issue, ParticipantNotFound, PreconditionFailed, UnstorableText
from engine.model import events
from engine.model import failures as F
from engine.model.commands import Command
from engine.model.conventions import index_value
from engine.model.decisions import Failure, Snapshot, decide
from engine.model.events import EventContext
from engine.model.strictjson import nul_path
from engine.model.types import ParticipantType
from engine.service import batches, dryrun, idempotency
from engine.service.queries import ListQuery, check
from engine.service.retries import retrying
from engine.storage.interface import OutboxEntry, Storage, StoredParticipant, UnitOfWork

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
    """The participant operations over one storage; each write is one unit of work."""

    def __init__(self, storage: Storage, *, idempotency_retention_ms: int = 86_400_000,
                 prune_every: int = 500, hooks: HookCaller | None = None,
                 hook_lease_ms: int = 120_000, clock: Callable[[], float] = time.time,
                 machines: Path | str | None = None):
        self.storage = storage
        self.machines = Path(machines) if machines is not None else None  # for drafts' codes
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
        with self.storage.read() as uow:
            participant = uow.participants.get(tenant_id, participant_id)
        if participant is None:
            raise ParticipantNotFound(participant_id)
        return participant

    def history(self, tenant_id: str, participant_id: str, limit: int, offset: int):
        """A page of the participant's events; archived participants keep their history."""
        with self.storage.read() as uow:
            if uow.participants.get(tenant_id, participant_id, archived=True) is None:
                raise ParticipantNotFound(participant_id)
            return uow.events.history(tenant_id, participant_id, limit, offset)

    def search(self, ptype: ParticipantType, tenant_id: str, query: ListQuery):
        """One page of the tenant's participants of `ptype` matching `query`, and the total;
        InvalidQuery (every problem, with its path) before any database sees it."""
        check(query, ptype.definition)
        with self.storage.read() as uow:
            return uow.participants.search(ptype.definition, tenant_id, query)

    def batch_status(self, tenant_id: str, plural: str, batch_id: str) -> dict:
        """OS1's BatchResponse of one of the tenant's batches."""
        return batches.status(self.storage, tenant_id, plural, batch_id)

    def dry_run(self, tenant_id: str, plural: str, body: dict,
                loaded: ParticipantType | None) -> dryrun.DryRun:
        """Decide a dry run (SPEC §7) against `loaded` or the body's draft; writes nothing."""
        if (path := nul_path(body)) is not None:
            raise UnstorableText(path)  # as a real write would refuse it

        def participant(participant_id: str) -> StoredParticipant | None:
            with self.storage.read() as uow:
                return uow.participants.get(tenant_id, participant_id)

        def exists(unique_code: str) -> bool:
            with self.storage.read() as uow:
                return uow.participants.get(tenant_id, participant_id_for(
                    tenant_id, plural, unique_code), archived=True) is not None

        return dryrun.run(
            body, plural=plural, loaded=loaded, machines=self.machines, participant=participant,
            history=lambda pid, limit, offset: self.history(tenant_id, pid, limit, offset),
            exists=exists)

    # -- writes ----------------------------------------------------------------------------

    def accept_batch(self, **request) -> tuple[int, str, bool]:
        """Store a batch with its items and the request's answer (see service.batches.accept)."""
        return batches.accept(self.storage, now=self._now_ms(), **request)

    def execute(self, ptype: ParticipantType, command: Command, render: Render) -> WriteResult:
        """Run one write: replay it if already answered, else decide and commit it at once.

        A waited onRequest hook is called first, outside any database lock, while the request
        id is reserved (a repeat meanwhile gets 409).
        """
        if (path := nul_path(command.body)) is not None:
            raise UnstorableText(path)  # before any backend sees it: refused alike on both
        if waits(command.on_request):
            replayed = retrying(lambda: self._reserve(ptype, command))
            if replayed is not None:
                return replayed
            try:
                command, hook_record = self.hooks.on_request(command)
                return self._commit(ptype, command, render, hook_record)
            except BaseException:
                with self.storage.write() as uow:
                    uow.idempotency.release(command.tenant_id, command.request_id)
                raise
        return self._commit(ptype, command, render, None)

    def _reserve(self, ptype: ParticipantType, command: Command) -> WriteResult | None:
        """Reserve the request id for a hook call; the stored answer if it has one already."""
        now = self._now_ms()
        with self.storage.write() as uow:
            replay = idempotency.lookup(uow, command.tenant_id, command.request_id,
                                        command.fingerprint, now)
            if replay is not None:
                return WriteResult(replay[0], replay[1], True)
            self._target(uow, ptype, command)  # 404 and 412 before calling anybody
            uow.idempotency.reserve(command.tenant_id, command.request_id,
                                    command.fingerprint, now, now + self.hook_lease_ms)
        return None

    def _commit(self, ptype: ParticipantType, command: Command, render: Render,
                hook_record: dict | None) -> WriteResult:
        """Decide and write the command in one unit of work, again if it lost a race."""
        return retrying(lambda: self._commit_once(ptype, command, render, hook_record))

    def _commit_once(self, ptype: ParticipantType, command: Command, render: Render,
                     hook_record: dict | None) -> WriteResult:
        now = self._now_ms()
        with self.storage.write() as uow:
            replay = idempotency.lookup(uow, command.tenant_id, command.request_id,
                                        command.fingerprint, now, reserved=hook_record is not None)
            if replay is not None:
                return WriteResult(replay[0], replay[1], True)
            record, state = self._apply(uow, ptype, command, now, hook_record)
            if command.batch_id is not None:  # the item's outcome commits with its event
                uow.batches.finish_item(command.tenant_id, command.batch_id,
                                        batches.item_outcome(command.batch_item, record))
            status, body = render(record["entityInstanceId"], record, state)
            uow.idempotency.save(command.tenant_id, command.request_id, command.fingerprint,
                                 status, body, now)
            self._writes += 1
            if self._writes % self.prune_every == 0:
                uow.idempotency.prune(now - self.retention_ms, idempotency.PRUNE_STEP)
        return WriteResult(status, body, False)

    def _target(self, uow: UnitOfWork, ptype: ParticipantType, command: Command
                ) -> tuple[str, StoredParticipant | None]:
        """The participant the command is about; 404 or 412 when it cannot apply."""
        if command.kind == "create":
            participant_id = participant_id_for(command.tenant_id, ptype.plural,
                                                command.unique_code)
            return participant_id, uow.participants.get(command.tenant_id, participant_id,
                                                         archived=True)
        participant_id = command.participant_id
        current = uow.participants.get(command.tenant_id, participant_id)
        if current is None or current.type != ptype.plural:
            raise ParticipantNotFound(participant_id)
        if command.if_match is not None and command.if_match != current.version:
            raise PreconditionFailed(command.if_match, current.version)
        return participant_id, current

    def _apply(self, uow: UnitOfWork, ptype: ParticipantType, command: Command, now: int,
               hook_record: dict | None = None) -> tuple[dict, str | None]:
        definition = ptype.definition
        participant_id, current = self._target(uow, ptype, command)

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
        sequence = uow.events.next_sequence(command.tenant_id, participant_id)
        common = dict(definition=definition, kind=kind, ctx=ctx, participant_id=participant_id,
                      unique_code=data["uniqueCode"], data=data, sequence=sequence,
                      created_at=now, event_code=command.change.event_code,
                      reason_code=command.change.reason_code)
        if not result.ok:
            record = events.envelope(
                **common, success=False, reason=result.reason, error_code=result.error_code,
                errors=[i.as_dict() for i in result.issues], entity_after=None,
                version=current.version if current else 0)
            uow.events.append(record)
            if command.timer:  # do not retry a timer that cannot apply until something changes
                uow.participants.block_timer(command.tenant_id, participant_id)
            self._enqueue(uow, command, record, callback, now, failed=True,
                          secret=self._secret(command, current))
            return record, current.state if current else None

        row = self._save(uow, ptype, command, current, participant_id, result, now)
        record = events.envelope(**common, success=True, version=row["version"],
                                 entity_after=events.entity(definition, row))
        uow.events.append(record)
        self._enqueue(uow, command, record, callback, now, failed=False,
                      secret=self._secret(command, current))
        return record, row["state"]

    def _save(self, uow: UnitOfWork, ptype, command: Command,
              current: StoredParticipant | None, participant_id: str, outcome, now: int) -> dict:
        """Insert or compare-and-set the participant and its indexed values."""
        core = outcome.core
        callback = command.callback or (current.callback if current else None)
        if current is None:
            version, created_at, created_by, entered = 1, now, command.user_info, now
        else:
            version, created_at, created_by = current.version + 1, current.created_at, \
                current.created_by
            # any transition, a self-loop included, re-enters its sub-state and restarts its ttl
            entered = now if outcome.transitioned else current.state_entered_at
        participant = StoredParticipant(
            command.tenant_id, participant_id, ptype.plural,
            command.unique_code or current.unique_code, core.get("name"), core.get("owner"),
            core.get("category"), core.get("subCategory"), core.get("templateId"),
            outcome.state, outcome.properties, version, created_at, now, entered, created_by,
            command.user_info, callback, self._secret(command, current))
        if current is None:
            uow.participants.insert(participant)
        elif not uow.participants.update(participant, current.version):
            # cannot happen: get() in a write holds off concurrent writers; never write blind
            raise RuntimeError(f"compare-and-set failed on {participant_id}")
        if (current is None or outcome.transitioned) and _has_timer(ptype, outcome.state):
            self.storage.work_queued()  # a new due time for the dispatcher (see _has_timer)
        uow.participants.set_index(
            command.tenant_id, ptype.plural, participant_id,
            [(name, index_value(outcome.properties[name]))
             for name in ptype.definition.indexed_attributes if name in outcome.properties],
            replace=current is not None)
        return {
            "tenant_id": command.tenant_id, "id": participant_id, "type": ptype.plural,
            "unique_code": participant.unique_code,
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

    def _enqueue(self, uow: UnitOfWork, command: Command, record: dict, callback: dict | None,
                 now: int, *, failed: bool, secret: str | None) -> None:
        """Outbox entries for the deliveries this event owes, in the event's transaction."""
        event_id, participant_id = record["event"]["id"], record["entityInstanceId"]
        entries = []
        if callback and callback.get("url"):
            entries.append(OutboxEntry(event_id, command.tenant_id, participant_id, "callback",
                                       callback["url"], secret))
        on_error = command.on_error
        if failed and on_error and on_error.get("url"):
            entries.append(OutboxEntry(
                event_id, command.tenant_id, participant_id, "onError", on_error["url"], secret,
                on_error.get("method") or "POST",
                expand_headers(on_error.get("requestHeader"), command)))
        on_request = command.on_request
        if on_request and on_request.get("url") and not waits(on_request):
            entries.append(OutboxEntry(
                event_id, command.tenant_id, participant_id, "onRequest", on_request["url"],
                secret, on_request.get("method") or "POST",
                expand_headers(on_request.get("requestHeader"), command),
                hook_body(on_request, command).decode()))
        if entries:
            uow.outbox.add(entries, now)
            self.storage.work_queued()  # the dispatcher hears of it once this commits
