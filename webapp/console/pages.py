"""The reading pages: participant types, one type, a type's participants, one participant."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, render_template, request, url_for

from engine.errors import InvalidQuery, Issue, ParticipantNotFound
from engine.lint.runner import Problem, lint_paths
from engine.model.definitions import Attribute, Definition
from engine.model.types import ParticipantType
from engine.service.queries import LIMITS, ListQuery

from .blueprint import bp, console_state, participants, tenant
from .diagram import render_svg

__all__ = ["PAGE_SIZE", "HISTORY_PAGE_SIZE", "offset_arg", "participant_type"]

PAGE_SIZE = 25
HISTORY_PAGE_SIZE = 50
# Ids are `{plural}:{uuid}`; anything else (control characters, huge texts) names nobody.
_PARTICIPANT_ID = re.compile(r"([a-z][a-z0-9]{2,31}):[^\x00-\x20\x7f]{1,256}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_SCALARS = ("string", "integer", "number", "boolean")


class BadArgument(InvalidQuery):
    """A page's query parameter cannot be used; `issues` say which and why."""


def participant_type(plural: str) -> ParticipantType:
    """The loaded type (UnknownParticipantType, a 404 page, for anything else)."""
    return participants().types[plural]


def offset_arg(limit: int) -> int:
    """The page's `offset` parameter: a whole number from 0 (BadArgument otherwise)."""
    raw = request.args.get("offset", "0")
    if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) > LIMITS.offset:
        raise BadArgument([Issue("offset", f"must be a whole number from 0 to "
                                           f"{LIMITS.offset:,}")])
    return int(raw)


def _lint() -> dict[str, list[Problem]]:
    """Problems of the machine files by resolved path: linted once per process (the loaded
    files lint clean of errors, or the service would not have started)."""
    def run():
        found: dict[str, list[Problem]] = {}
        for problem in lint_paths([current_app.config["PARTICIPANTS_MACHINES"]]):
            found.setdefault(str(Path(problem.file).resolve()), []).append(problem)
        return found

    return console_state().once("lint", run)


def _problems_of(definition: Definition) -> list[Problem]:
    if not definition.source:
        return []
    return _lint().get(str(Path(definition.source).resolve()), [])


@bp.get("/")
def types():
    rows = []
    for ptype in participants().types.values():
        definition = ptype.definition
        problems = _problems_of(definition)
        rows.append({"definition": definition,
                     "file": Path(definition.source).name if definition.source else None,
                     "errors": [p for p in problems if p.severity == "error"],
                     "warnings": [p for p in problems if p.severity != "error"]})
    return render_template("console/types.html", rows=rows)


@dataclass(frozen=True, slots=True)
class _Move:
    """One row of the transition table (the diagram's text equivalent)."""

    source: str
    event: str | None
    description: str
    guard: str
    destination: str


def _moves(definition: Definition) -> list[_Move]:
    moves = []
    for sub in definition.sub_states.values():
        for t in sub.transitions:
            event = definition.events.get(t.event_code)
            guard = "—"
            if t.guard is not None:
                guard = t.guard.description or "a guard on the properties"
                guard += " (exclusive)" if t.guard.exclusive else ""
            moves.append(_Move(sub.qualified, t.event_code, event.description if event else "",
                               guard, t.destination))
        if sub.ttl is not None:
            moves.append(_Move(sub.qualified, None, f"after {sub.ttl.text} in the sub-state",
                               "—", sub.ttl.destination))
    return moves


def _number(value) -> str:
    """A bound as written: 40000, not 40000.0 or 4e+04."""
    try:
        return str(int(value)) if float(value).is_integer() else str(value)
    except OverflowError:
        return str(value)


def _validation(attribute: Attribute) -> list[str]:
    """The attribute's checks in words."""
    rules = []
    if attribute.regex is not None:
        rules.append(f"matches {attribute.regex}")
    if attribute.min is not None or attribute.max is not None:
        what = {"string": "length", "array": "items"}.get(attribute.data_type, "value")
        low = "" if attribute.min is None else f"{_number(attribute.min)} ≤ "
        high = "" if attribute.max is None else f" ≤ {_number(attribute.max)}"
        rules.append(f"{low}{what}{high}")
    if attribute.value_one_of is not None:
        rules.append("one of " + ", ".join(map(str, attribute.value_one_of)))
    if attribute.schema is not None:
        rules.append("a JSON Schema")
    return rules


@bp.get("/types/<plural>")
def type_page(plural):
    ptype = participant_type(plural)
    definition = ptype.definition
    return render_template("console/type.html", ptype=ptype, definition=definition,
                           diagram=render_svg(ptype), moves=_moves(definition),
                           validation=_validation, problems=_problems_of(definition))


# -- a type's participants ---------------------------------------------------------------------

def _filter_value(attribute: Attribute, text: str):
    """The typed value an exact-match filter on `attribute` compares with; ValueError says why
    the text cannot be one."""
    if len(text) > LIMITS.text:
        raise ValueError(f"has {len(text):,} characters; at most {LIMITS.text:,}")
    if attribute.data_type == "boolean":
        if text not in ("true", "false"):
            raise ValueError("must be true or false")
        return text == "true"
    if attribute.data_type == "integer":
        if not _INTEGER.fullmatch(text):
            raise ValueError("must be a whole number")
        return int(text)
    if attribute.data_type == "number":
        if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
            raise ValueError("must be a number")
        return int(text) if _INTEGER.fullmatch(text) else float(text)
    if "\x00" in text:
        raise ValueError("contains U+0000 (NUL)")
    return text


def _filters(definition: Definition) -> tuple[dict, list[dict], list[Issue]]:
    """The filter form's values as given, the term clauses they make, and what is wrong."""
    given, clauses, issues = {}, [], []
    state = request.args.get("state", "")
    given["state"] = state
    if state:
        if state in definition.sub_states:
            clauses.append({"key": "state", "value": state})
        else:
            issues.append(Issue("state", "is not a sub-state of this type"))
    for name in definition.indexed_attributes:
        attribute = definition.attributes[name]
        if attribute.data_type not in _SCALARS:
            continue
        text = request.args.get(f"attr.{name}", "")
        given[name] = text
        if text == "":
            continue
        try:
            clauses.append({"key": name, "value": _filter_value(attribute, text)})
        except ValueError as error:
            issues.append(Issue(name, str(error)))
    return given, clauses, issues


def _page_url(endpoint: str, offset: int, **values) -> str:
    """This page at another offset, with the same filters (and nothing else of the query)."""
    kept = {k: v for k, v in request.args.items() if k == "state" or k.startswith("attr.")}
    return url_for(endpoint, **{**kept, **values, "offset": offset})


@bp.get("/types/<plural>/participants")
def participants_page(plural):
    ptype = participant_type(plural)
    definition = ptype.definition
    given, clauses, issues = _filters(definition)
    filterable = [definition.attributes[n] for n in definition.indexed_attributes
                  if definition.attributes[n].data_type in _SCALARS]
    context = dict(ptype=ptype, definition=definition, given=given, filterable=filterable,
                   rows=[], total=None, offset=0, issues=issues, previous=None, following=None)
    try:
        offset = context["offset"] = offset_arg(PAGE_SIZE)
    except BadArgument as error:
        issues += error.issues
    if issues:
        return render_template("console/participants.html", **context), 400
    query = ListQuery({"term": clauses} if clauses else {}, PAGE_SIZE, offset, "createdAt",
                      "desc")
    try:
        rows, total = participants().service.search(ptype, tenant(), query)
    except InvalidQuery as error:
        context["issues"] = error.issues
        return render_template("console/participants.html", **context), 400
    context.update(rows=rows, total=total)
    if offset > 0:
        context["previous"] = _page_url("console.participants_page", max(0, offset - PAGE_SIZE),
                                        plural=plural)
    if offset + PAGE_SIZE < total:
        context["following"] = _page_url("console.participants_page", offset + PAGE_SIZE,
                                         plural=plural)
    return render_template("console/participants.html", **context)


# -- one participant ---------------------------------------------------------------------------

@bp.get("/participants/<pid>")
def participant_page(pid):
    match = _PARTICIPANT_ID.fullmatch(pid)
    if match is None or match.group(1) not in participants().types:
        raise ParticipantNotFound(pid)
    ptype = participant_type(match.group(1))
    service = participants().service
    participant = service.get(tenant(), pid)
    if participant.type != ptype.plural:
        raise ParticipantNotFound(pid)
    offset = offset_arg(HISTORY_PAGE_SIZE)
    events, total = service.history(tenant(), pid, HISTORY_PAGE_SIZE, offset)
    previous = following = None
    if offset > 0:
        previous = _page_url("console.participant_page", max(0, offset - HISTORY_PAGE_SIZE),
                             pid=pid)
    if offset + HISTORY_PAGE_SIZE < total:
        following = _page_url("console.participant_page", offset + HISTORY_PAGE_SIZE, pid=pid)
    return render_template(
        "console/participant.html", ptype=ptype, definition=ptype.definition,
        participant=participant, diagram=render_svg(ptype, highlight=participant.state),
        events=events, total=total, offset=offset, previous=previous, following=following)
