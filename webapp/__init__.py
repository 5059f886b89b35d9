"""The Participant Service HTTP API (Flask)."""

from __future__ import annotations

from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    """Build the Flask application."""
    app = Flask(__name__)
    if test_config:
        app.config.update(test_config)
    return app
