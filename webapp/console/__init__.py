"""The domain experts' console (SPEC §8): server-rendered pages over the engine, at /console/.

Signed in with a tenant id and an access token of PARTICIPANTS_ACCESS_TOKENS, a domain expert
reads the participant types (diagram, attributes, events, lint), simulates requests on a dry
run, and reads the tenant's participants and their event histories. Nothing here writes.
"""

from __future__ import annotations

from flask import Flask

from . import auth, dryrun, errors, pages, present  # noqa: F401  (they fill the blueprint)
from .auth import ConsoleSessions, configured_key
from .blueprint import ConsoleState, bp

__all__ = ["bp", "init_console"]


def init_console(app: Flask) -> None:
    """Serve the console at /console/ with its own session cookie (see auth.py)."""
    app.extensions["console"] = ConsoleState(
        configured_key(app.config.get("PARTICIPANTS_CONSOLE_SECRET_KEY")))
    app.session_interface = ConsoleSessions()
    app.register_blueprint(bp)
