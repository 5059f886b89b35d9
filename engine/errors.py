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


class ParticipantNotFound(EngineError):
    """No participant with that id exists in this tenant."""

    def __init__(self, participant_id: str):
        self.participant_id = participant_id
        super().__init__(f"participant '{participant_id}' not found")


class BatchNotFound(EngineError):
    """No batch with that id exists for this participant type in this tenant."""

    def __init__(self, batch_id: str):
        self.batch_id = batch_id
        super().__init__(f"batch '{batch_id}' not found")


class PreconditionFailed(EngineError):
    """If-Match named a version that is no longer the participant's."""

    def __init__(self, expected: int, actual: int):
        self.expected, self.actual = expected, actual
        super().__init__(f"If-Match expects version {expected}, but the participant is at "
                         f"version {actual}")


class RequestInFlight(EngineError):
    """A request with this X-COREOS-REQUEST-ID is still being processed."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(f"request '{request_id}' is still being processed; retry later")


class RequestIdReused(EngineError):
    """This X-COREOS-REQUEST-ID was already used for a different request."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(f"X-COREOS-REQUEST-ID '{request_id}' was already used for a different "
                         "request; use a new request id")


class UnstorableText(EngineError):
    """A string or key of the request holds U+0000 (NUL), which no backend stores (PostgreSQL's
    text refuses it), so both refuse it alike."""

    def __init__(self, path: str):
        self.path = path
        self.issues = [Issue(path, "contains U+0000 (NUL), which the service does not store")]
        super().__init__(f"{path} contains U+0000 (NUL), which the service does not store")


class InvalidQuery(EngineError):
    """A list query names something that cannot be queried, or is malformed."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("invalid query: " + "; ".join(f"{i.path} {i.message}" for i in issues))


class InvalidDryRun(EngineError):
    """A dry run that cannot start (a start state the type lacks, replay with steps…)."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("invalid dry run: " + "; ".join(f"{i.path} {i.message}" for i in issues))
