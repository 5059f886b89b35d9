"""The participants blueprint: thin views that parse, call the service, shape the response."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from engine.delivery.outbound import OutboundRefused, check_url
from engine.errors import Issue, ParticipantNotFound
from engine.model import commands
from engine.model.conventions import compact_json
from engine.service import idempotency
from engine.service.queries import LIMITS, OPERATORS, ListQuery

from . import views
from .errors import BadRequest
from .http import OPENAPI, Caller, authenticate, if_match, read_json, strict_loads, validate

bp = Blueprint("participants", __name__)


dumps = compact_json


def echo(body=None) -> dict:
    """The request as the response's `request` member."""
    return {"uri": request.path, "method": request.method,
            "queryString": request.query_string.decode("utf-8", "replace"), "body": body}


def respond(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(dumps({"data": data, "request": echo()}),
                    status=status, mimetype="application/json", headers=headers)


def _state():
    return current_app.extensions["participants"]


def _caller() -> Caller:
    return authenticate(request, _state().tokens)


def _type(plural: str):
    return _state().types[plural]


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,12}", raw) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}",
                         [Issue(f"$.{name}", f"must be a whole number from {low} to {high}")])
    return int(raw)


# -- participant types ------------------------------------------------------------------------

@bp.get("/participant-types")
def list_types():
    _caller()
    types = _state().types
    return respond({"participantTypes": [views.participant_type(t.definition)
                                         for t in types.values()]})


@bp.get("/participant-types/<plural>")
def get_type(plural):
    _caller()
    ptype = _type(plural)
    return respond(views.participant_type(ptype.definition, ptype.machine.diagram()))


@bp.post("/participant-types/<plural>/dry-run")
def dry_run(plural):
    """SPEC §7: decide a start and steps (or replay a history) without writing anything."""
    caller = _caller()
    body = read_json(request)
    validate("DryRunRequest", body)
    loaded = _state().types.get(plural)
    if loaded is None and "machine" not in body:
        _type(plural)  # 404: no such type, and no draft of it
    result = _state().service.dry_run(caller.tenant_id, plural, body, loaded)
    return Response(dumps({"data": result.data, "request": echo(body)}),
                    mimetype="application/json")


@bp.get("/openapi.json")
def openapi():
    return Response(dumps(OPENAPI), mimetype="application/json")


# -- reads ------------------------------------------------------------------------------------

@bp.get("/<plural>/<pid>")
def get_participant(plural, pid):
    caller = _caller()
    _type(plural)
    p = _state().service.get(caller.tenant_id, _own(plural, pid))
    return respond(views.participant(p), headers={"ETag": f'"{p.version}"'})


@bp.get("/<plural>/<pid>/state")
def get_state(plural, pid):
    caller = _caller()
    ptype = _type(plural)
    p = _state().service.get(caller.tenant_id, _own(plural, pid))
    return respond(views.state(ptype.definition, p), headers={"ETag": f'"{p.version}"'})


@bp.get("/<plural>/<pid>/events")
def get_events(plural, pid):
    caller = _caller()
    _type(plural)
    limit = _int_arg("limit", 50, 1, LIMITS.limit)
    offset = _int_arg("offset", 0, 0, LIMITS.offset)
    records, total = _state().service.history(caller.tenant_id, _own(plural, pid), limit, offset)
    return respond({"events": records, "meta": {"totalElements": total}})


@bp.get("/<plural>")
def list_participants(plural):
    caller = _caller()
    ptype = _type(plural)
    known = {"query", "limit", "offset", "sortKey", "sortBy", "select[]", "select"}
    unknown = sorted(set(request.args) - known)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)}",
                         [Issue(f"$.{k}", "unknown query parameter") for k in unknown])
    clauses = {}
    raw = request.args.get("query")
    if raw and len(raw) > LIMITS.query_chars:  # refused before it is parsed
        raise BadRequest(f"query is longer than {LIMITS.query_chars:,} characters",
                         [Issue("$.query", f"has {len(raw):,} characters; at most "
                                           f"{LIMITS.query_chars:,}")])
    if raw:
        try:
            clauses = strict_loads(raw)
        except ValueError as error:
            raise BadRequest(f"query is not valid JSON: {error}",
                             [Issue("$.query", str(error))]) from None
        if not isinstance(clauses, dict):
            raise BadRequest("query must be a JSON object", [Issue("$.query", "must be an object")])
        bad = sorted(set(clauses) - set(OPERATORS))
        if bad:
            raise BadRequest(f"unknown query operator(s): {', '.join(bad)}",
                             [Issue(f"$.query.{k}", f"unknown operator; use one of "
                                                    f"{', '.join(OPERATORS)}") for k in bad])
        validate("Query", clauses, "$.query")
    sort_by = request.args.get("sortBy", "desc")
    if sort_by not in ("asc", "desc"):
        raise BadRequest("sortBy must be asc or desc", [Issue("$.sortBy", "must be asc or desc")])
    select = request.args.getlist("select[]") + request.args.getlist("select")
    query = ListQuery(clauses, _int_arg("limit", 50, 1, LIMITS.limit),
                      _int_arg("offset", 0, 0, LIMITS.offset),
                      request.args.get("sortKey", "createdAt"), sort_by, tuple(select))
    rows, total = _state().service.search(ptype, caller.tenant_id, query)
    return respond({"participants": [views.participant(p, select) for p in rows],
                    "meta": {"totalElements": total}})


def _own(plural: str, pid: str) -> str:
    """The id, if it can name a participant of this type (ids start with the plural)."""
    if not pid.startswith(f"{plural}:"):
        raise ParticipantNotFound(pid)
    return pid


# -- writes -----------------------------------------------------------------------------------

def url_issues(body: dict) -> list[Issue]:
    """Callback and hook URLs that are not http(s) or, unless allowed, are private."""
    issues = []
    for field in ("callback", "onRequest", "onError"):
        url = (body.get(field) or {}).get("url")
        if url is None:
            continue
        try:
            check_url(url, allow_private=_state().allow_private)
        except OutboundRefused as error:
            issues.append(Issue(f"$.{field}.url", str(error)))
    return issues


def _check_urls(body: dict) -> None:
    """Callback and hook URLs must be http(s) and, unless allowed, not private (400)."""
    issues = url_issues(body)
    if issues:
        raise BadRequest("; ".join(i.message for i in issues), issues)


def _write(kind: str, plural: str, schema: str, pid: str | None = None) -> Response:
    caller = _caller()
    ptype = _type(plural)
    expected = if_match(request) if kind != "create" else None
    body = read_json(request)
    validate(schema, body)
    _check_urls(body)
    request_echo = echo(body)
    command = commands.build(
        kind, body, tenant_id=caller.tenant_id, request_id=caller.request_id,
        fingerprint=idempotency.fingerprint(request.method, request.path, body),
        participant_id=_own(plural, pid) if pid else None, user_info=caller.user_info,
        callback_secret=caller.callback_secret, token=caller.token, if_match=expected,
    )

    def render(participant_id: str, record: dict, state: str | None) -> tuple[int, str]:
        event = views.event_summary(record, state)
        return 202, dumps({"data": {"id": participant_id, "event": event},
                           "request": request_echo})

    result = _state().service.execute(ptype, command, render)
    return Response(result.body, status=result.status, mimetype="application/json")


@bp.post("/<plural>")
def create(plural):
    return _write("create", plural, "CreateRequest")


@bp.put("/<plural>/<pid>")
def update(plural, pid):
    return _write("update", plural, "UpdateRequest", pid)


@bp.put("/<plural>/<pid>/state/event")
def transition(plural, pid):
    return _write("state", plural, "StateEventRequest", pid)
