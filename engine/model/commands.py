"""Write requests as commands: built from a request body, and rebuilt after an onRequest hook."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.errors import Issue
from engine.model.conventions import CORE_EDITABLE, REASON_CODE
from engine.model.decisions import Change
from engine.model.strictjson import nul_path

__all__ = ["Command", "build", "replace_fields"]

# Fields an onRequest hook may replace (never ids, codes of the transition, or core metadata).
REPLACEABLE = {
    "create": ("properties", *CORE_EDITABLE),
    "update": ("properties", *CORE_EDITABLE),
    "state": ("data", "reasonCode"),
}


@dataclass(frozen=True)
class Command:
    """One write request, already checked for shape."""

    kind: str                        # "create", "update" or "state"
    tenant_id: str
    request_id: str
    fingerprint: str
    change: Change
    body: dict = field(default_factory=dict)
    participant_id: str | None = None
    unique_code: str | None = None   # create only
    user_info: dict | None = None
    callback: dict | None = None     # {url, meta}
    callback_secret: str | None = None
    token: str | None = None         # the caller's access token, for hook header templates
    on_request: dict | None = None
    on_error: dict | None = None
    if_match: int | None = None
    data: dict = field(default_factory=dict)   # what the request changed, for the event
    hook_issue: Issue | None = None  # the onRequest hook rejected the request
    timer: bool = False              # a sub-state ttl expiring, not a client
    batch_id: str | None = None      # an item of this batch ...
    batch_item: int | None = None    # ... at this index: its outcome is recorded with its event


def _to_ms(timestamp: float) -> int:
    """Epoch seconds, or milliseconds when the value is above 10^11."""
    return int(timestamp if timestamp > 1e11 else timestamp * 1000)


def build(kind: str, body: dict, **context) -> Command:
    """The command for a create, update or state-event body (its shape already validated)."""
    if kind == "state":
        change = Change(event_code=body["eventCode"], reason_code=body.get("reasonCode"),
                        event_data=body.get("data") or {}, event_path="$")
        data = {"eventCode": body["eventCode"], "reasonCode": body.get("reasonCode"),
                "timestamp": _to_ms(body["timestamp"]), "data": body.get("data") or {},
                "source": body["source"]}
    else:
        transition = body.get("stateTransition") or {}
        core = {k: body[k] for k in CORE_EDITABLE if k in body}
        change = Change(properties=body.get("properties") or {}, core=core,
                        event_code=transition.get("eventCode"),
                        reason_code=transition.get("reasonCode"))
        data = {"properties": body.get("properties") or {}, **core}
        if transition:
            data.update(eventCode=transition.get("eventCode"),
                        reasonCode=transition.get("reasonCode"))
    return Command(
        kind=kind, change=change, body=body, data=data,
        unique_code=body.get("uniqueCode") if kind == "create" else None,
        callback=body.get("callback"), on_request=body.get("onRequest"),
        on_error=body.get("onError"), **context,
    )


def _replacement_issues(kind: str, fields: dict) -> list[str]:
    problems = []
    for name, value in fields.items():
        if name in ("properties", "data"):
            if not isinstance(value, dict):
                problems.append(f"{name} must be an object")
        elif name == "reasonCode":
            if value is not None and not (isinstance(value, str) and REASON_CODE.match(value)):
                problems.append("reasonCode must look like R-nnnn")
        elif value is not None and not (isinstance(value, str) and len(value) <= 256):
            problems.append(f"{name} must be text of at most 256 characters, or null")
        if (path := nul_path(value, name)) is not None:  # as a request carrying one is a 400
            problems.append(f"{path} holds U+0000 (NUL), which the service does not store")
    return problems


def replace_fields(command: Command, answer) -> tuple[Command, dict]:
    """Apply an onRequest hook's `{"data": {...}}` answer; returns the command and what changed.

    Only the fields of REPLACEABLE are taken; anything else in the answer is ignored and listed.
    A replacement of the wrong type rejects the request as the hook's failure.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
        return command, {}
    offered = answer["data"]
    allowed = REPLACEABLE[command.kind]
    taken = {k: v for k, v in offered.items() if k in allowed}
    record = {"replaced": taken, "ignored": sorted(k for k in offered if k not in allowed)}
    problems = _replacement_issues(command.kind, taken)
    if problems:
        issue = Issue("$.onRequest", "the onRequest hook answered with an invalid replacement: "
                      + "; ".join(problems))
        return replace(command, hook_issue=issue), record
    if not taken:
        return command, record
    rebuilt = build(command.kind, {**command.body, **taken}, **{
        k: getattr(command, k) for k in (
            "tenant_id", "request_id", "fingerprint", "participant_id", "user_info",
            "callback_secret", "token", "if_match", "batch_id", "batch_item")
    })
    return rebuilt, record
