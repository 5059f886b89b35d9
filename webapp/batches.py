"""The batch routes: accept a batch (JSON or CSV) in one short transaction, and report on it.

Items are applied later, one transaction each, by the dispatcher's BatchWorker. What can be told
from an item alone (its shape, its URLs) is checked here; an item that fails those checks is
stored as failed, never the whole batch's 400.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response, g, request

from engine.errors import Issue
from engine.service import batchcsv, batches, idempotency
from engine.service.batches import Item

from .api import _caller, _check_urls, _state, _type, dumps, echo, respond, url_issues
from .errors import BadRequest, TooLarge, UnsupportedMediaType
from .http import problems, read_json, strict_loads, validate

bp = Blueprint("batches", __name__)

ITEM_SCHEMA = {"create": "CreateRequest", "update": "BatchUpdateItem"}


def _item(kind: str, raw) -> Item:
    """The item, failed already when its shape or its URLs would make a single request a 400."""
    issues = problems(ITEM_SCHEMA[kind], raw)
    if not issues:
        issues = url_issues(raw)
    if not issues:
        return Item(raw)
    return Item(raw, "invalid item" + batches.listed([i.as_dict() for i in issues]))


def _check_count(count: int) -> None:
    limit = _state().max_batch_items
    if count > limit:
        raise TooLarge(f"the batch has {count} items; at most {limit} are accepted in one batch",
                       [Issue("$.payload", f"at most {limit} items")])


def _from_json(kind: str) -> tuple[list[Item], dict | None, dict, dict]:
    """Items, callback, the request's echo and what identifies it, from a JSON body."""
    body = read_json(request)
    payload = body.get("payload")
    summary = {k: v for k, v in body.items() if k != "payload"}
    summary["items"] = len(payload) if isinstance(payload, list) else None
    g.body = summary  # errors echo the batch without its items
    validate("BatchEnvelope", body)
    _check_count(len(payload))
    _check_urls(body)
    return [_item(kind, raw) for raw in payload], body.get("callback"), summary, body


def _from_csv(kind: str) -> tuple[list[Item], dict | None, dict, dict]:
    """Items, callback, the request's echo and what identifies it, from a CSV upload."""
    ptype = _type(request.view_args["plural"])
    unknown = sorted(str(k) if k else "(unnamed)"
                     for k in (set(request.form) | set(request.files)) - {"file", "callback"})
    if unknown:
        raise BadRequest(f"unknown form part(s): {', '.join(unknown)}; send 'file' and, "
                         "optionally, 'callback'", [Issue(f"$.{k}", "unknown form part")
                                                    for k in unknown])
    upload = request.files.get("file")
    raw = upload.read() if upload is not None else request.form.get("file", "").encode()
    if not raw:
        raise BadRequest("the form part 'file' (a CSV file) is required",
                         [Issue("$.file", "is required")])
    callback = None
    if request.form.get("callback"):
        try:
            callback = strict_loads(request.form["callback"], nul=False)
        except ValueError as error:
            raise BadRequest(f"callback is not valid JSON: {error}",
                             [Issue("$.callback", str(error))]) from None
        validate("Callback", callback, "$.callback")
    summary = {"file": upload.filename if upload is not None else None, "callback": callback}
    g.body = summary
    _check_urls({"callback": callback})
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the CSV file is not UTF-8 (byte {error.start})",
                         [Issue("$.file", "is not UTF-8")]) from None
    try:
        items = batchcsv.parse(ptype.definition, kind, text)
    except batchcsv.BatchFileError as error:
        raise BadRequest(str(error), error.issues) from None
    _check_count(len(items))
    summary["items"] = len(items)
    items = [item if item.reason is not None else _item(kind, item.body) for item in items]
    return items, callback, summary, {"file": hashlib.sha256(raw).hexdigest(),
                                      "callback": callback}


def _accept(kind: str, plural: str) -> Response:
    caller = _caller()
    _type(plural)
    state = _state()
    request.max_content_length = state.max_batch_bytes
    request.max_form_memory_size = state.max_batch_bytes
    if request.mimetype == "multipart/form-data":
        items, callback, summary, identity = _from_csv(kind)
    elif request.mimetype == "application/json":
        items, callback, summary, identity = _from_json(kind)
    else:
        raise UnsupportedMediaType("a batch is application/json or multipart/form-data (a CSV "
                                   f"file), not {request.mimetype or 'undeclared'}")
    request_echo = echo(summary)

    def render(batch_id: str) -> tuple[int, str]:
        return 202, dumps({"data": {"id": batch_id}, "request": request_echo})

    status, body, _ = state.service.accept_batch(
        tenant_id=caller.tenant_id, plural=plural, kind=kind,
        request_id=caller.request_id,
        fingerprint=idempotency.fingerprint(request.method, request.path, identity),
        items=items, user_info=caller.user_info, callback=callback,
        callback_secret=caller.callback_secret, token=caller.token, render=render)
    return Response(body, status=status, mimetype="application/json")


@bp.post("/<plural>/batch")
def create_batch(plural):
    return _accept("create", plural)


@bp.put("/<plural>/batch")
def update_batch(plural):
    return _accept("update", plural)


@bp.get("/<plural>/batch/status")
def batch_status(plural):
    caller = _caller()
    _type(plural)
    unknown = sorted(set(request.args) - {"batchId"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)}",
                         [Issue(f"$.{k}", "unknown query parameter") for k in unknown])
    batch_id = request.args.get("batchId")
    if not batch_id:
        raise BadRequest("the query parameter batchId is required",
                         [Issue("$.batchId", "is required")])
    return respond(_state().service.batch_status(caller.tenant_id, plural, batch_id))
