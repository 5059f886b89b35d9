"""Signing in to the console: the signed session cookie, its key, the token check, CSRF.

The session is Flask's signed cookie, sent only to /console (HttpOnly, SameSite=Strict, Secure
on https). It holds the tenant id and the access token, and the token is checked against
PARTICIPANTS_ACCESS_TOKENS again on every request, so a revoked token signs the console out.
Every form carries the session's CSRF token, and every POST must send it back.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import time
from pathlib import Path

from flask import (
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.exceptions import BadRequest

from ..http import MAX_HEADER, token_allows
from .blueprint import PREFIX, bp, participants, under_console

__all__ = ["ConsoleSessions", "CsrfRefused", "configured_key", "csrf_token",
           "instance_key"]

log = logging.getLogger("webapp.console")

COOKIE = "console_session"
KEY_FILE = "console-secret-key"
MIN_KEY_CHARS = 32
SIGN_IN_SECONDS = 12 * 3600  # a sign-in lasts a working day, whatever the cookie says
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")
# Pages that need no sign-in: the sign-in form itself and the style sheet.
_OPEN = {"console.sign_in", "console.static"}


class CsrfRefused(BadRequest):
    """The form was not sent from a console page of this session."""

    description = ("The form was not sent from a page of this console session, or the page "
                   "is too old. Reload the page and submit the form again.")


def configured_key(value) -> str | None:
    """PARTICIPANTS_CONSOLE_SECRET_KEY, checked; None when unset (a key file is used)."""
    if value is None or str(value) == "":
        return None
    if len(str(value)) < MIN_KEY_CHARS:
        raise ValueError(f"configuration PARTICIPANTS_CONSOLE_SECRET_KEY: expected at least "
                         f"{MIN_KEY_CHARS} characters, e.g. the output of "
                         "`python -c 'import secrets; print(secrets.token_hex(32))'`")
    return str(value)


def instance_key(folder: Path, attempts: int = 100) -> str:
    """The key in `folder`/console-secret-key, made once (O_EXCL, mode 0600) by whichever
    process comes first; the others read it, so every worker on the host signs alike."""
    path = folder / KEY_FILE
    for _ in range(attempts):
        try:
            text = path.read_text("ascii").strip()
        except FileNotFoundError:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another process made it this instant: read what it writes
            except OSError as error:
                raise RuntimeError(f"cannot create the console key {path}: {error.strerror}; "
                                   "set PARTICIPANTS_CONSOLE_SECRET_KEY instead") from None
            key = secrets.token_hex(32)
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(key + "\n")
                file.flush()
                os.fsync(file.fileno())
            log.info("made the console's session key %s", path)
            return key
        except (OSError, UnicodeDecodeError) as error:
            raise RuntimeError(f"cannot read the console key {path}: {error}") from None
        if _HEX_KEY.fullmatch(text):
            return text
        time.sleep(0.02)  # being written by the process that made it
    raise RuntimeError(f"{path} does not hold a console key (64 hexadecimal digits): delete it, "
                       "or set PARTICIPANTS_CONSOLE_SECRET_KEY")


class ConsoleSessions(SecureCookieSessionInterface):
    """Flask's signed cookie session, for the console's paths only, with the console's key;
    the API never has a session."""

    salt = "participants-console"

    def open_session(self, app, request):
        if not under_console(request.path):
            return None  # Flask then uses a null session, and never sets a cookie
        return super().open_session(app, request)

    def get_signing_serializer(self, app) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(
            app.extensions["console"].once(
                "secret_key", lambda: instance_key(Path(app.instance_path))), salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation,
                           "digest_method": self.digest_method})

    def get_cookie_name(self, app) -> str:
        return COOKIE

    def get_cookie_path(self, app) -> str:
        return PREFIX

    def get_cookie_domain(self, app) -> None:
        return None  # host-only

    def get_cookie_httponly(self, app) -> bool:
        return True

    def get_cookie_samesite(self, app) -> str:
        return "Strict"

    def get_cookie_secure(self, app) -> bool:
        return request.is_secure


def csrf_token() -> str:
    """This session's CSRF token (made on first use), for the hidden input of every form."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> None:
    expected = session.get("csrf")
    given = request.form.get("csrf_token", "")
    if not isinstance(expected, str) or not hmac.compare_digest(
            expected.encode(), given.encode("utf-8", "surrogateescape")):
        raise CsrfRefused()


def _signed_in_tenant() -> str | None:
    """The session's tenant while its token still opens that tenant, else None."""
    tenant_id, token, since = session.get("tenant"), session.get("token"), session.get("since")
    if not (isinstance(tenant_id, str) and isinstance(token, str) and isinstance(since, int)):
        return None
    if not 0 <= time.time() - since <= SIGN_IN_SECONDS:
        return None
    return tenant_id if token_allows(participants().tokens, token, tenant_id) else None


def _safe_next(value) -> str | None:
    """A console page to go to after signing in; nothing that could lead elsewhere."""
    if not isinstance(value, str) or len(value) > 2048 or not value.startswith(PREFIX + "/"):
        return None
    if "//" in value or "\\" in value or not re.fullmatch(r"[\x21-\x7e]+", value):
        return None
    return None if value.startswith(url_for("console.sign_in")) else value


@bp.before_request
def _require_sign_in():
    """Every page but the sign-in form needs a valid session; every POST its CSRF token."""
    if request.method == "POST":
        request.max_form_memory_size = current_app.config["MAX_CONTENT_LENGTH"]
    if request.endpoint not in _OPEN:
        tenant_id = _signed_in_tenant()
        if tenant_id is None:
            if "tenant" in session:
                session.clear()
                flash("You were signed out: the sign-in expired, or the access token is no "
                      "longer valid for the tenant. Sign in again.")
            target = request.full_path.rstrip("?") if request.method in ("GET", "HEAD") \
                else None
            return redirect(url_for("console.sign_in", next=_safe_next(target)), 303)
        g.console_tenant = tenant_id
    if request.method == "POST":
        _check_csrf()
    return None


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    next_page = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("console/sign_in.html", next_page=next_page, tenant="")
    tenant_id = request.form.get("tenant", "").strip()
    token = request.form.get("token", "")
    status, problem = 200, None
    if not tenant_id or not token:
        status, problem = 400, "Enter both a tenant id and an access token."
    elif len(tenant_id) > MAX_HEADER["X-COREOS-TID"] or \
            len(token) > MAX_HEADER["X-COREOS-ACCESS"] or \
            not _PRINTABLE.fullmatch(tenant_id) or not _PRINTABLE.fullmatch(token):
        status, problem = 400, (
            f"A tenant id has at most {MAX_HEADER['X-COREOS-TID']} characters and an access "
            f"token at most {MAX_HEADER['X-COREOS-ACCESS']}, all printable ASCII.")
    elif not token_allows(participants().tokens, token, tenant_id):
        status, problem = 401, ("That access token is unknown, revoked, or not valid for this "
                                "tenant id.")
    if problem is not None:
        return render_template("console/sign_in.html", next_page=next_page, problem=problem,
                               tenant=tenant_id[:MAX_HEADER["X-COREOS-TID"]]), status
    session.clear()
    session.update(tenant=tenant_id, token=token, since=int(time.time()),
                   csrf=secrets.token_urlsafe(32))
    return redirect(next_page or url_for("console.types"), 303)


@bp.post("/sign-out")
def sign_out():
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("console.sign_in"), 303)
