"""State timers from stored timestamps: sub-state ttls, and archiving after terminalTTL."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .commands import Command
from .decisions import Change
from .errors import EngineError
from .registry import ParticipantType
from .service import Service

__all__ = ["TIMER_USER", "Timers"]

log = logging.getLogger(__name__)

TIMER_USER = {"id": "state-timer", "name": "State timer", "appId": "participant-service"}


class Timers:
    """Finds due timers with indexed queries and applies them through the service."""

    def __init__(self, types: Mapping[str, ParticipantType], service: Service, batch: int = 100):
        self.types = types
        self.service = service
        self.batch = batch

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
        conn = self.service.store.conn
        due = conn.execute(
            "SELECT tenant_id, id, version, state_entered_at, unique_code FROM participants"
            " WHERE type = ? AND state = ? AND state_entered_at <= ? AND archived_at IS NULL"
            " AND (timer_blocked_version IS NULL OR timer_blocked_version != version)"
            " ORDER BY state_entered_at LIMIT ?",
            (ptype.plural, sub.qualified, now_ms - sub.ttl.seconds * 1000, self.batch),
        ).fetchall()
        for tenant_id, participant_id, version, entered, _code in due:
            command = Command(
                kind="state", tenant_id=tenant_id, participant_id=participant_id,
                # One request id per (participant, version), so two dispatchers cannot both apply
                # it; the '·' keeps it out of the printable-ASCII ids clients can send.
                request_id=f"timer·ttl:{participant_id}:{version}",
                fingerprint=f"ttl:{version}",
                change=Change(destination=sub.ttl.destination), user_info=TIMER_USER,
                if_match=version, timer=True,
                data={"ttl": sub.ttl.text, "fromState": sub.qualified,
                      "toState": sub.ttl.destination, "stateEnteredAt": entered,
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
        marks = ",".join("?" * len(terminal))
        with self.service.store.write() as conn:
            cursor = conn.execute(
                f"UPDATE participants SET archived_at = ? WHERE type = ? AND state IN ({marks})"
                " AND state_entered_at <= ? AND archived_at IS NULL",
                (now_ms, ptype.plural, *terminal, now_ms - definition.terminal_ttl * 1000))
            archived = cursor.rowcount
            if archived:
                log.info("archived %d %s after terminalTTL", archived, ptype.plural)
        return archived
