"""Dry runs: decide a start and a list of steps, or replay a stored history, writing nothing.

Every step goes through `decide`, the very function real writes use, with the change built by
`commands.build` from the same request shapes; only the storage is left out. A draft machine
text is linted and compiled by engine.loading.drafts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidDryRun, Issue, ParticipantNotFound, UnknownParticipantType
from engine.loading.drafts import compile_draft
from engine.model import commands
from engine.model import failures as F
from engine.model.conventions import CORE_EDITABLE
from engine.model.decisions import Change, Failure, Outcome, Snapshot, decide
from engine.model.events import command_name
from engine.model.types import ParticipantType
from engine.storage.interface import StoredParticipant

__all__ = ["DryRun", "MAX_REPLAY", "MAX_STEPS", "run"]

MAX_STEPS = 1_000
MAX_REPLAY = 10_000      # events of one history re-decided by one replay
_PAGE = 500
# Outcomes the machine does not decide: a create of an existing uniqueCode, a refusing hook.
_NOT_DECIDED = {F.ALREADY_EXISTS.code, F.HOOK_REJECTED.code}


@dataclass(frozen=True, slots=True)
class DryRun:
    """The answer's `data`, and the type the steps were decided under (None when a draft
    machine has lint errors)."""

    data: dict
    ptype: ParticipantType | None


# -- one simulated participant ----------------------------------------------------------------

@dataclass
class _Participant:
    state: str
    properties: dict
    core: dict

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, self.properties, self.core)


def _errors(result: Outcome | Failure) -> list[dict]:
    return [] if result.ok else [i.as_dict() for i in result.issues]


def _outcome(ptype: ParticipantType, kind: str, before: str | None,
             result: Outcome | Failure, after: _Participant | None) -> dict:
    return {
        "from": before,
        "to": after.state if after else None,
        "commandName": command_name(kind, result.ok),
        "payloadValidated": result.ok,
        "reason": "" if result.ok else result.reason,
        "errorCode": None if result.ok else result.error_code,
        "errors": _errors(result),
        "properties": after.properties if after else None,
        "availableEvents": ptype.machine.triggers(after.state) if after else [],
    }


def _apply(current: _Participant | None, result: Outcome | Failure) -> _Participant | None:
    """The participant after the result: unchanged by a failure, as a real write leaves it."""
    if not result.ok:
        return current
    return _Participant(result.state, dict(result.properties), dict(result.core))


def _kind(step: Mapping) -> str:
    if "eventCode" in step:
        return "state"
    return "combined" if step.get("stateTransition") else "update"


def _change(kind: str, step: Mapping) -> Change:
    """The change a real request of this shape would make (built by the same code)."""
    if kind == "state":
        body = {"timestamp": 0, "source": {"appId": "dry-run"}, **step}
        return commands.build("state", body, tenant_id="", request_id="", fingerprint="").change
    return commands.build("update", dict(step), tenant_id="", request_id="",
                          fingerprint="").change


# -- the service's entry point ----------------------------------------------------------------

Lookup = Callable[[str], StoredParticipant | None]
History = Callable[[str, int, int], tuple[list[dict], int]]


def run(body: Mapping, *, plural: str, loaded: ParticipantType | None,
        machines: Path | None, participant: Lookup, history: History,
        exists: Callable[[str], bool]) -> DryRun:
    """Decide the dry run `body` (already checked against the DryRunRequest schema).

    `participant(id)` reads one of the tenant's participants (None if there is none),
    `history(id, limit, offset)` a page of its events, `exists(uniqueCode)` whether a create
    of that code would meet an existing participant.
    """
    if "replay" in body and ("start" in body or "steps" in body):
        raise InvalidDryRun([Issue("$.replay", "replay cannot be combined with start or steps")])
    lint: list[dict] = []
    ptype = loaded
    if "machine" in body:
        lint, ptype = compile_draft(body["machine"], plural, machines)
        if ptype is None:
            return DryRun({"valid": False, "lint": lint, "steps": [], "final": None}, None)
    elif ptype is None:
        raise UnknownParticipantType(plural)

    def stored(participant_id: str) -> StoredParticipant:
        found = participant(participant_id) if participant_id.startswith(f"{plural}:") else None
        if found is None or found.type != plural:
            raise ParticipantNotFound(participant_id)
        return found

    if "replay" in body:
        participant_id = body["replay"]["participantId"]
        stored(participant_id)
        return DryRun({"valid": True, "lint": lint,
                       **_replay(ptype, participant_id, history)}, ptype)
    data = {"valid": True, "lint": lint}
    current, start = _start(ptype, body.get("start"), stored, exists)
    if start is not None:
        data["start"] = start
    steps = []
    if current is not None:
        for index, step in enumerate(body.get("steps") or ()):
            kind = _kind(step)
            result = decide(ptype, current.snapshot(), _change(kind, step))
            before, current = current.state, _apply(current, result)
            steps.append({"index": index, **_outcome(ptype, kind, before, result, current)})
    data["steps"] = steps
    data["final"] = ({"state": current.state, "properties": current.properties}
                     if current is not None else None)
    return DryRun(data, ptype)


def _start(ptype: ParticipantType, start: Mapping | None, stored: Callable,
           exists: Callable[[str], bool]) -> tuple[_Participant | None, dict | None]:
    """The participant the steps start from, and the outcome of a create start."""
    definition = ptype.definition
    if start is None:
        initial = decide(ptype, None, Change())
        if initial.ok:
            return _Participant(initial.state, dict(initial.properties), {}), None
        # defaults alone do not satisfy the type (e.g. a required attribute): start empty
        return _Participant(definition.initial_state, {}, {}), None
    if "create" in start:
        body = start["create"]
        if exists(body["uniqueCode"]):
            result = Failure(F.ALREADY_EXISTS, (Issue("$.start.create.uniqueCode", (
                f"a {definition.singular} with uniqueCode '{body['uniqueCode']}' already "
                "exists")),))
        else:
            change = commands.build("create", dict(body), tenant_id="", request_id="",
                                    fingerprint="").change
            result = decide(ptype, None, change)
        current = _apply(None, result)
        outcome = _outcome(ptype, "create", None, result, current)
        return current, {k: outcome[k] for k in (
            "commandName", "payloadValidated", "reason", "errorCode", "errors", "to",
            "properties", "availableEvents")}
    if "participantId" in start:
        found = stored(start["participantId"])
        return _Participant(found.state, dict(found.properties), dict(found.core)), None
    state = start["state"]
    if state not in definition.sub_states:
        known = ", ".join(definition.sub_states)
        raise InvalidDryRun([Issue("$.start.state", (
            f"'{state}' is not a state of {definition.plural} (states: {known})"))])
    return _Participant(state, dict(start.get("properties") or {}), {}), None


# -- replay -----------------------------------------------------------------------------------

def _recorded_change(record: dict) -> tuple[str, Change] | None:
    """The kind and change of a recorded event's request; None for a kind no request makes."""
    name, data = record.get("commandName", ""), record.get("data") or {}
    core = {k: data[k] for k in CORE_EDITABLE if k in data}
    if name.startswith("ParticipantCreation"):
        return "create", Change(properties=data.get("properties") or {}, core=core)
    if name.startswith("ParticipantAttributeAndStateUpdation") or \
            name.startswith("ParticipantUpdation"):
        kind = "combined" if data.get("eventCode") else "update"
        return kind, Change(properties=data.get("properties") or {}, core=core,
                            event_code=data.get("eventCode"),
                            reason_code=data.get("reasonCode"))
    if name.startswith("ParticipantStateUpdation"):
        if "toState" in data and "eventCode" not in data:  # a ttl moved it
            return "state", Change(destination=data["toState"])
        return "state", Change(event_code=data.get("eventCode"),
                               reason_code=data.get("reasonCode"),
                               event_data=data.get("data") or {}, event_path="$")
    return None


def _side(kind: str, ok: bool, error_code: str | None, state: str | None,
          properties: dict | None) -> dict:
    return {"commandName": command_name(kind, ok), "payloadValidated": ok,
            "errorCode": error_code, "state": state, "properties": properties}


def _recorded_entity(record: dict) -> tuple[str | None, dict | None]:
    entity = record.get("entity") or {}
    if not entity:
        return None, None
    return entity.get("state"), {**(entity.get("indexed_attributes") or {}),
                                 **(entity.get("non_indexed_attributes") or {})}


def _replay(ptype: ParticipantType, participant_id: str, history: History) -> dict:
    """Every recorded request, oldest first: its recorded outcome and the draft's, side by side.

    The simulated participant evolves by the simulated outcomes, so a change early in the
    history shows in every later step it affects. Outcomes the machine never decides (a create
    of an existing uniqueCode, a hook's refusal) are taken as recorded.
    """
    steps, offset = [], 0
    recorded_state = recorded_properties = None
    simulated: _Participant | None = None
    total = None
    while offset < MAX_REPLAY:
        records, total = history(participant_id, min(_PAGE, MAX_REPLAY - offset), offset)
        if not records:
            break
        for record in records:
            index = offset
            offset += 1
            parsed = _recorded_change(record)
            if parsed is None:
                continue
            kind, change = parsed
            ok = bool(record.get("payloadValidated"))
            if ok:
                recorded_state, recorded_properties = _recorded_entity(record)
            recorded = _side(kind, ok, record.get("errorCode"), recorded_state,
                             recorded_properties)
            if not ok and record.get("errorCode") in _NOT_DECIDED:
                side = _side(kind, False, record.get("errorCode"),
                             simulated.state if simulated else None,
                             simulated.properties if simulated else None)
            else:
                before = None if kind == "create" else simulated
                if kind != "create" and before is None:
                    result = Failure(F.INVALID_STATE_TRANSITION, (Issue(
                        "$", "the draft never created this participant"),))
                else:
                    result = decide(ptype, before.snapshot() if before else None, change)
                simulated = _apply(simulated, result)
                side = _side(kind, result.ok, None if result.ok else result.error_code,
                             simulated.state if simulated else None,
                             simulated.properties if simulated else None)
                side["errors"] = _errors(result)
            differs = any(recorded[k] != side[k] for k in (
                "payloadValidated", "errorCode", "state", "properties"))
            steps.append({"index": index, "sequence": record.get("sequence"),
                          "eventId": (record.get("event") or {}).get("id"),
                          "recorded": recorded, "simulated": side, "differs": differs})
        if total is not None and offset >= total:
            break
    final = ({"state": simulated.state, "properties": simulated.properties}
             if simulated else None)
    return {"steps": steps, "final": final, "differences": sum(s["differs"] for s in steps),
            "truncated": bool(total is not None and total > MAX_REPLAY)}
