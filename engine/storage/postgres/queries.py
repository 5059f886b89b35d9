"""List queries as PostgreSQL SQL: OS1 operators on indexed attributes and core fields, with the
semantics of engine.storage.conditions, so they select and order exactly as on SQLite."""

from __future__ import annotations

from decimal import Decimal

from engine.storage.conditions import NUMBER, Condition, conditions, like_escape
from engine.storage.interface import QUERYABLE_FIELDS

__all__ = ["index_number", "run"]

# query key -> participants column, and whether the column may be NULL
_COLUMNS = {
    "id": "id", "state": "state", "name": "name", "owner": "owner", "category": "category",
    "subCategory": "sub_category", "uniqueCode": "unique_code", "templateId": "template_id",
    "createdAt": "created_at", "updatedAt": "updated_at", "version": "version",
}
assert tuple(_COLUMNS) == QUERYABLE_FIELDS
_NULLABLE = {"name", "owner", "category", "sub_category", "template_id"}
_RELATIONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_KEY_LENGTH = 200  # attribute_index.text_key: the first characters of value_text


def index_number(value) -> Decimal:
    """A number as attribute_index.value_number holds and compares it: exactly (a float's
    binary value, not its shortest decimal), so integers and floats compare as on SQLite."""
    return Decimal(value)


def _core(condition: Condition, column: str) -> tuple[str, list]:
    op, value = condition.op, condition.value
    if op == "eq":
        return f"p.{column} = %s", [value]
    if op == "in":
        return f"p.{column} = ANY(%s)", [list(condition.numbers or condition.texts)]
    if op in _RELATIONS:
        return f"p.{column} {_RELATIONS[op]} %s", [value]
    if op == "prefix":
        return f"p.{column} ILIKE %s ESCAPE '\\'", [like_escape(value) + "%"]
    if op == "contains":
        return f"p.{column} ILIKE %s ESCAPE '\\'", ["%" + like_escape(value) + "%"]
    assert op == "exists"
    return f"p.{column} IS NOT NULL", []


def _attribute(condition: Condition) -> tuple[str, list]:
    """The condition on attribute_index rows (numbers in value_number, strings in
    value_text and, for the index, its first characters in text_key)."""
    op, value = condition.op, condition.value
    if op == "eq":
        if condition.kind == NUMBER:
            return "value_number = %s", [index_number(value)]
        return "text_key = %s AND value_text = %s", [value[:_KEY_LENGTH], value]
    if op == "in":
        parts, params = [], []
        if condition.numbers:
            parts.append("value_number = ANY(%s)")
            params.append([index_number(v) for v in condition.numbers])
        if condition.texts:
            parts.append("(text_key = ANY(%s) AND value_text = ANY(%s))")
            params += [list(dict.fromkeys(v[:_KEY_LENGTH] for v in condition.texts)),
                       list(condition.texts)]
        return "(" + " OR ".join(parts) + ")", params
    if op in _RELATIONS:
        if condition.kind == NUMBER:
            return f"value_number {_RELATIONS[op]} %s", [index_number(value)]
        # A string's first characters are ordered as the whole (never strictly the other way).
        key_op = ">=" if op in ("gt", "gte") else "<="
        return (f"text_key {key_op} %s AND value_text {_RELATIONS[op]} %s",
                [value[:_KEY_LENGTH], value])
    if op == "prefix":
        return "value_text ILIKE %s ESCAPE '\\'", [like_escape(value) + "%"]
    if op == "contains":
        return "value_text ILIKE %s ESCAPE '\\'", ["%" + like_escape(value) + "%"]
    assert op == "exists"
    return "TRUE", []


class _Builder:
    def __init__(self, plural: str, tenant_id: str):
        self.where = ["p.tenant_id = %s", "p.type = %s", "p.archived_at IS NULL"]
        self.params: list = [tenant_id, plural]

    def add(self, condition: Condition) -> None:
        if condition.op == "never":
            self.where.append("FALSE")
        elif condition.field is not None:
            sql, values = _core(condition, _COLUMNS[condition.field])
            self.where.append(sql)
            self.params += values
        else:
            sql, values = _attribute(condition)
            self.where.append(
                "p.id IN (SELECT participant_id FROM attribute_index WHERE tenant_id = %s"
                f" AND type = %s AND name = %s AND {sql})")
            self.params += [self.params[0], self.params[1], condition.key, *values]


def _order(sort_key: str, direction: str) -> tuple[str, str, list]:
    """The join, ORDER BY and parameters that sort as SQLite does: NULL first ascending and
    last descending, and for attributes every number before every string."""
    nulls = " NULLS FIRST" if direction == "ASC" else " NULLS LAST"
    column = _COLUMNS.get(sort_key)
    if column is not None:
        return "", f"p.{column} {direction}{nulls if column in _NULLABLE else ''}", []
    join = (" LEFT JOIN attribute_index s ON s.tenant_id = p.tenant_id AND s.type = p.type"
            " AND s.participant_id = p.id AND s.name = %s")
    rank = ("CASE WHEN s.value_number IS NOT NULL THEN 1"
            " WHEN s.value_text IS NOT NULL THEN 2 ELSE 0 END")
    order = f"{rank} {direction}, s.value_number {direction}, s.value_text {direction}"
    return join, order, [sort_key]


def run(conn, definition, tenant_id: str, query, columns: str):
    """Rows of one page of the participants matching a checked `query`, and the total count."""
    builder = _Builder(definition.plural, tenant_id)
    for condition in conditions(query):
        builder.add(condition)
    direction = "DESC" if query.sort_by == "desc" else "ASC"
    join, order, join_params = _order(query.sort_key, direction)
    where = " AND ".join(builder.where)
    total = conn.execute(f"SELECT COUNT(*) FROM participants p WHERE {where}",
                         builder.params).fetchone()[0]
    selected = ", ".join(f"p.{c.strip()}" for c in columns.split(","))
    rows = conn.execute(
        f"SELECT {selected} FROM participants p{join} WHERE {where}"
        f" ORDER BY {order}, p.id {direction} LIMIT %s OFFSET %s",
        [*join_params, *builder.params, query.limit, query.offset],
    ).fetchall()
    return rows, total
