"""Test helpers for outbound HTTP: a loopback receiver that records requests, and signature
checks. (`rows`, re-exported from tests/conftest.py, reads either backend's tables.)"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import rows

__all__ = ["Received", "Receiver", "Reply", "rows", "verify_signature"]


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it (header names lower-cased)."""

    method: str
    path: str
    headers: dict
    body: bytes
    at: float  # time.time() on arrival

    def json(self):
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


@dataclass(frozen=True)
class Reply:
    """How to answer one request; a path's last Reply repeats once its sequence is used up."""

    status: int = 200
    body: bytes | str | dict | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0                    # seconds before answering (cut short by close())
    retry_after: str | int | None = None
    location: str | None = None
    on_receive: Callable[[Received], None] | None = None  # runs before the answer is sent

    def encoded_body(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a connection that never sends a request must not keep close() waiting

    def _serve(self):
        receiver: Receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path.split("?", 1)[0],
                            {k.lower(): v for k, v in self.headers.items()}, body, time.time())
        reply = receiver._arrived(received)
        if reply.on_receive is not None:
            try:
                reply.on_receive(received)
            except Exception as error:  # surfaced by Receiver.close() in the test's thread
                receiver.errors.append(error)
        if reply.delay and receiver._closing.wait(reply.delay):
            return  # closing: drop the connection without answering
        payload = reply.encoded_body()
        self.send_response(reply.status)
        headers = dict(reply.headers)
        if reply.retry_after is not None:
            headers["Retry-After"] = str(reply.retry_after)
        if reply.location is not None:
            headers["Location"] = reply.location
        if payload:
            headers.setdefault("Content-Type", "application/json")
        headers["Content-Length"] = str(len(payload))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args):
        pass


class _KeepAliveHandler(_Handler):
    protocol_version = "HTTP/1.1"  # the connection stays open for the client's next request


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread

    def verify_request(self, request, client_address) -> bool:
        with self.receiver._lock:
            self.receiver.connections += 1
        return True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and hung up is what some tests are about


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request; answers are programmed per path.
    HTTP/1.0 (a connection per request) unless `keep_alive`."""

    def __init__(self, keep_alive: bool = False):
        self.requests: list[Received] = []
        self.errors: list[Exception] = []
        self.connections = 0  # accepted TCP connections, including ones that sent nothing
        self._programs: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._arrival = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _KeepAliveHandler if keep_alive else _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/callback") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def program(self, path: str, *replies: Reply) -> None:
        """Answer requests to `path` with `replies` in turn, the last one from then on."""
        with self._lock:
            self._programs[path] = list(replies)

    def _arrived(self, received: Received) -> Reply:
        with self._arrival:
            self.requests.append(received)
            self._arrival.notify_all()
            replies = self._programs.get(received.path)
            if not replies:
                return Reply()
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 10.0
                 ) -> list[Received]:
        """Block until `count` requests (to `path`, if given) have arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._arrival:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                left = deadline - time.monotonic()
                if len(got) >= count or left <= 0:
                    break
                self._arrival.wait(left)
        assert len(got) >= count, f"{len(got)} of {count} requests to {path or 'any path'}"
        return got

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def verify_signature(secret: str, received: Received) -> bool:
    """Standard Webhooks v1, written from the spec: HMAC-SHA256 of "id.timestamp.body"."""
    key = secret.encode("utf-8")
    signed = (f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}."
              .encode() + received.body)
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = received.headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, s) for s in offered)
