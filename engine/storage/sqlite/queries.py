"""List queries as SQLite SQL: OS1 operators on indexed attributes and core fields, with the
semantics of engine.storage.conditions."""

from __future__ import annotations

from engine.storage.conditions import NUMBER, Condition, conditions, like_escape
from engine.storage.interface import QUERYABLE_FIELDS

__all__ = ["run"]

# query key -> participants column
_COLUMNS = {
    "id": "id", "state": "state", "name": "name", "owner": "owner", "category": "category",
    "subCategory": "sub_category", "uniqueCode": "unique_code", "templateId": "template_id",
    "createdAt": "created_at", "updatedAt": "updated_at", "version": "version",
}
assert tuple(_COLUMNS) == QUERYABLE_FIELDS
_RELATIONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
# attribute_index.value has no type affinity: a number and a string are never equal, but every
# string sorts after every number, so ranges and LIKE keep to values of their own kind.
_OF_KIND = {NUMBER: "typeof(value) IN ('integer', 'real') AND ",
            "text": "typeof(value) = 'text' AND "}


def _condition(condition: Condition, target: str, attribute: bool) -> tuple[str, list]:
    """SQL and parameters of one condition on `target` (a column, or attribute values)."""
    op, value = condition.op, condition.value
    guard = _OF_KIND[condition.kind] if attribute and condition.kind else ""
    if op == "eq":
        return f"{target} = ?", [value]
    if op == "in":
        values = [*condition.numbers, *condition.texts]
        return f"{target} IN ({', '.join('?' * len(values))})", values
    if op in _RELATIONS:
        return f"{guard}{target} {_RELATIONS[op]} ?", [value]
    if op == "prefix":
        return f"{guard}{target} LIKE ? ESCAPE '\\'", [like_escape(value) + "%"]
    if op == "contains":
        return f"{guard}{target} LIKE ? ESCAPE '\\'", ["%" + like_escape(value) + "%"]
    assert op == "exists"
    return ("1", []) if attribute else (f"{target} IS NOT NULL", [])


class _Builder:
    def __init__(self, plural: str, tenant_id: str):
        self.where = ["p.tenant_id = ?", "p.type = ?", "p.archived_at IS NULL"]
        self.params: list = [tenant_id, plural]

    def add(self, condition: Condition) -> None:
        if condition.op == "never":
            self.where.append("0")
        elif condition.field is not None:
            sql, values = _condition(condition, f"p.{_COLUMNS[condition.field]}", False)
            self.where.append(sql)
            self.params += values
        else:
            # Not correlated with p: SQLite runs it once on attribute_index_lookup, then finds
            # the matching participants by primary key.
            sql, values = _condition(condition, "value", True)
            self.where.append(
                "p.id IN (SELECT participant_id FROM attribute_index WHERE tenant_id = ?"
                f" AND type = ? AND name = ? AND {sql})")
            self.params += [self.params[0], self.params[1], condition.key, *values]


def run(conn, definition, tenant_id: str, query, columns: str):
    """Rows of one page of the participants matching a checked `query`, and the total count."""
    builder = _Builder(definition.plural, tenant_id)
    for condition in conditions(query):
        builder.add(condition)
    order = _COLUMNS.get(query.sort_key)
    join, join_params = "", []
    if order is None:
        join = (" LEFT JOIN attribute_index s ON s.tenant_id = p.tenant_id AND s.type = p.type"
                " AND s.participant_id = p.id AND s.name = ?")
        join_params, order = [query.sort_key], "s.value"
    else:
        order = f"p.{order}"
    where = " AND ".join(builder.where)
    direction = "DESC" if query.sort_by == "desc" else "ASC"
    total = conn.execute(f"SELECT COUNT(*) FROM participants p WHERE {where}",
                         builder.params).fetchone()[0]
    selected = ", ".join(f"p.{c.strip()}" for c in columns.split(","))
    rows = conn.execute(
        f"SELECT {selected} FROM participants p{join} WHERE {where}"
        f" ORDER BY {order} {direction}, p.id {direction} LIMIT ? OFFSET ?",
        [*join_params, *builder.params, query.limit, query.offset],
    ).fetchall()
    return rows, total
