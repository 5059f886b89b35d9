"""The console's blueprint and what its modules share: the app's state, the signed-in tenant."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, g

PREFIX = "/console"

bp = Blueprint("console", __name__, url_prefix=PREFIX, template_folder="templates",
               static_folder="static")


class ConsoleState:
    """What the console works out once per process (app.extensions['console']): the session
    key when it comes from the instance folder, the lint of the machine files."""

    def __init__(self, secret_key: str | None = None):
        self._values: dict[str, Any] = {} if secret_key is None else {"secret_key": secret_key}
        self._lock = threading.RLock()

    def once(self, name: str, make: Callable[[], Any]) -> Any:
        """The value called `name`, made by `make()` the first time it is asked for."""
        with self._lock:
            if name not in self._values:
                self._values[name] = make()
            return self._values[name]


def console_state() -> ConsoleState:
    return current_app.extensions["console"]


def under_console(path: str) -> bool:
    """Whether a request path is one of the console's (cookies and headers are only for these)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def participants():
    """The service's shared objects (app.extensions['participants'])."""
    return current_app.extensions["participants"]


def tenant() -> str:
    """The signed-in tenant (set by the sign-in check before every page)."""
    return g.console_tenant
