"""Attribute validation, compiled once per type: every problem reported with its JSON path."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping

from engine.errors import Issue
from engine.model.definitions import Attribute, DataItem
from engine.model.jsonschemas import CompiledSchema, ecma_pattern

__all__ = ["AttributeValidator", "ValueCheck", "compile_checks", "json_path", "thaw"]

# A check takes a value of the right JSON type and returns a message, or None when it holds.
ValueCheck = Callable[[object], "str | None"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(prefix: str, *parts) -> str:
    """'$.properties' + ('capacityKg', 0) -> '$.properties.capacityKg[0]'."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _KEY.match(part):
            out += f".{part}"
        else:
            out += "[" + repr(part).replace("'", '"') + "]"
    return out


def thaw(value):
    """Deep-copy read-only mappings back into plain dicts and lists (for jsonschema)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


_TYPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "string": (lambda v: isinstance(v, str), "text"),
    "number": (_is_number, "a number"),
    "integer": (lambda v: _is_number(v) and (isinstance(v, int) or v.is_integer()),
                "a whole number"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "array": (lambda v: isinstance(v, list), "an array"),
}


def _same(a, b) -> bool:
    """Equality that does not confuse true with 1."""
    return type(a) is type(b) and a == b or (_is_number(a) and _is_number(b) and a == b)


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _range_check(data_type: str, low, high) -> ValueCheck:
    if data_type in ("number", "integer"):
        measure, unit = (lambda v: v), ""
    elif data_type == "string":
        measure, unit = len, " characters long"
    else:
        measure, unit = len, " items"

    def check(value):
        size = measure(value)
        if low is not None and size < low:
            return f"must be at least {_fmt(low)}{unit}" if unit != " items" else \
                f"must have at least {_fmt(low)} items"
        if high is not None and size > high:
            return f"must be at most {_fmt(high)}{unit}" if unit != " items" else \
                f"must have at most {_fmt(high)} items"
        return None

    return check


def compile_checks(spec: Attribute | DataItem) -> list[ValueCheck]:
    """The checks a value must pass, type first; later checks assume the type holds."""
    is_type, type_name = _TYPES[spec.data_type]
    checks: list[ValueCheck] = [lambda v: None if is_type(v) else f"must be {type_name}"]
    if spec.regex is not None and spec.data_type == "string":
        pattern = re.compile(ecma_pattern(spec.regex))
        checks.append(lambda v: None if pattern.search(v) else f"must match {spec.regex}")
    if (spec.min is not None or spec.max is not None) and spec.data_type not in (
            "boolean", "object"):
        checks.append(_range_check(spec.data_type, spec.min, spec.max))
    if spec.value_one_of is not None:
        options = spec.value_one_of
        shown = ", ".join(map(str, options))
        checks.append(lambda v: None if any(_same(v, o) for o in options)
                      else f"must be one of: {shown}")
    schema = getattr(spec, "schema", None)
    if schema is not None:
        checks.append(_schema_check(CompiledSchema(thaw(schema))))
    return checks


def _schema_check(validator: CompiledSchema) -> ValueCheck:
    def check(value):
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        return "; ".join(
            (json_path("", *e.absolute_path).lstrip(".") + ": " if e.absolute_path else "")
            + e.message for e in errors
        )

    return check


def run_checks(checks: list[ValueCheck], value) -> str | None:
    """The first failing check's message (a value of the wrong type fails only that)."""
    for check in checks:
        message = check(value)
        if message:
            return message
    return None


class AttributeValidator:
    """Validates a participant's whole property set against its type's attributes."""

    def __init__(self, plural: str, attributes: Mapping[str, Attribute]):
        self.plural = plural
        self.attributes = attributes
        self.checks = {name: compile_checks(a) for name, a in attributes.items()}
        self.required = tuple(n for n, a in attributes.items() if a.required)

    def unknown(self, names, prefix: str = "$.properties") -> list[Issue]:
        """Issues for names that are not attributes of this type."""
        issues = []
        for name in names:
            if name not in self.checks:
                close = difflib.get_close_matches(str(name), list(self.checks), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                issues.append(Issue(json_path(prefix, str(name)),
                                    f"'{name}' is not an attribute of {self.plural}{hint}"))
        return issues

    def issues(self, properties: Mapping, prefix: str = "$.properties") -> list[Issue]:
        """Every bad value and every missing required attribute; unknown names are skipped."""
        found = []
        for name, checks in self.checks.items():  # declaration order, so output is stable
            if name in properties:
                message = run_checks(checks, properties[name])
                if message:
                    found.append(Issue(json_path(prefix, name), f"{name} {message}"))
            elif name in self.required:
                found.append(Issue(json_path(prefix, name), f"{name} is required"))
        return found
