"""The console's error pages and response headers: HTML, never the API's JSON, never a trace."""

from __future__ import annotations

import logging

from flask import Response, current_app, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException

from engine.errors import EngineError, ParticipantNotFound, UnknownParticipantType

from ..errors import status_and_code
from .blueprint import bp, under_console

__all__ = ["error_page"]

log = logging.getLogger("webapp.console")

HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
TITLES = {400: "The request could not be used", 401: "Not signed in",
          404: "Not found", 405: "Method not allowed", 413: "The form is too large",
          503: "The database is unavailable", 500: "Something went wrong"}


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _message(error: BaseException, status: int) -> str:
    if isinstance(error, UnknownParticipantType):
        return f"There is no participant type named '{_clip(error.plural)}'."
    if isinstance(error, ParticipantNotFound):
        return (f"There is no participant '{_clip(error.participant_id)}' in this tenant (or it "
                "has been archived).")
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"The form is larger than the {limit:,} bytes this service accepts."
    if status == 404:
        return "There is no such page in the console."
    if status == 405:
        return "This page does not take that kind of request."
    if status == 503:
        return "The database did not answer; nothing was changed. Try again in a moment."
    if status >= 500:
        return "The console could not show this page; the error has been logged."
    if isinstance(error, HTTPException) and error.description and status != 400:
        return error.description
    description = getattr(error, "description", None)
    if isinstance(description, str) and not type(error).__module__.startswith("werkzeug"):
        return description
    if isinstance(error, EngineError):
        return _clip(str(error), 500)
    return "The request could not be read."  # werkzeug's own texts speak of the browser


def error_page(error: BaseException) -> Response:
    """An HTML page for `error`, with the status the API would give it."""
    status, _code = status_and_code(error)
    if status >= 500 and status != 503:
        log.exception("console error on %s %s", request.method, request.path, exc_info=error)
    elif status == 503:
        log.warning("%s %s: %s", request.method, request.path, error)
    issues = [i.as_dict() for i in getattr(error, "issues", None) or []]
    body = render_template("console/error.html", status=status,
                           title=TITLES.get(status, "The request could not be used"),
                           message=_message(error, status), issues=issues)
    response = Response(body, status=status, mimetype="text/html")
    if getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


@bp.errorhandler(Exception)
def _console_error(error: Exception) -> Response:
    return error_page(error)


@bp.before_app_request
def _console_routing_error():
    """An unknown path or a wrong method under /console gets an HTML page, not the API's
    JSON (the blueprint's handlers only see errors raised in its views)."""
    error = request.routing_exception
    if error is None or isinstance(error, RoutingException) or not under_console(request.path):
        return None  # RoutingException: a redirect, e.g. /console to /console/
    return error_page(error)


@bp.after_app_request
def _console_headers(response: Response) -> Response:
    if under_console(request.path):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if request.endpoint != "console.static":
            response.headers.setdefault("Cache-Control", "no-store")  # tenant data stays put
    return response
