"""The Participant Service HTTP API (Flask)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import click
from flask import Flask, Response, current_app, g, request
from flask.cli import with_appcontext
from werkzeug.exceptions import HTTPException

from engine.delivery.hooks import HookCaller
from engine.jobs.batchworker import BatchWorker
from engine.jobs.dispatcher import (
    DEFAULT_POLL_SECONDS,
    DEFAULT_SCHEDULE,
    DeliveryPolicy,
    Dispatcher,
)
from engine.jobs.timers import Timers
from engine.loading.registry import load_registry
from engine.model.conventions import compact_json
from engine.model.types import Registry
from engine.service.participants import Service
from engine.storage import Storage, StorageUnavailable, open_storage

from .embedded import MODES, EmbeddedDispatcher, serving, stop_on_sigterm
from .errors import status_and_code
from .http import token_table

__all__ = ["create_app"]

log = logging.getLogger("webapp")

DEFAULTS = {
    "PARTICIPANTS_DATABASE": "instance/participants.db",
    "PARTICIPANTS_MACHINES": "machines",
    "PARTICIPANTS_MAX_BODY_BYTES": 1024 * 1024,
    "PARTICIPANTS_ACCESS_TOKENS": "{}",
    "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS": "0",
    "PARTICIPANTS_BASE_PATH": "/core/api/v2/participants",
    "PARTICIPANTS_SYNCHRONOUS": "FULL",
    "PARTICIPANTS_BUSY_TIMEOUT_MS": 30_000,
    "PARTICIPANTS_IDEMPOTENCY_RETENTION_SECONDS": 86_400,
    "PARTICIPANTS_DELIVERY_SCHEDULE": ",".join(map(str, DEFAULT_SCHEDULE)),
    "PARTICIPANTS_DELIVERY_TIMEOUT_SECONDS": 10,
    "PARTICIPANTS_DELIVERY_LEASE_SECONDS": 60,
    "PARTICIPANTS_DELIVERY_CONCURRENCY": 16,
    "PARTICIPANTS_HOOK_TIMEOUT_SECONDS": 10,
    "PARTICIPANTS_MAX_BATCH_ITEMS": 10_000,
    "PARTICIPANTS_MAX_BATCH_BODY_BYTES": 32 * 1024 * 1024,
    "PARTICIPANTS_DISPATCHER": "embedded",
    "PARTICIPANTS_DISPATCHER_POLL_SECONDS": DEFAULT_POLL_SECONDS,
    "PARTICIPANTS_POSTGRES_POOL_MIN": 1,
    "PARTICIPANTS_POSTGRES_POOL_MAX": 6,
    "PARTICIPANTS_POSTGRES_POOL_TIMEOUT_SECONDS": 10,
    "PARTICIPANTS_POSTGRES_CONNECT_TIMEOUT_SECONDS": 5,
    "PARTICIPANTS_POSTGRES_STATEMENT_TIMEOUT_MS": 60_000,
    "PARTICIPANTS_POSTGRES_LOCK_TIMEOUT_MS": 30_000,
    "PARTICIPANTS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS": 60_000,
    "PARTICIPANTS_POSTGRES_NOTIFY": "1",
    "PARTICIPANTS_CONSOLE_SECRET_KEY": "",
}


@dataclass
class Participants:
    """What the views share, kept in app.extensions['participants']."""

    types: Registry
    storage: Storage
    service: Service
    tokens: dict
    allow_private: bool
    policy: DeliveryPolicy
    max_batch_items: int = 10_000
    max_batch_bytes: int = 32 * 1024 * 1024
    poll_seconds: float = DEFAULT_POLL_SECONDS
    embedded: EmbeddedDispatcher | None = None  # this process's dispatcher thread

    def dispatcher(self, clock=time.time) -> Dispatcher:
        """A dispatcher for this app's outbox, timers and batches (one per thread or process)."""
        return Dispatcher(self.storage, allow_private=self.allow_private, policy=self.policy,
                          clock=clock, timers=Timers(self.types, self.service),
                          batches=BatchWorker(self.types, self.service, clock))


def _config_error(name: str, problem: str) -> ValueError:
    return ValueError(f"configuration {name}: {problem}")


def _int(config, name: str) -> int:
    try:
        return int(config[name])
    except (TypeError, ValueError):
        raise _config_error(name, f"expected a whole number, got {config[name]!r}") from None


def _positive(config, name: str) -> int:
    value = _int(config, name)
    if value < 1:
        raise _config_error(name, f"expected a whole number above 0, got {config[name]!r}")
    return value


def _seconds(config, name: str) -> float:
    try:
        value = float(config[name])
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value < 3600:
        raise _config_error(name, f"expected seconds above 0 (e.g. 1 or 0.5), got "
                                  f"{config[name]!r}")
    return value


def _choice(config, name: str, choices: tuple[str, ...]) -> str:
    value = str(config[name]).strip().lower()
    if value not in choices:
        raise _config_error(name, f"expected {' or '.join(choices)}, got {config[name]!r}")
    return value


def _flag(config, name: str) -> bool:
    value = str(config[name]).strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no", ""):
        raise _config_error(name, f"expected 1 or 0, got {config[name]!r}")
    return value in ("1", "true", "yes")


def _schedule(config) -> tuple[int, ...]:
    name = "PARTICIPANTS_DELIVERY_SCHEDULE"
    try:
        schedule = tuple(int(p) for p in str(config[name]).split(",") if p.strip())
    except ValueError:
        raise _config_error(name, "expected seconds separated by commas, e.g. 5,300,1800") \
            from None
    if any(s < 0 for s in schedule):
        raise _config_error(name, "delays cannot be negative")
    return schedule


def _postgres_options(config) -> dict:
    """The PostgreSQL settings, checked whichever backend is in use (a typo never waits for the
    day the database moves)."""
    pool_min = _int(config, "PARTICIPANTS_POSTGRES_POOL_MIN")
    if pool_min < 0:
        raise _config_error("PARTICIPANTS_POSTGRES_POOL_MIN",
                            f"expected a whole number from 0, got {pool_min}")
    pool_max = _positive(config, "PARTICIPANTS_POSTGRES_POOL_MAX")
    if pool_max < pool_min:
        raise _config_error("PARTICIPANTS_POSTGRES_POOL_MAX",
                            f"must be at least PARTICIPANTS_POSTGRES_POOL_MIN ({pool_min})")
    return {
        "pool_min": pool_min, "pool_max": pool_max,
        "pool_timeout": _seconds(config, "PARTICIPANTS_POSTGRES_POOL_TIMEOUT_SECONDS"),
        "connect_timeout": _positive(config, "PARTICIPANTS_POSTGRES_CONNECT_TIMEOUT_SECONDS"),
        "statement_timeout_ms": _positive(config, "PARTICIPANTS_POSTGRES_STATEMENT_TIMEOUT_MS"),
        "lock_timeout_ms": _positive(config, "PARTICIPANTS_POSTGRES_LOCK_TIMEOUT_MS"),
        "idle_in_transaction_timeout_ms": _positive(
            config, "PARTICIPANTS_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_MS"),
        "notify": _flag(config, "PARTICIPANTS_POSTGRES_NOTIFY"),
    }


def _tokens(config) -> dict:
    raw = config["PARTICIPANTS_ACCESS_TOKENS"]
    try:
        tokens = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise _config_error("PARTICIPANTS_ACCESS_TOKENS",
                            'expected a JSON object {"token": "tenant id"}') from None
    if not isinstance(tokens, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in tokens.items()):
        raise _config_error("PARTICIPANTS_ACCESS_TOKENS",
                            'expected a JSON object {"token": "tenant id"}')
    return tokens


def create_app(test_config: dict | None = None) -> Flask:
    """Build the application: defaults, then PARTICIPANTS_* variables, then `test_config`."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(DEFAULTS)
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("PARTICIPANTS_")})
    if test_config:
        app.config.update(test_config)
    config = app.config
    config["MAX_CONTENT_LENGTH"] = _int(config, "PARTICIPANTS_MAX_BODY_BYTES")
    dispatcher_mode = _choice(config, "PARTICIPANTS_DISPATCHER", MODES)
    poll_seconds = _seconds(config, "PARTICIPANTS_DISPATCHER_POLL_SECONDS")

    types = load_registry(config["PARTICIPANTS_MACHINES"])
    storage = open_storage(str(config["PARTICIPANTS_DATABASE"]),
                           synchronous=str(config["PARTICIPANTS_SYNCHRONOUS"]),
                           busy_timeout_ms=_int(config, "PARTICIPANTS_BUSY_TIMEOUT_MS"),
                           **_postgres_options(config))
    allow_private = _flag(config, "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS")
    hook_timeout = _int(config, "PARTICIPANTS_HOOK_TIMEOUT_SECONDS")
    service = Service(
        storage, idempotency_retention_ms=1000 * _int(
            config, "PARTICIPANTS_IDEMPOTENCY_RETENTION_SECONDS"),
        hooks=HookCaller(allow_private=allow_private, connect_timeout=min(5, hook_timeout),
                         read_timeout=hook_timeout),
        machines=config["PARTICIPANTS_MACHINES"])
    policy = DeliveryPolicy(schedule=_schedule(config),
                            read_timeout=_int(config, "PARTICIPANTS_DELIVERY_TIMEOUT_SECONDS"),
                            lease_seconds=_int(config, "PARTICIPANTS_DELIVERY_LEASE_SECONDS"),
                            concurrency=_positive(config, "PARTICIPANTS_DELIVERY_CONCURRENCY"))
    participants = app.extensions["participants"] = Participants(
        types, storage, service, token_table(_tokens(config)), allow_private, policy,
        max_batch_items=_positive(config, "PARTICIPANTS_MAX_BATCH_ITEMS"),
        max_batch_bytes=_positive(config, "PARTICIPANTS_MAX_BATCH_BODY_BYTES"),
        poll_seconds=poll_seconds)
    gunicorn_log = logging.getLogger("gunicorn.error")
    if gunicorn_log.handlers:  # under gunicorn, speak through its log
        log.handlers, log.propagate = gunicorn_log.handlers, False
        log.setLevel(gunicorn_log.level)
    log.info("%s, schema version %d", storage.describe(), storage.schema_version)
    if not app.extensions["participants"].tokens:
        log.warning("PARTICIPANTS_ACCESS_TOKENS is empty: every request will be refused (401)")

    from .api import bp, update
    from .batches import bp as batches_bp

    base = "/" + str(config["PARTICIPANTS_BASE_PATH"]).strip("/")
    app.register_blueprint(bp, url_prefix=base)
    app.register_blueprint(batches_bp, url_prefix=base)
    # The seed's sample request: PUT {{baseUrl}}/participant/{plural}/{id}
    alias = base.rsplit("/", 1)[0] + "/participant/<plural>/<pid>"
    app.add_url_rule(alias, "participant_alias", update, methods=["PUT"])
    from .console import init_console

    init_console(app)  # the domain experts' pages at /console/ (SPEC §8)
    app.register_error_handler(Exception, _handle_error)
    app.cli.add_command(dispatch_command)
    app.cli.add_command(copy_database_command)
    if dispatcher_mode == "embedded" and serving():
        participants.embedded = EmbeddedDispatcher(participants.dispatcher, poll_seconds).start()
        if click.get_current_context(silent=True) is not None:  # flask run
            stop_on_sigterm()
    return app


@click.command("copy-database")
@click.option("--to", "target", required=True, metavar="URL",
              help="postgresql:// URL of an empty database.")
@with_appcontext
def copy_database_command(target: str) -> None:
    """Copy this service's SQLite database (PARTICIPANTS_DATABASE) into an empty PostgreSQL
    database, then verify every table by row count and checksum."""
    from engine.storage import is_postgres
    from engine.storage.copy import CopyRefused, copy_database

    source = str(current_app.config["PARTICIPANTS_DATABASE"])
    if is_postgres(source):
        raise click.UsageError("PARTICIPANTS_DATABASE is PostgreSQL already; the copy reads a "
                               "SQLite file")
    if not is_postgres(target):
        raise click.UsageError("--to takes a postgresql:// URL")
    current_app.extensions["participants"].storage.close()
    try:
        report = copy_database(source, target, progress=click.echo)
    except CopyRefused as error:
        raise click.ClickException(str(error)) from None
    except StorageUnavailable as error:
        raise click.ClickException(f"the target cannot be used: {error}") from None
    click.echo(f"copied and verified {sum(t.rows for t in report):,} rows in {len(report)} "
               f"tables from {source}; point PARTICIPANTS_DATABASE at the new database")


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Deliver what is due now, then exit.")
@with_appcontext
def dispatch_command(once: bool) -> None:
    """Deliver callbacks and hooks from the outbox, run state timers and batches until SIGTERM."""
    participants = current_app.extensions["participants"]
    dispatcher = participants.dispatcher()
    if once:
        while dispatcher.run_once():
            pass
        return
    stop = threading.Event()

    def stopping(*_):
        stop.set()
        dispatcher.wake()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopping)
    click.echo(f"dispatcher {dispatcher.owner}: delivering; SIGTERM stops after the "
               "deliveries in flight")
    dispatcher.run(stop, participants.poll_seconds)


def _handle_error(error: Exception) -> Response:
    status, code = status_and_code(error)
    if status == 503:  # the database is away: no traceback, the client may retry
        log.warning("%s %s: %s", request.method, request.path, error)
        description = "the database is unavailable; the request was not applied, retry later"
    elif status >= 500:
        log.exception("unhandled error on %s %s", request.method, request.path, exc_info=error)
        description = "internal error; the request was not applied"
    elif isinstance(error, HTTPException):
        description = error.description or error.name
    else:
        description = str(getattr(error, "description", None) or error)
    issues = getattr(error, "issues", None) or []
    body = {
        "error": {"code": code, "description": description,
                  "additionalInfo": {"errors": [i.as_dict() for i in issues]}},
        "request": {"uri": request.path, "method": request.method,
                    "queryString": request.query_string.decode("utf-8", "replace"),
                    "body": g.get("body")},
    }
    headers = {"Allow": ", ".join(error.valid_methods)} \
        if getattr(error, "valid_methods", None) else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return Response(compact_json(body), status=status,
                    mimetype="application/json", headers=headers)

