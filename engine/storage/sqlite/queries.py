"""List queries as SQLite SQL: OS1 operators on indexed attributes and core fields."""

from __future__ import annotations

from engine.model.conventions import index_value
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


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Builder:
    def __init__(self, plural: str, tenant_id: str):
        self.where = ["p.tenant_id = ?", "p.type = ?", "p.archived_at IS NULL"]
        self.params: list = [tenant_id, plural]

    def _attribute(self, condition: str, key: str, values: list) -> None:
        # Not correlated with p: SQLite runs it once on attribute_index_lookup, then finds the
        # matching participants by primary key.
        self.where.append(
            "p.id IN (SELECT participant_id FROM attribute_index WHERE tenant_id = ?"
            f" AND type = ? AND name = ? AND {condition})")
        self.params += [self.params[0], self.params[1], key, *values]

    def clause(self, operator: str, clause: dict) -> None:
        key = clause["key"]
        column = _COLUMNS.get(key)
        target = f"p.{column}" if column else "value"
        if operator == "term":
            condition, values = f"{target} = ?", [index_value(clause["value"])]
        elif operator == "terms":
            marks = ", ".join("?" * len(clause["values"]))
            condition = f"{target} IN ({marks})"
            values = [index_value(v) for v in clause["values"]]
        elif operator == "range":
            condition = f"{target} {_RELATIONS[clause['relation']]} ?"
            values = [index_value(clause["value"])]
        elif operator == "prefix":
            condition, values = f"{target} LIKE ? ESCAPE '\\'", [_like(clause["value"]) + "%"]
        elif operator == "match":
            condition = f"{target} LIKE ? ESCAPE '\\'"
            values = ["%" + _like(clause["value"]) + "%"]
        else:  # exists
            condition, values = (f"{target} IS NOT NULL", []) if column else ("1", [])
        if column:
            self.where.append(condition)
            self.params += values
        else:
            self._attribute(condition, key, values)


def run(conn, definition, tenant_id: str, query, columns: str):
    """Rows of one page of the participants matching a checked `query`, and the total count."""
    builder = _Builder(definition.plural, tenant_id)
    for operator, clauses in query.clauses.items():
        for clause in clauses:
            builder.clause(operator, clause)
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
