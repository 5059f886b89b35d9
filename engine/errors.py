"""The engine's exception hierarchy; structured details live in attributes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a request, with the JSON path it concerns."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class EngineError(Exception):
    """Base class of every error the engine raises."""


class DefinitionError(EngineError):
    """The machine files have lint errors; the registry refuses to load them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "machine definitions have errors:\n" + "\n".join(f"  {p}" for p in problems)
        )


class UnknownParticipantType(EngineError):
    """No participant type with that plural name is loaded."""

    def __init__(self, plural: str):
        self.plural = plural
        super().__init__(f"unknown participant type '{plural}'")
