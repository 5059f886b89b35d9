"""List-query clauses as conditions both backends render alike, so they answer alike.

The rules every backend follows (README, *Lists*):

- a value compares only with values of its own kind: numbers (booleans are 0 and 1) with
  numbers, strings with strings, so `term name 5` matches no name "5", and a range with a
  number bound never matches a string (SQLite alone would convert one or order every string
  after every number);
- strings compare code point by code point (SQLite's BINARY, PostgreSQL's "C"); `prefix` and
  `match` apply to strings only and fold ASCII letters only (SQLite's LIKE);
- no stored string holds U+0000 (the API refuses it), so a string with one matches nothing:
  `term`, `terms`, `prefix` and `match` drop it, and a range bound is cut before it (nothing
  stored lies between "a" and "a\\0b");
- the core fields createdAt, updatedAt and version hold integers, so a fractional bound is
  moved to the integer that means the same (`version > 1.5` is `version > 1`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.model.conventions import index_value
from engine.storage.interface import QUERYABLE_FIELDS

__all__ = ["INTEGER_FIELDS", "NUMBER", "TEXT", "Condition", "conditions", "like_escape"]

NUMBER, TEXT = "number", "text"
INTEGER_FIELDS = frozenset({"createdAt", "updatedAt", "version"})
_NEVER_OPS = {"gt": "gt", "gte": "gt", "lt": "lte", "lte": "lte"}  # after cutting at U+0000


@dataclass(frozen=True, slots=True)
class Condition:
    """One clause: `op` is eq, in, gt, gte, lt, lte, prefix, contains, exists or never."""

    key: str
    field: str | None          # the core field, or None for an indexed attribute
    op: str
    kind: str | None = None    # NUMBER or TEXT: what `value` is (eq, ranges, prefix, contains)
    value: object = None
    numbers: tuple = ()        # in: the numbers and the strings it may equal
    texts: tuple = ()


def like_escape(text: str) -> str:
    """`text` as a literal part of a LIKE pattern whose escape character is a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _kind(value) -> str:
    return TEXT if isinstance(value, str) else NUMBER


def _integer_bound(op: str, value: float) -> tuple[str, int] | None:
    """The integer bound meaning the same for an integer field; None when nothing matches."""
    if op == "eq":
        return ("eq", int(value)) if value.is_integer() else None
    return op, (math.floor(value) if op in ("gt", "lte") else math.ceil(value))


def _condition(operator: str, clause: dict) -> Condition:
    key = clause["key"]
    field = key if key in QUERYABLE_FIELDS else None
    field_kind = None if field is None else NUMBER if field in INTEGER_FIELDS else TEXT
    never = Condition(key, field, "never")
    if operator == "exists":
        return Condition(key, field, "exists")
    if operator in ("prefix", "match"):
        text = clause["value"]
        if field_kind == NUMBER or "\0" in text:
            return never
        return Condition(key, field, "prefix" if operator == "prefix" else "contains", TEXT, text)
    if operator == "terms":
        values = [index_value(v) for v in clause["values"]]
        texts = tuple(dict.fromkeys(v for v in values if isinstance(v, str) and "\0" not in v))
        numbers = [v for v in values if not isinstance(v, str)]
        if field_kind == NUMBER:
            texts = ()
            numbers = [int(v) for v in numbers if not isinstance(v, float) or v.is_integer()]
        elif field_kind == TEXT:
            numbers = []
        numbers = tuple(dict.fromkeys(numbers))
        if not numbers and not texts:
            return never
        return Condition(key, field, "in", numbers=numbers, texts=texts)
    op = "eq" if operator == "term" else clause["relation"]
    value = index_value(clause["value"])
    kind = _kind(value)
    if field_kind is not None and kind != field_kind:
        return never
    if kind == TEXT and "\0" in value:
        if op == "eq":
            return never
        op, value = _NEVER_OPS[op], value[:value.index("\0")]
    if field_kind == NUMBER and isinstance(value, float):
        bound = _integer_bound(op, value)
        if bound is None:
            return never
        op, value = bound
    return Condition(key, field, op, kind, value)


def conditions(query) -> list[Condition]:
    """The conditions of a checked ListQuery's clauses, all of which must hold."""
    return [_condition(operator, clause)
            for operator, clauses in query.clauses.items() for clause in clauses]
