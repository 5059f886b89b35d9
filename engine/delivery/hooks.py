"""OS1 onRequest / onError hooks: header templates, the waited call, and what it decides."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from engine.delivery.outbound import OutboundRefused, send
from engine.errors import Issue
from engine.model.commands import Command, replace_fields
from engine.model.conventions import compact_json

__all__ = ["HookCaller", "expand_headers", "hook_body"]

TEMPLATES = ("request_id", "tenant_id", "token")


def expand_headers(headers: dict | None, command: Command) -> dict:
    """requestHeader values with {{request_id}}, {{tenant_id}} and {{token}} filled in."""
    values = {"request_id": command.request_id, "tenant_id": command.tenant_id,
              "token": command.token or ""}
    out = {}
    for name, value in (headers or {}).items():
        for key in TEMPLATES:
            value = value.replace("{{" + key + "}}", values[key])
        out[name] = value
    return out


def hook_body(hook: dict, command: Command) -> bytes:
    """The hook's requestBody, or the client's request body when it gives none."""
    body = hook.get("requestBody")
    return compact_json(command.body if body is None else body).encode()


def waits(hook: dict | None) -> bool:
    return bool(hook) and bool((hook.get("onResponse") or {}).get("wait"))


@dataclass
class HookCaller:
    allow_private: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 10.0

    def on_request(self, command: Command) -> tuple[Command, dict]:
        """Call a waited onRequest hook; returns the command to run and the call's record."""
        hook = command.on_request
        on_response = hook.get("onResponse") or {}
        acceptable = [c for c in on_response.get("acceptableStatusCodes") or [] if c]
        must_match = on_response.get("raiseErrorOnStatusMismatch", True)
        record: dict = {"url": hook["url"]}
        try:
            reply = send(hook["url"], method=hook.get("method") or "POST",
                         headers=expand_headers(hook.get("requestHeader"), command),
                         body=hook_body(hook, command), allow_private=self.allow_private,
                         connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
        except (OutboundRefused, OSError, ValueError) as error:
            record["error"] = str(error)
            if not must_match:
                return command, record
            issue = Issue("$.onRequest.url", f"the onRequest hook {hook['url']} could not be "
                                             f"called: {error}")
            return replace(command, hook_issue=issue), record
        record["status"] = reply.status
        ok = reply.status in acceptable if acceptable else 200 <= reply.status < 300
        if not ok:
            if not must_match:
                return command, record
            expected = ", ".join(map(str, acceptable)) or "2xx"
            issue = Issue("$.onRequest", f"the onRequest hook {hook['url']} answered "
                                         f"{reply.status}, not one of {expected}")
            return replace(command, hook_issue=issue), record
        try:
            answer = json.loads(reply.body) if reply.body else None
        except ValueError:
            answer = None
        command, replacement = replace_fields(command, answer)
        if replacement:
            record.update(replacement)
        return command, record
