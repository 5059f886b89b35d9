"""The Participant Service HTTP API (Flask)."""

from __future__ import annotations

import os

from flask import Flask

from engine.registry import load_registry


def create_app(test_config: dict | None = None) -> Flask:
    """Build the application: configuration from PARTICIPANTS_* variables, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(PARTICIPANTS_MACHINES="machines")
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("PARTICIPANTS_")})
    if test_config:
        app.config.update(test_config)
    app.extensions["participant_types"] = load_registry(app.config["PARTICIPANTS_MACHINES"])
    return app
