"""Simulated participants: a start and steps, or a recorded history, decided without storage.

Every step goes through `decide`, the very function real writes use, with the change built by
`commands.build` from the same request shapes. A failed step leaves the participant as it was,
exactly as a real write would, and the next step starts from there. Used by the dry-run API and
by the linter's scenario files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.errors import Issue
from engine.model import commands
from engine.model import failures as F
from engine.model.conventions import CORE_EDITABLE
from engine.model.decisions import Change, Failure, Outcome, Snapshot, decide
from engine.model.events import command_name
from engine.model.types import ParticipantType

__all__ = ["Simulated", "create", "initial", "replay", "run_steps"]

# Outcomes the machine does not decide: a create of an existing uniqueCode, a refusing hook.
NOT_DECIDED = {F.ALREADY_EXISTS.code, F.HOOK_REJECTED.code}


@dataclass
class Simulated:
    """A participant as the simulation sees it."""

    state: str
    properties: dict
    core: dict

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, self.properties, self.core)


def errors(result: Outcome | Failure) -> list[dict]:
    return [] if result.ok else [i.as_dict() for i in result.issues]


def outcome(ptype: ParticipantType, kind: str, before: str | None,
            result: Outcome | Failure, after: Simulated | None) -> dict:
    """A step's outcome in the dry-run answer's shape."""
    return {
        "from": before,
        "to": after.state if after else None,
        "commandName": command_name(kind, result.ok),
        "payloadValidated": result.ok,
        "reason": "" if result.ok else result.reason,
        "errorCode": None if result.ok else result.error_code,
        "errors": errors(result),
        "properties": after.properties if after else None,
        "availableEvents": ptype.machine.triggers(after.state) if after else [],
    }


def _apply(current: Simulated | None, result: Outcome | Failure) -> Simulated | None:
    """The participant after the result: unchanged by a failure, as a real write leaves it."""
    if not result.ok:
        return current
    return Simulated(result.state, dict(result.properties), dict(result.core))


def step_kind(step: Mapping) -> str:
    """'state' for a StateEventRequest-shaped step, else 'update' or 'combined'."""
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


def initial(ptype: ParticipantType) -> Simulated:
    """The initial state with the attributes' defaults (empty if they alone do not validate)."""
    result = decide(ptype, None, Change())
    if result.ok:
        return Simulated(result.state, dict(result.properties), {})
    return Simulated(ptype.definition.initial_state, {}, {})


def create(ptype: ParticipantType, body: Mapping, *, exists: bool = False,
           path: str = "$.start.create") -> tuple[Simulated | None, dict]:
    """A create decided as a real one (`exists`: its uniqueCode is taken), and its outcome."""
    definition = ptype.definition
    if exists:
        result = Failure(F.ALREADY_EXISTS, (Issue(f"{path}.uniqueCode", (
            f"a {definition.singular} with uniqueCode '{body['uniqueCode']}' already exists")),))
    else:
        change = commands.build("create", dict(body), tenant_id="", request_id="",
                                fingerprint="").change
        result = decide(ptype, None, change)
    current = _apply(None, result)
    answer = outcome(ptype, "create", None, result, current)
    del answer["from"]
    return current, answer


def run_steps(ptype: ParticipantType, current: Simulated, steps: Iterable[Mapping]
              ) -> tuple[list[dict], Simulated]:
    """Each step's outcome (with its index), and the participant after the last."""
    answers = []
    for index, step in enumerate(steps):
        kind = step_kind(step)
        result = decide(ptype, current.snapshot(), _change(kind, step))
        before, current = current.state, _apply(current, result)
        answers.append({"index": index, **outcome(ptype, kind, before, result, current)})
    return answers, current


# -- replaying a recorded history -------------------------------------------------------------

def _recorded_change(record: Mapping) -> tuple[str, Change] | None:
    """The kind and change of a recorded event's request; None for a kind no request makes."""
    name, data = record.get("commandName", ""), record.get("data") or {}
    core = {k: data[k] for k in CORE_EDITABLE if k in data}
    if name.startswith("ParticipantCreation"):
        return "create", Change(properties=data.get("properties") or {}, core=core)
    if name.startswith(("ParticipantAttributeAndStateUpdation", "ParticipantUpdation")):
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


def _side(kind: str, ok: bool, error_code: str | None, participant: Simulated | None) -> dict:
    return {"commandName": command_name(kind, ok), "payloadValidated": ok,
            "errorCode": error_code, "state": participant.state if participant else None,
            "properties": participant.properties if participant else None}


def _recorded_after(record: Mapping, before: Simulated | None) -> Simulated | None:
    entity = record.get("entity") or {}
    if not record.get("payloadValidated") or not entity:
        return before
    return Simulated(entity.get("state"), {**(entity.get("indexed_attributes") or {}),
                                           **(entity.get("non_indexed_attributes") or {})}, {})


def replay(ptype: ParticipantType, records: Iterable[Mapping]) -> dict:
    """Every recorded request, oldest first: its recorded outcome and `ptype`'s, side by side.

    The simulated participant evolves by the simulated outcomes, so a change early in the
    history shows in every later step it affects. Outcomes the machine never decides (a create
    of an existing uniqueCode, a hook's refusal) are taken as recorded.
    """
    steps = []
    recorded: Simulated | None = None
    simulated: Simulated | None = None
    for index, record in enumerate(records):
        parsed = _recorded_change(record)
        if parsed is None:
            continue
        kind, change = parsed
        ok = bool(record.get("payloadValidated"))
        recorded = _recorded_after(record, recorded)
        was = _side(kind, ok, record.get("errorCode"), recorded)
        if not ok and record.get("errorCode") in NOT_DECIDED:
            now = _side(kind, False, record.get("errorCode"), simulated)
        else:
            if kind != "create" and simulated is None:
                result = Failure(F.INVALID_STATE_TRANSITION, (Issue(
                    "$", "this machine never created the participant"),))
            else:
                result = decide(ptype, None if kind == "create" else simulated.snapshot(),
                                change)
            simulated = _apply(simulated, result)
            now = _side(kind, result.ok, None if result.ok else result.error_code, simulated)
            now["errors"] = errors(result)
        differs = any(was[k] != now[k] for k in (
            "payloadValidated", "errorCode", "state", "properties"))
        steps.append({"index": index, "sequence": record.get("sequence"),
                      "eventId": (record.get("event") or {}).get("id"),
                      "recorded": was, "simulated": now, "differs": differs})
    final = {"state": simulated.state, "properties": simulated.properties} if simulated else None
    return {"steps": steps, "final": final, "differences": sum(s["differs"] for s in steps)}
