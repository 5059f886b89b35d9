"""Batch items from a CSV file: a header row of column names, then one item per data row.

Columns name the item's key (`uniqueCode` to create, `id` to update), its core fields, the
update's `eventCode`/`reasonCode` (its stateTransition), and attributes of the type, whose cells
are typed by the attribute's dataType. The header is the request's shape: an unknown or repeated
column refuses the whole file. A row is only ever its own item's problem: a row with the wrong
number of cells is a failed item, and a cell that cannot be read as its attribute's dataType is
kept as text, so the type's validation reports it as that item's failure event.
"""

from __future__ import annotations

import csv
import io
import math
import re

from engine.errors import EngineError, Issue
from engine.model.conventions import CORE_EDITABLE
from engine.model.definitions import Definition
from engine.model.strictjson import strict_loads
from engine.service.batches import Item

__all__ = ["BatchFileError", "CORE_COLUMNS", "KEY_COLUMN", "TRANSITION_COLUMNS", "parse"]

KEY_COLUMN = {"create": "uniqueCode", "update": "id"}
CORE_COLUMNS = CORE_EDITABLE
TRANSITION_COLUMNS = ("eventCode", "reasonCode")    # update only: its stateTransition
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class BatchFileError(EngineError):
    """The CSV file cannot be read as a batch (its header, its encoding, or no rows)."""

    def __init__(self, issues: list[Issue]):
        self.issues = issues
        super().__init__("the CSV file cannot be read: "
                         + "; ".join(f"{i.path} {i.message}" for i in issues))


def typed(data_type: str, text: str):
    """The cell as a value of `data_type`; the text itself when it cannot be read as one."""
    if data_type == "string":
        return text
    if data_type in ("number", "integer"):
        stripped = text.strip()
        if _INTEGER.match(stripped):
            try:
                return int(stripped)
            except ValueError:  # more digits than Python converts
                return text
        if data_type == "number":
            try:
                value = float(stripped)
            except ValueError:
                return text
            return value if math.isfinite(value) else text
        return text
    if data_type == "boolean":
        return _BOOLEANS.get(text.strip().lower(), text)
    if data_type in ("object", "array"):
        try:
            return strict_loads(text)
        except ValueError:
            return text
    return text


def _columns(definition: Definition, kind: str, header: list[str]) -> list[str]:
    """The header's column names; every problem with it at once."""
    allowed = {KEY_COLUMN[kind], *CORE_COLUMNS, *definition.attributes}
    if kind == "update":
        allowed.update(TRANSITION_COLUMNS)
    issues, seen = [], set()
    for number, name in enumerate(header, start=1):
        where = f"$.file.header[{number}]"
        if name == "":
            issues.append(Issue(where, "column name is empty"))
        elif name in seen:
            issues.append(Issue(where, f"column '{name}' appears twice"))
        elif name not in allowed:
            issues.append(Issue(where, f"unknown column '{name}': use {KEY_COLUMN[kind]}, "
                                       f"core fields or attributes of {definition.plural}"))
        seen.add(name)
    if KEY_COLUMN[kind] not in seen:
        issues.append(Issue("$.file.header", f"a column '{KEY_COLUMN[kind]}' is required"))
    if issues:
        raise BatchFileError(issues)
    return header


def _body(definition: Definition, kind: str, columns: list[str], cells: list[str]) -> dict:
    body: dict = {"properties": {}}
    transition = {}
    for name, cell in zip(columns, cells, strict=True):
        if cell == "":
            continue  # an empty cell leaves the field out
        if name in definition.attributes:
            body["properties"][name] = typed(definition.attributes[name].data_type, cell)
        elif name in TRANSITION_COLUMNS:
            transition[name] = cell
        else:
            body[name] = cell
    if transition:
        body["stateTransition"] = transition
    return body


def parse(definition: Definition, kind: str, text: str) -> list[Item]:
    """One Item per non-blank data row; BatchFileError when the header or the file is unusable."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise BatchFileError([Issue("$.file.header", str(error))]) from None
    if not header or all(cell == "" for cell in header):
        raise BatchFileError([Issue("$.file", "is empty; the first row names the columns")])
    columns = _columns(definition, kind, header)
    items = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a cell over the csv module's size limit
            items.append(Item([], f"line {reader.line_num}: {error}"))
            continue
        if not cells or all(cell == "" for cell in cells):
            continue  # blank lines are not rows
        if any("\0" in cell for cell in cells):  # as a JSON body carrying one is a 400
            items.append(Item(cells, f"line {reader.line_num}: a cell contains U+0000 (NUL), "
                                     "which the service does not store"))
            continue
        if len(cells) != len(columns):
            items.append(Item(cells, f"line {reader.line_num}: {len(cells)} cells, but the "
                                     f"header names {len(columns)} columns"))
            continue
        items.append(Item(_body(definition, kind, columns, cells)))
    if not items:
        raise BatchFileError([Issue("$.file", "has a header but no rows")])
    return items
