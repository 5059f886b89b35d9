"""How values look on the console's pages: times, JSON values, outcomes (template helpers)."""

from __future__ import annotations

import datetime as dt

from engine.model.attributes import thaw
from engine.model.conventions import compact_json

from .auth import csrf_token
from .blueprint import bp

__all__ = ["as_json", "as_text", "as_time"]


@bp.app_template_filter("console_time")
def as_time(epoch_ms) -> str:
    """Epoch milliseconds as a UTC date and time, to the second."""
    if not isinstance(epoch_ms, int | float) or isinstance(epoch_ms, bool):
        return "—"
    try:
        moment = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(epoch_ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("console_iso")
def as_iso(epoch_ms) -> str:
    """Epoch milliseconds as an ISO 8601 instant, for <time datetime>."""
    try:
        return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC).isoformat()
    except (TypeError, OverflowError, OSError, ValueError):
        return ""


@bp.app_template_filter("console_json")
def as_json(value) -> str:
    """Any JSON value as compact JSON text (escaped by the template like any text)."""
    return compact_json(thaw(value))


@bp.app_template_filter("console_value")
def as_text(value) -> str:
    """A property's value: text as written, anything else as JSON."""
    return value if isinstance(value, str) else as_json(value)


@bp.app_context_processor
def _helpers() -> dict:
    return {"csrf_token": csrf_token}
