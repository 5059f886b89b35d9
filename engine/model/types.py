"""A loaded participant type (its definition with everything compiled once) and the registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from engine.errors import UnknownParticipantType
from engine.model.attributes import AttributeValidator, compile_checks
from engine.model.definitions import Definition
from engine.model.statemachine import StateMachine

__all__ = ["ParticipantType", "Registry"]


@dataclass(frozen=True)
class ParticipantType:
    """A loaded type: its definition with validators and state machine compiled once."""

    definition: Definition
    attributes: AttributeValidator
    machine: StateMachine
    event_data: Mapping[str, tuple]  # event code -> ((DataItem, checks), ...)
    templates: Mapping[str, AttributeValidator]  # template id -> its overrides, compiled

    @classmethod
    def compile(cls, definition: Definition) -> ParticipantType:
        event_data = {code: tuple((item, compile_checks(item)) for item in event.data_validations)
                      for code, event in definition.events.items()}
        templates = {tid: AttributeValidator(definition.plural, t.attributes)
                     for tid, t in definition.templates.items()}
        return cls(definition, AttributeValidator(definition.plural, definition.attributes),
                   StateMachine(definition), MappingProxyType(event_data),
                   MappingProxyType(templates))

    @property
    def plural(self) -> str:
        return self.definition.plural


class Registry(Mapping):
    """The loaded participant types by plural name."""

    def __init__(self, types: dict[str, ParticipantType]):
        self._types = dict(types)

    def __getitem__(self, plural: str) -> ParticipantType:
        try:
            return self._types[plural]
        except KeyError:
            raise UnknownParticipantType(plural) from None

    def __contains__(self, plural) -> bool:
        return plural in self._types

    def get(self, plural: str, default=None):
        return self._types.get(plural, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)
