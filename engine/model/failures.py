"""The catalogue of business failures: a stable 12-digit error code and a human reason each."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CATALOGUE", "FailureKind"]


@dataclass(frozen=True, slots=True)
class FailureKind:
    code: str
    reason: str
    summary: str


CATALOGUE: dict[str, FailureKind] = {}


def _kind(name: str, code: str, reason: str, summary: str) -> FailureKind:
    assert len(code) == 12 and code.isdigit() and code not in {k.code for k in CATALOGUE.values()}
    CATALOGUE[name] = kind = FailureKind(code, reason, summary)
    return kind


# Listed in precedence order: when a request has several kinds of problem, the first one found
# here names the failure (its reason and errorCode); the `errors` list still holds them all.
UNKNOWN_EVENT = _kind(
    "UNKNOWN_EVENT", "101170021091", "unknown event",
    "The event code is not declared for this participant type.")
INVALID_STATE_TRANSITION = _kind(
    "INVALID_STATE_TRANSITION", "101170021090", "invalid state transition",
    "The event has no transition from the participant's current state.")
REASON_NOT_ALLOWED = _kind(
    "REASON_NOT_ALLOWED", "101170021092", "reason code not allowed",
    "The reason code is not declared, or not among the event's reasonCodes.")
INVALID_EVENT_DATA = _kind(
    "INVALID_EVENT_DATA", "101170021093", "invalid event data",
    "The `data` of a state event fails the event's dataValidations.")
UNKNOWN_ATTRIBUTE = _kind(
    "UNKNOWN_ATTRIBUTE", "101170021002", "unknown attribute",
    "`properties` names an attribute the type does not declare.")
INVALID_ATTRIBUTES = _kind(
    "INVALID_ATTRIBUTES", "101170021001", "invalid attributes",
    "An attribute value fails its dataType or validation, or a required one is missing.")
INVALID_CATEGORY = _kind(
    "INVALID_CATEGORY", "101170021003", "category not allowed",
    "category or subCategory is not one the type declares.")
INVALID_OWNER = _kind(
    "INVALID_OWNER", "101170021004", "owner not allowed",
    "The owner id does not start with one of the type's allowedOwners.")
UNKNOWN_TEMPLATE = _kind(
    "UNKNOWN_TEMPLATE", "101170021030", "unknown template",
    "templateId names no template of this participant type.")
TEMPLATE_MISMATCH = _kind(
    "TEMPLATE_MISMATCH", "101170021031", "template does not match the category",
    "The template applies to another category or sub-category than the participant's.")
GUARD_FAILED = _kind(
    "GUARD_FAILED", "101170021094", "transition guard failed",
    "The transition's guard does not hold on the properties after the update.")
INVARIANT_FAILED = _kind(
    "INVARIANT_FAILED", "101170021095", "state invariant failed",
    "The destination sub-state's `requires` does not hold on the properties after the update.")
ALREADY_EXISTS = _kind(
    "ALREADY_EXISTS", "101170021010", "participant already exists",
    "A participant with this uniqueCode already exists for this type and tenant.")
HOOK_REJECTED = _kind(
    "HOOK_REJECTED", "101170021020", "onRequest hook rejected the request",
    "The onRequest hook answered with a status outside acceptableStatusCodes, or failed.")

PRECEDENCE = tuple(CATALOGUE.values())
