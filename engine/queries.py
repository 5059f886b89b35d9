"""List queries: OS1 query operators on indexed attributes and core fields, as SQL."""

from __future__ import annotations

from dataclasses import dataclass, field

from .definitions import Definition
from .errors import InvalidQuery, Issue
from .store import PARTICIPANT_COLUMNS, participant_from_row

__all__ = ["CORE_COLUMNS", "ListQuery", "run"]

# query key -> participants column
CORE_COLUMNS = {
    "id": "id", "state": "state", "name": "name", "owner": "owner", "category": "category",
    "subCategory": "sub_category", "uniqueCode": "unique_code", "templateId": "template_id",
    "createdAt": "created_at", "updatedAt": "updated_at", "version": "version",
}
RELATIONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS = ("term", "terms", "range", "prefix", "exists", "match")


@dataclass(frozen=True)
class ListQuery:
    clauses: dict = field(default_factory=dict)   # operator -> [clause, ...] (shape checked)
    limit: int = 50
    offset: int = 0
    sort_key: str = "createdAt"
    sort_by: str = "desc"


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _index_value(value):
    """A query value as SQLite compares it (booleans are 0/1; it has 64-bit integers only)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return float(value)
    return value


class _Builder:
    def __init__(self, definition: Definition, tenant_id: str):
        self.definition = definition
        self.indexed = set(definition.indexed_attributes)
        self.where = ["p.tenant_id = ?", "p.type = ?", "p.archived_at IS NULL"]
        self.params: list = [tenant_id, definition.plural]
        self.issues: list[Issue] = []

    def _attribute(self, condition: str, key: str, values: list) -> None:
        # Not correlated with p: SQLite runs it once on attribute_index_lookup, then finds the
        # matching participants by primary key.
        self.where.append(
            "p.id IN (SELECT participant_id FROM attribute_index WHERE tenant_id = ?"
            f" AND type = ? AND name = ? AND {condition})")
        self.params += [self.params[0], self.params[1], key, *values]

    def clause(self, operator: str, clause: dict, path: str) -> None:
        key = clause["key"]
        column = CORE_COLUMNS.get(key)
        if column is None and key not in self.indexed:
            hint = "not indexed" if key in self.definition.attributes else "not a field"
            self.issues.append(Issue(f"{path}.key", (
                f"'{key}' is {hint}; query core fields ({', '.join(CORE_COLUMNS)}) or indexed "
                f"attributes ({', '.join(sorted(self.indexed)) or 'none'})")))
            return
        target = f"p.{column}" if column else "value"
        if operator == "term":
            condition, values = f"{target} = ?", [_index_value(clause["value"])]
        elif operator == "terms":
            marks = ", ".join("?" * len(clause["values"]))
            condition = f"{target} IN ({marks})"
            values = [_index_value(v) for v in clause["values"]]
        elif operator == "range":
            condition = f"{target} {RELATIONS[clause['relation']]} ?"
            values = [_index_value(clause["value"])]
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


def run(conn, definition: Definition, tenant_id: str, query: ListQuery):
    """The participants matching `query` (one page) and the total count; InvalidQuery if bad."""
    builder = _Builder(definition, tenant_id)
    for operator, clauses in query.clauses.items():
        for i, clause in enumerate(clauses):
            builder.clause(operator, clause, f"$.query.{operator}[{i}]")
    order = CORE_COLUMNS.get(query.sort_key)
    join, join_params = "", []
    if order is None:
        if query.sort_key not in builder.indexed:
            builder.issues.append(Issue("$.sortKey", (
                f"cannot sort by '{query.sort_key}'; use a core field or an indexed attribute")))
        else:
            join = (" LEFT JOIN attribute_index s ON s.tenant_id = p.tenant_id AND s.type = p.type"
                    " AND s.participant_id = p.id AND s.name = ?")
            join_params, order = [query.sort_key], "s.value"
    else:
        order = f"p.{order}"
    if builder.issues:
        raise InvalidQuery(builder.issues)
    where = " AND ".join(builder.where)
    direction = "DESC" if query.sort_by == "desc" else "ASC"
    total = conn.execute(f"SELECT COUNT(*) FROM participants p WHERE {where}",
                         builder.params).fetchone()[0]
    columns = ", ".join(f"p.{c.strip()}" for c in PARTICIPANT_COLUMNS.split(","))
    rows = conn.execute(
        f"SELECT {columns} FROM participants p{join} WHERE {where}"
        f" ORDER BY {order} {direction}, p.id {direction} LIMIT ? OFFSET ?",
        [*join_params, *builder.params, query.limit, query.offset],
    ).fetchall()
    return [participant_from_row(r) for r in rows], total
