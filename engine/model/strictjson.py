"""The strict JSON reader every client-supplied JSON goes through."""

from __future__ import annotations

import json
import math

__all__ = ["MAX_DEPTH", "strict_loads"]

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


def strict_loads(text: str):
    """json.loads that refuses duplicate keys, NaN/Infinity, lone surrogates and deep nesting."""
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
    return value
