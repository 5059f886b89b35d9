"""List queries: OS1 query operators on indexed attributes and core fields, checked
before any backend runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.errors import InvalidQuery, Issue
from engine.model.conventions import CORE_FIELDS, INT64
from engine.model.definitions import Definition
from engine.storage.interface import QUERYABLE_FIELDS

__all__ = ["CORE_COLUMNS", "LIMITS", "ListQuery", "check", "problems"]

# The core fields a query may filter and sort by (besides indexed attributes).
CORE_COLUMNS = QUERYABLE_FIELDS
RELATIONS = ("gt", "gte", "lt", "lte")
OPERATORS = ("term", "terms", "range", "prefix", "exists", "match")
# The members of each operator's clauses and what each holds (webapp/openapi.yaml's Query agrees).
MEMBERS = {
    "term": {"key": "key", "value": "scalar"},
    "terms": {"key": "key", "values": "scalars"},
    "range": {"key": "key", "relation": "relation", "value": "bound"},
    "prefix": {"key": "key", "value": "text"},
    "exists": {"key": "key"},
    "match": {"key": "key", "value": "text"},
}


@dataclass(frozen=True)
class Limits:
    """How large a list query may be; past these it is a 400 before it reaches the database."""

    query_chars: int = 65_536     # the query parameter, as text
    clauses: int = 50             # clauses of all operators together (SQLite: 1,000 ANDs)
    terms_values: int = 100       # values of one terms clause
    text: int = 1_024             # characters of a key, a string value, sortKey, a select[] name
    select: int = 100             # select[] names
    limit: int = 100              # page size (1 to this)
    offset: int = 1_000_000_000
    numbers: tuple[int, int] = INT64  # what SQLite stores and compares exactly


LIMITS = Limits()
# The fields of a participant as answered (select[] may name them, or attributes).
ANSWERED_FIELDS = CORE_FIELDS - {"tenantId"}


@dataclass(frozen=True)
class ListQuery:
    clauses: dict = field(default_factory=dict)   # operator -> [clause, ...]
    limit: int = 50
    offset: int = 0
    sort_key: str = "createdAt"
    sort_by: str = "desc"
    select: tuple[str, ...] = ()


def _text_problem(value) -> str | None:
    """What is wrong with a key, a string value, sortKey or a select[] name; None if nothing."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > LIMITS.text:
        return f"has {len(value):,} characters; at most {LIMITS.text:,}"
    return None


def _number_problem(value) -> str | None:
    """Numbers must be finite and within what SQLite stores as an integer."""
    low, high = LIMITS.numbers
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if not low <= value <= high:
        return f"must be between {low:,} and {high:,} (numbers SQLite compares exactly)"
    return None


def _value_problem(kind: str, value) -> str | None:
    """What is wrong with a clause member's value, None when nothing."""
    if kind == "key":
        return _text_problem(value)
    if kind == "relation":
        return None if value in RELATIONS else f"must be one of {', '.join(RELATIONS)}"
    if kind == "text":
        return "must not be empty" if value == "" else _text_problem(value)
    if isinstance(value, bool) and kind == "scalar":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number_problem(value)
    if isinstance(value, str):
        return _text_problem(value)
    return "must be a string or a number" if kind == "bound" else \
        "must be a string, a number or a boolean"


def _clause_problems(operator: str, clause, path: str) -> list[Issue]:
    if not isinstance(clause, dict):
        return [Issue(path, "must be an object")]
    members = MEMBERS[operator]
    issues = [Issue(f"{path}.{name}", "is required") for name in members if name not in clause]
    issues += [Issue(f"{path}.{_member(name)}", f"unknown member of a {operator} clause")
               for name in clause if name not in members]
    for name, kind in members.items():
        if name not in clause:
            continue
        value, where = clause[name], f"{path}.{name}"
        if kind != "scalars":
            problem = _value_problem(kind, value)
            issues += [Issue(where, problem)] if problem else []
        elif not isinstance(value, list) or not value:
            issues.append(Issue(where, "must be a non-empty array"))
        elif len(value) > LIMITS.terms_values:
            issues.append(Issue(where, f"has {len(value):,} values; at most "
                                       f"{LIMITS.terms_values:,}"))
        else:
            issues += [Issue(f"{where}[{i}]", problem) for i, item in enumerate(value)
                       if (problem := _value_problem("scalar", item))]
    return issues


def _member(name: str) -> str:
    return name if len(name) <= 64 else name[:64] + "…"


def problems(query: ListQuery, definition: Definition | None = None) -> list[Issue]:
    """Every way `query` is malformed or over LIMITS, each with its JSON path ($.query…)."""
    clauses = query.clauses
    if not isinstance(clauses, dict):
        return [Issue("$.query", "must be an object")]
    issues: list[Issue] = []
    total = sum(len(items) for items in clauses.values() if isinstance(items, list))
    room = LIMITS.clauses  # clauses still checked; the operator going past the limit is named
    for operator, items in clauses.items():
        path = f"$.query.{_member(operator)}"
        if operator not in MEMBERS:
            issues.append(Issue(path, f"unknown operator; use one of {', '.join(OPERATORS)}"))
        elif not isinstance(items, list):
            issues.append(Issue(path, "must be an array of clauses"))
        else:
            if 0 <= room < len(items):
                issues.append(Issue(path, (
                    f"a query has at most {LIMITS.clauses} clauses in all; this one has "
                    f"{total:,}")))
            for i, clause in enumerate(items[:max(room, 0)]):
                issues += _clause_problems(operator, clause, f"{path}[{i}]")
            room -= len(items)
    if not 1 <= query.limit <= LIMITS.limit:
        issues.append(Issue("$.limit", f"must be a whole number from 1 to {LIMITS.limit}"))
    if not 0 <= query.offset <= LIMITS.offset:
        issues.append(Issue("$.offset", f"must be a whole number from 0 to {LIMITS.offset}"))
    if (problem := _text_problem(query.sort_key)) is not None:
        issues.append(Issue("$.sortKey", problem))
    if query.sort_by not in ("asc", "desc"):
        issues.append(Issue("$.sortBy", "must be asc or desc"))
    if len(query.select) > LIMITS.select:
        issues.append(Issue(f"$.select[{LIMITS.select}]", (
            f"at most {LIMITS.select} names; {len(query.select):,} given")))
    known = ANSWERED_FIELDS | set(definition.attributes) if definition else None
    for i, name in enumerate(query.select[:LIMITS.select]):
        problem = _text_problem(name)
        if problem is None and known is not None and name not in known:
            problem = f"'{name}' is not a field of a participant or an attribute of the type"
        if problem is not None:
            issues.append(Issue(f"$.select[{i}]", problem))
    return issues


def _key_problems(query: ListQuery, definition: Definition) -> list[Issue]:
    """Keys and sortKey that name neither a queryable core field nor an indexed attribute."""
    indexed = set(definition.indexed_attributes)
    issues = []
    for operator, clauses in query.clauses.items():
        for i, clause in enumerate(clauses):
            key = clause["key"]
            if key not in CORE_COLUMNS and key not in indexed:
                hint = "not indexed" if key in definition.attributes else "not a field"
                issues.append(Issue(f"$.query.{operator}[{i}].key", (
                    f"'{key}' is {hint}; query core fields ({', '.join(CORE_COLUMNS)}) or "
                    f"indexed attributes ({', '.join(sorted(indexed)) or 'none'})")))
    if query.sort_key not in CORE_COLUMNS and query.sort_key not in indexed:
        issues.append(Issue("$.sortKey", (
            f"cannot sort by '{query.sort_key}'; use a core field or an indexed attribute")))
    return issues


def check(query: ListQuery, definition: Definition) -> None:
    """Raise InvalidQuery with every problem of `query`: nothing malformed, oversized or
    naming what cannot be queried reaches a database."""
    issues = problems(query, definition)
    if not issues:
        issues = _key_problems(query, definition)
    if issues:
        raise InvalidQuery(issues)
