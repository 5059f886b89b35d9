"""Reading requests strictly: headers, the caller's identity, JSON bodies, and their shape."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from importlib import resources

import jsonschema
import referencing
from flask import Request, g
from referencing.jsonschema import DRAFT202012

from engine.errors import Issue
from engine.loading.yamlfile import load_text
from engine.model.attributes import json_path
from engine.model.conventions import CORE_EDITABLE, CORE_FIELDS
from engine.model.jsonschemas import CompiledSchema, ecma_patterns
from engine.model.strictjson import NulCharacter, strict_loads

from .errors import BadRequest, TooLarge, Unauthorized, UnsupportedMediaType

__all__ = ["Caller", "OPENAPI", "authenticate", "if_match", "problems", "read_json",
           "strict_loads", "token_allows", "validate"]

MAX_HEADER = {"X-COREOS-REQUEST-ID": 255, "X-COREOS-TID": 128, "X-COREOS-ACCESS": 1024,
              "X-COREOS-USERINFO": 4096, "X-COREOS-CALLBACK-SECRET": 1024}
# Where WSGI puts each header (read straight from the environ: it is on every request's path).
_ENVIRON_KEY = {name: "HTTP_" + name.replace("-", "_") for name in MAX_HEADER}
# Core fields no request body sets directly (uniqueCode only on create), and the state's parts.
PROTECTED = (CORE_FIELDS - {*CORE_EDITABLE, "properties"}) | {"mainState", "subState"}
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")


def _load_openapi() -> dict:
    text = resources.files("webapp").joinpath("openapi.yaml").read_text("utf-8")
    doc = load_text(text, "openapi.yaml")
    if not doc.readable:
        raise RuntimeError(f"openapi.yaml is unreadable: {doc.problems}")
    return doc.data


OPENAPI = _load_openapi()
_OPENAPI_ID = "urn:participant-service:openapi"
# Validation uses the document with ECMA-262 `$` semantics in its patterns.
_COMPONENTS = ecma_patterns(OPENAPI["components"])
_REGISTRY = referencing.Registry().with_resource(
    _OPENAPI_ID, DRAFT202012.create_resource({"components": _COMPONENTS}))
_VALIDATORS: dict[str, CompiledSchema] = {}


def schema_validator(name: str) -> CompiledSchema:
    """The compiled validator of components.schemas[name] of the OpenAPI document."""
    validator = _VALIDATORS.get(name)
    if validator is None:
        # The request schemas are written to mean the same in draft-07, so the fast compiled
        # check can take the whole document as its reference base.
        validator = _VALIDATORS[name] = CompiledSchema(
            {}, validator=jsonschema.Draft202012Validator(
                {"$ref": f"{_OPENAPI_ID}#/components/schemas/{name}"}, registry=_REGISTRY),
            fast_schema={"$ref": f"#/components/schemas/{name}", "components": _COMPONENTS})
    return validator


@dataclass(frozen=True, slots=True)
class Caller:
    tenant_id: str
    request_id: str
    token: str
    user_info: dict | None
    callback_secret: str | None


def _header(request: Request, name: str, *, required: bool) -> str | None:
    value = request.environ.get(_ENVIRON_KEY[name])
    if value is None or value == "":
        if required:
            raise BadRequest(f"the header {name} is required",
                             [Issue(f"$.headers.{name}", "is required")])
        return None
    if len(value) > MAX_HEADER[name]:
        raise BadRequest(f"the header {name} is longer than {MAX_HEADER[name]} characters",
                         [Issue(f"$.headers.{name}", f"at most {MAX_HEADER[name]} characters")])
    if not _PRINTABLE.match(value):
        raise BadRequest(f"the header {name} must be printable ASCII",
                         [Issue(f"$.headers.{name}", "must be printable ASCII")])
    return value


def token_table(tokens: dict[str, str]) -> dict[bytes, tuple[bytes, str]]:
    """Access tokens by SHA-256 digest, so lookups leak nothing about a token's text."""
    table = {}
    for token, tenant in tokens.items():
        digest = hashlib.sha256(token.encode()).digest()
        table[digest] = (digest, tenant)
    return table


def token_allows(tokens: dict[bytes, tuple[bytes, str]], token: str, tenant_id: str) -> bool:
    """Whether `token` is a known access token of `tenant_id`; the API and the console ask."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    known_digest, tenant = tokens.get(digest, (b"\0" * 32, None))
    matches = hmac.compare_digest(digest, known_digest)  # always, even for a missing token
    return bool(token) and matches and tenant == tenant_id


def authenticate(request: Request, tokens: dict[bytes, tuple[bytes, str]]) -> Caller:
    """Check the headers every call needs; 400 when malformed, 401 when not allowed."""
    request_id = _header(request, "X-COREOS-REQUEST-ID", required=True)
    tenant_id = _header(request, "X-COREOS-TID", required=True)
    token = request.environ.get(_ENVIRON_KEY["X-COREOS-ACCESS"], "")
    if not token_allows(tokens, token, tenant_id):
        raise Unauthorized("the access token is missing, unknown, or not valid for this tenant")
    user_info = None
    raw = _header(request, "X-COREOS-USERINFO", required=False)
    if raw is not None:
        try:
            user_info = strict_loads(raw)
        except ValueError as error:
            raise BadRequest(f"X-COREOS-USERINFO is not valid JSON: {error}",
                             [Issue("$.headers.X-COREOS-USERINFO", str(error))]) from None
        problems = [Issue(json_path("$.headers.X-COREOS-USERINFO", *e.absolute_path), e.message)
                    for e in schema_validator("UserInfo").iter_errors(user_info)]
        if not isinstance(user_info, dict) or problems:
            raise BadRequest("X-COREOS-USERINFO must be a JSON object {id, name, appId} of texts",
                             problems or [Issue("$.headers.X-COREOS-USERINFO",
                                                "must be a JSON object")])
    secret = _header(request, "X-COREOS-CALLBACK-SECRET", required=False)
    return Caller(tenant_id, request_id, token, user_info, secret)


def _body_bytes(request: Request) -> bytes:
    """The raw body; 413 past MAX_CONTENT_LENGTH, with or without a Content-Length."""
    limit = request.max_content_length  # the app's, unless the view set its own
    length = request.content_length
    if length is not None:
        # Read exactly the declared length from the server's stream: werkzeug's get_data
        # would wrap it in a limited stream and read it in chunks, on every write.
        if limit is not None and length > limit:
            raise TooLarge(f"the body is larger than {limit} bytes")
        raw = request.environ["wsgi.input"].read(length) if length else b""
        if len(raw) != length:
            raise BadRequest(f"the body ended after {len(raw)} of its {length} bytes",
                             [Issue("$", "is incomplete")])
        return raw
    if not request.environ.get("wsgi.input_terminated"):
        return b""  # neither a length nor a terminated stream: no body (as werkzeug reads it)
    # A chunked body: werkzeug would silently cut it at the limit, so read one byte more.
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise TooLarge(f"the body is larger than {limit} bytes")
    return raw


def read_json(request: Request):
    """The body as JSON: 415 unless declared JSON, 413 over the limit, 400 when malformed."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"the body must be application/json, not {request.mimetype or 'undeclared'}")
    raw = _body_bytes(request)
    if not raw:
        raise BadRequest("the body is empty; send a JSON object", [Issue("$", "is required")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the body is not UTF-8 (byte {error.start})",
                         [Issue("$", "is not UTF-8")]) from None
    try:
        body = strict_loads(text, nul=False)
    except NulCharacter as error:  # refused alike on every backend (PostgreSQL cannot store it)
        raise BadRequest(str(error), [Issue(error.path, "contains U+0000 (NUL), which the "
                                                        "service does not store")]) from None
    except ValueError as error:
        raise BadRequest(f"the body is not valid JSON: {error}", [Issue("$", str(error))]) from None
    g.body = body  # echoed in error responses from here on
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", [Issue("$", "must be an object")])
    return body


_SIZES = {"maxLength": "at most", "maxItems": "at most", "maxProperties": "at most",
          "minLength": "at least", "minItems": "at least", "minProperties": "at least"}


def _issues(error: jsonschema.ValidationError, root: str):
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        for key in sorted(set(error.instance) - set(error.schema.get("properties", {}))):
            where = json_path(root, *path, key)
            if not path and key in PROTECTED:
                yield Issue(where, f"'{key}' is a protected field and cannot be set here")
            else:
                yield Issue(where, f"unknown field '{key}'")
    elif error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        yield Issue(json_path(root, *path, missing), "is required")
    elif error.validator in ("pattern", "maxLength") and "description" in error.schema:
        yield Issue(json_path(root, *path), f"{json.dumps(error.instance)} is not a valid "
                    f"{error.schema['description']}")
    elif error.validator in _SIZES and isinstance(error.instance, str | list | dict):
        # said without echoing the value, which may be long
        what = "characters" if isinstance(error.instance, str) else "items"
        yield Issue(json_path(root, *path), f"has {len(error.instance):,} {what}; "
                    f"{_SIZES[error.validator]} {error.validator_value:,}")
    else:
        yield Issue(json_path(root, *path), error.message)


def problems(schema_name: str, body, root: str = "$") -> list[Issue]:
    """Every way `body` does not fit the API's schema `schema_name`, with its path."""
    validator = schema_validator(schema_name)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    return [issue for error in errors for issue in _issues(error, root)]


def validate(schema_name: str, body, root: str = "$") -> None:
    """400 with every problem when `body` does not fit the API's request schema."""
    issues = problems(schema_name, body, root)
    if issues:
        raise BadRequest("the request does not match the API: "
                         + "; ".join(f"{i.path} {i.message}" for i in issues[:5]), issues)


def if_match(request: Request) -> int | None:
    """The version named by If-Match ('3', '"3"', 'W/"3"'); None when absent or '*'."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise BadRequest("If-Match must name a participant version, e.g. \"3\"",
                         [Issue("$.headers.If-Match", "must be a version number")])
    return int(text)
