"""The strict JSON reader every client-supplied JSON goes through."""

from __future__ import annotations

import json
import math
import re

__all__ = ["MAX_DEPTH", "NulCharacter", "nul_path", "strict_loads"]

MAX_DEPTH = 32


def _pairs(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key '{key}'")
        result[key] = value
    return result


def _constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _check_nesting(value, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_nesting(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_nesting(item, depth + 1)
    elif isinstance(value, str):
        _check_text(value)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string contains a lone surrogate (\\ud800-\\udfff)") from None


class NulCharacter(ValueError):
    """A string or key holds U+0000, which no backend stores as text (PostgreSQL refuses it),
    so request bodies may not carry it; `path` says where."""

    def __init__(self, path: str):
        super().__init__(f"{path} contains U+0000 (NUL), which the service does not store")
        self.path = path


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def nul_path(value, path: str = "$") -> str | None:
    """The JSON path of the first string or key holding U+0000, None if there is none."""
    if isinstance(value, str):
        return path if "\0" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if _NAME.match(key) else f"{path}[{json.dumps(key)}]"
            if "\0" in key:
                return where
            if (found := nul_path(item, where)) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := nul_path(item, f"{path}[{i}]")) is not None:
                return found
    return None


def strict_loads(text: str, *, nul: bool = True):
    """json.loads that refuses duplicate keys, NaN/Infinity, lone surrogates and deep nesting,
    and with `nul=False` U+0000 in any string or key (NulCharacter)."""
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant,
                           parse_float=_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{error.msg} at line {error.lineno} column {error.colno}") from None
    # Cheap guards first: deep nesting needs many brackets, a surrogate needs a \u escape.
    if text.count("{") + text.count("[") > MAX_DEPTH or "\\u" in text:
        _check_nesting(value)
    # JSON carries U+0000 only as the escape \u0000 (a raw one is refused above).
    if not nul and "\\u0000" in text and (path := nul_path(value)) is not None:
        raise NulCharacter(path)
    return value
