"""One table from exception to HTTP status and 12-digit code, and the OS1 error envelope."""

from __future__ import annotations

from werkzeug.exceptions import HTTPException

from engine.errors import (
    BatchNotFound,
    DefinitionError,
    InvalidDryRun,
    InvalidQuery,
    Issue,
    ParticipantNotFound,
    PreconditionFailed,
    RequestIdReused,
    RequestInFlight,
    UnknownParticipantType,
    UnstorableText,
)
from engine.storage import StorageConflict, StorageUnavailable

__all__ = ["ApiError", "BadRequest", "Unauthorized", "UnsupportedMediaType", "TooLarge",
           "status_and_code", "HTTP_CODES"]


class ApiError(Exception):
    """An error the web layer raises itself; `issues` become additionalInfo.errors."""

    status = 400
    code = "101170024000"

    def __init__(self, description: str, issues: list[Issue] | None = None):
        super().__init__(description)
        self.description = description
        self.issues = issues or []


class BadRequest(ApiError):
    """The request is malformed: headers, JSON, or the shape the API expects."""

    status, code = 400, "101170024000"


class Unauthorized(ApiError):
    """The access token is missing, unknown, or not valid for this tenant."""

    status, code = 401, "101170024010"


class UnsupportedMediaType(ApiError):
    """The body is not declared as application/json."""

    status, code = 415, "101170024150"


class TooLarge(ApiError):
    """The body is larger than PARTICIPANTS_MAX_BODY_BYTES."""

    status, code = 413, "101170024130"


# exception class -> (status, code); the first matching class wins
TABLE: list[tuple[type[BaseException], int, str]] = [
    (InvalidQuery, 400, "101170024000"),
    (InvalidDryRun, 400, "101170024000"),
    (UnstorableText, 400, "101170024000"),
    (UnknownParticipantType, 404, "101170024041"),
    (ParticipantNotFound, 404, "101170024042"),
    (BatchNotFound, 404, "101170024043"),
    (RequestInFlight, 409, "101170024090"),
    (PreconditionFailed, 412, "101170024120"),
    (RequestIdReused, 422, "101170024220"),
    (StorageUnavailable, 503, "101170025030"),
    (StorageConflict, 503, "101170025030"),  # lost every retry to concurrent writers
    (DefinitionError, 500, "101170025000"),
]

# Codes for statuses Flask raises itself (unknown route, wrong method, ...)
HTTP_CODES = {404: "101170024040", 405: "101170024050", 413: "101170024130",
              400: "101170024000", 415: "101170024150"}
INTERNAL = (500, "101170025000")


def status_and_code(error: BaseException) -> tuple[int, str]:
    if isinstance(error, ApiError):
        return error.status, error.code
    for cls, status, code in TABLE:
        if isinstance(error, cls):
            return status, code
    if isinstance(error, HTTPException) and error.code:
        return error.code, HTTP_CODES.get(error.code, f"10117002{error.code:03d}0")
    return INTERNAL
