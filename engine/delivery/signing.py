"""Standard Webhooks signatures: webhook-id, webhook-timestamp, webhook-signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["secret_key", "sign", "signature_headers"]


def secret_key(secret: str) -> bytes:
    """The HMAC key: a `whsec_` secret's base64-decoded remainder, else the secret's UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError:
            pass  # not base64 after all: use it as text, like any other secret
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str | None, msg_id: str, timestamp: int, body: bytes) -> dict:
    """The three Standard Webhooks headers (the signature only when there is a secret)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secret:
        headers["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return headers
