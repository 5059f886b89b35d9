"""State timers from stored timestamps: sub-state ttls, and archiving after terminalTTL."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from engine.errors import EngineError
from engine.model.commands import Command
from engine.model.decisions import Change
from engine.model.types import ParticipantType
from engine.service.participants import Service

__all__ = ["TIMER_USER", "Timers"]

log = logging.getLogger(__name__)

TIMER_USER = {"id": "state-timer", "name": "State timer", "appId": "participant-service"}


class Timers:
    """Finds due timers with indexed queries and applies them through the service."""

    def __init__(self, types: Mapping[str, ParticipantType], service: Service, batch: int = 100):
        self.types = types
        self.service = service
        self.batch = batch

    def _waits(self) -> list[tuple[str, str, int, bool]]:
        """(type, state, ms to wait, whether a blocked timer is skipped) of every timer."""
        waits = []
        for ptype in self.types.values():
            definition = ptype.definition
            for sub in definition.sub_states.values():
                if sub.ttl is not None:
                    waits.append((ptype.plural, sub.qualified, sub.ttl.seconds * 1000, True))
                if sub.terminal and definition.terminal_ttl is not None:
                    waits.append((ptype.plural, sub.qualified, definition.terminal_ttl * 1000,
                                  False))
        return waits

    def next_due(self, uow, after: int | None = None) -> int | None:
        """When the earliest timer is due (epoch ms), or None if no participant waits on one;
        with `after`, the earliest due later than that.

        Indexed reads of live participants by type, state and entry time, and no write lock:
        the dispatcher asks this before deciding whether to run the timers."""
        waits = self._waits()
        return uow.participants.next_timer(waits, after) if waits else None

    def run_due(self, now: float) -> int:
        """Apply every ttl and terminalTTL that is due at `now` (epoch seconds)."""
        now_ms = int(now * 1000)
        done = 0
        for ptype in self.types.values():
            for sub in ptype.definition.sub_states.values():
                if sub.ttl is not None:
                    done += self._expire(ptype, sub, now_ms)
            done += self._archive(ptype, now_ms)
        return done

    def _expire(self, ptype: ParticipantType, sub, now_ms: int) -> int:
        with self.service.storage.read() as uow:
            due = uow.participants.due_timers(ptype.plural, sub.qualified,
                                              now_ms - sub.ttl.seconds * 1000, self.batch)
        for timer in due:
            participant_id, version = timer.participant_id, timer.version
            command = Command(
                kind="state", tenant_id=timer.tenant_id, participant_id=participant_id,
                # One request id per (participant, version), so two dispatchers cannot both apply
                # it; the '·' keeps it out of the printable-ASCII ids clients can send.
                request_id=f"timer·ttl:{participant_id}:{version}",
                fingerprint=f"ttl:{version}",
                change=Change(destination=sub.ttl.destination), user_info=TIMER_USER,
                if_match=version, timer=True,
                data={"ttl": sub.ttl.text, "fromState": sub.qualified,
                      "toState": sub.ttl.destination, "stateEnteredAt": timer.state_entered_at,
                      "source": {"appId": "participant-service", "userId": "state-timer"}},
            )
            try:
                self.service.execute(ptype, command, lambda pid, record, state: (202, ""))
            except EngineError:
                continue  # a client changed it meanwhile: the compare-and-set lets one win
        return len(due)

    def _archive(self, ptype: ParticipantType, now_ms: int) -> int:
        definition = ptype.definition
        if definition.terminal_ttl is None:
            return 0
        terminal = [name for name, sub in definition.sub_states.items() if sub.terminal]
        if not terminal:
            return 0
        before = now_ms - definition.terminal_ttl * 1000
        storage = self.service.storage
        with storage.read() as uow:
            if not uow.participants.archivable(ptype.plural, terminal, before):
                return 0  # nothing to archive: no write lock taken to find that out
        with storage.write() as uow:
            archived = uow.participants.archive(ptype.plural, terminal, before, now_ms)
        if archived:
            log.info("archived %d %s after terminalTTL", archived, ptype.plural)
        return archived
