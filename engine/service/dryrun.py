"""Dry runs (SPEC §7): a start and steps, or a stored history, decided and never written.

The decisions are engine.model.simulation's (the write path's own `decide`); this module adds
what needs the tenant's data: a start from a stored participant, a create that meets an
existing uniqueCode, a replay of a stored history; and a draft machine instead of the loaded
one, linted and compiled by engine.loading.drafts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidDryRun, Issue, ParticipantNotFound, UnknownParticipantType
from engine.loading.drafts import compile_draft
from engine.model import simulation
from engine.model.simulation import Simulated
from engine.model.types import ParticipantType
from engine.storage.interface import StoredParticipant

__all__ = ["DryRun", "MAX_REPLAY", "run"]

MAX_REPLAY = 10_000      # events of one history re-decided by one replay
_PAGE = 500

Lookup = Callable[[str], StoredParticipant | None]
History = Callable[[str, int, int], tuple[list[dict], int]]


@dataclass(frozen=True, slots=True)
class DryRun:
    """The answer's `data`, and the type the steps were decided under (None when a draft
    machine has lint errors)."""

    data: dict
    ptype: ParticipantType | None


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
        pages = _Pages(participant_id, history)
        answer = simulation.replay(ptype, pages)
        return DryRun({"valid": True, "lint": lint, **answer,
                       "truncated": pages.truncated}, ptype)

    data: dict = {"valid": True, "lint": lint}
    start = body.get("start")
    current: Simulated | None
    if start is None:
        current = simulation.initial(ptype)
    elif "create" in start:
        current, data["start"] = simulation.create(
            ptype, start["create"], exists=exists(start["create"]["uniqueCode"]))
    elif "participantId" in start:
        found = stored(start["participantId"])
        current = Simulated(found.state, dict(found.properties), dict(found.core))
    else:
        if start["state"] not in ptype.definition.sub_states:
            known = ", ".join(ptype.definition.sub_states)
            raise InvalidDryRun([Issue("$.start.state", (
                f"'{start['state']}' is not a state of {plural} (states: {known})"))])
        current = Simulated(start["state"], dict(start.get("properties") or {}), {})
    data["steps"], data["final"] = [], None
    if current is not None:
        data["steps"], current = simulation.run_steps(ptype, current, body.get("steps") or ())
        data["final"] = {"state": current.state, "properties": current.properties}
    return DryRun(data, ptype)


class _Pages:
    """The participant's events, oldest first, read a page at a time, at most MAX_REPLAY."""

    def __init__(self, participant_id: str, history: History):
        self.participant_id, self.history = participant_id, history
        self.truncated = False

    def __iter__(self) -> Iterator[dict]:
        offset = 0
        while offset < MAX_REPLAY:
            records, total = self.history(self.participant_id,
                                          min(_PAGE, MAX_REPLAY - offset), offset)
            yield from records
            offset += len(records)
            if not records or offset >= total:
                return
        self.truncated = True
