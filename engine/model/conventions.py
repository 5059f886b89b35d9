"""Rules every layer shares: code formats, core field names, index values and compact JSON."""

from __future__ import annotations

import json
import math
import re
import time

from engine.model.jsonschemas import ecma_pattern

__all__ = ["CORE_EDITABLE", "CORE_FIELDS", "EVENT_CODE", "EVENT_CODE_PATTERN", "INT64",
           "REASON_CODE", "REASON_CODE_PATTERN", "compact_json", "index_value"]

# Event codes E-001..E-999 and reason codes R-0001..R-9999. The JSON Schemas of machine files
# and the OpenAPI document repeat these texts; tests/test_conventions.py holds them to these.
EVENT_CODE_PATTERN = r"^E-(?!000)[0-9]{3}$"
REASON_CODE_PATTERN = r"^R-(?!0000)[0-9]{4}$"
EVENT_CODE = re.compile(ecma_pattern(EVENT_CODE_PATTERN))  # `$` is the end, as in the schemas
REASON_CODE = re.compile(ecma_pattern(REASON_CODE_PATTERN))

# Fields of the participant itself; attribute names may not take them (lint rule E404).
CORE_FIELDS = frozenset({
    "id", "uniqueCode", "name", "owner", "participantType", "properties", "state",
    "category", "subCategory", "templateId", "version", "createdAt", "updatedAt",
    "createdBy", "updatedBy", "tenantId",
})
# The core fields a write may set (and null clears), besides uniqueCode on create.
CORE_EDITABLE = ("name", "owner", "category", "subCategory", "templateId")

# The integers SQLite stores and compares exactly.
INT64 = (-(2**63), 2**63 - 1)


def index_value(value):
    """A scalar as attribute_index stores and compares it: booleans 0/1, huge integers float."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        try:
            return float(value)
        except OverflowError:  # beyond the largest double
            return math.inf if value > 0 else -math.inf
    return value


def compact_json(value, *, sort_keys: bool = False) -> str:
    """JSON text without spaces, non-ASCII kept as is: stored rows, answers, hook bodies."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)


def now_ms() -> int:
    """The time as the engine stores it: epoch milliseconds."""
    return time.time_ns() // 1_000_000
