"""Outbound HTTP for callbacks and hooks: the address actually connected to is checked.

Names are resolved once, every resolved address is checked, and the connection goes to the
checked address itself, so DNS rebinding cannot swap in another one; redirects are never
followed, so they cannot lead anywhere either.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

__all__ = ["Connections", "OutboundRefused", "Response", "check_url", "is_public", "send"]

USER_AGENT = "participant-service/1.0"
MAX_RESPONSE_BYTES = 64 * 1024

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")          # deprecated ::a.b.c.d
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT ::ffff:0:a.b.c.d
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_6TO4 = ipaddress.IPv6Network("2002::/16")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class OutboundRefused(Exception):
    """The URL may not be called: bad scheme, or an address that is not public."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL or ip in _IPV4_COMPATIBLE or ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for globally routable unicast addresses (and their embedded IPv4 forms)."""
    if ip.is_multicast or ip.is_unspecified or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and not is_public(inner):
            return False
    return True


def parse_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address written in any form a resolver accepts (2130706433, 0x7f.1, 127.1, [::1])."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:  # inet_aton accepts the historic shorthands: decimal, octal, hex, fewer parts
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def normalize_host(host: str) -> str:
    """The host as a resolver sees it: IDNA-mapped ('127。0。0。1' is 127.0.0.1), no final dot."""
    if host.startswith("["):
        return host
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return ""
    return host.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def check_url(url: str, *, allow_private: bool) -> Target:
    """Parse and check a callback or hook URL without resolving names (request time)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise OutboundRefused(f"'{url}' is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused(f"'{url}' must be an http or https URL")
    host = normalize_host(parts.hostname or "")
    if not host:
        raise OutboundRefused(f"'{url}' has no valid host")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused(f"'{url}' must not carry credentials; use requestHeader")
    if any(c in url for c in "\r\n\t "):
        raise OutboundRefused(f"'{url}' contains whitespace")
    if not allow_private:
        literal = parse_literal(host)
        if literal is not None and not is_public(literal):
            raise OutboundRefused(f"'{url}' points to a non-public address ({literal})")
        if literal is None and (host.lower() in _LOCAL_NAMES or host.lower().endswith(
                (".localhost", ".local", ".internal"))):
            raise OutboundRefused(f"'{url}' points to a local host name")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, host, port or default, path)


def _resolve(host: str, port: int, allow_private: bool) -> list[tuple]:
    literal = parse_literal(host)
    if literal is not None:
        infos = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                  (str(literal), port))]
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise OSError(f"cannot resolve {host}: {error.strerror}") from None
        infos = [(family, sockaddr[:2]) for family, _t, _p, _c, sockaddr in found]
    allowed = []
    for family, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if allow_private or is_public(ip):
            allowed.append((family, sockaddr))
        else:
            raise OutboundRefused(f"{host} resolves to a non-public address ({ip})")
    if not allowed:
        raise OSError(f"{host} has no address")
    return allowed


class _PinnedConnection(http.client.HTTPConnection):
    """Connects only to addresses checked by `_resolve`."""

    def __init__(self, host, port, *, timeout, allow_private):
        super().__init__(host, port, timeout=timeout)
        self.allow_private = allow_private
        self.connected_to: str | None = None

    def connect(self):
        error: OSError | None = None
        for family, sockaddr in _resolve(self.host, self.port, self.allow_private):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            # http.client writes the headers and the body separately: without this, Nagle's
            # algorithm holds the body back until the headers are acknowledged, and a receiver
            # that delays its ACK stalls every request on a kept-alive connection by ~40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock, self.connected_to = sock, sockaddr[0]
            return
        raise error or OSError(f"cannot connect to {self.host}")


class _PinnedTLSConnection(_PinnedConnection):
    default_port = 443

    def connect(self):
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict
    body: bytes
    elapsed_ms: int


def _exchange(conn: _PinnedConnection, target: Target, method: str, headers: dict | None,
              body: bytes, read_timeout: float) -> tuple[Response, bool]:
    """One request on an open connection: the response, and whether the connection may carry
    another (the whole body was read and the server did not ask to close)."""
    started = time.monotonic()
    conn.sock.settimeout(read_timeout)
    all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    if body:
        all_headers.setdefault("Content-Type", "application/json")
    conn.request(method.upper(), target.path, body=body or None, headers=all_headers)
    reply = conn.getresponse()
    data = reply.read(MAX_RESPONSE_BYTES + 1)
    reusable = conn.sock is not None and reply.isclosed() and len(data) <= MAX_RESPONSE_BYTES
    return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()},
                    data[:MAX_RESPONSE_BYTES], int((time.monotonic() - started) * 1000)), reusable


def _open(target: Target, *, allow_private: bool, connect_timeout: float) -> _PinnedConnection:
    cls = _PinnedTLSConnection if target.scheme == "https" else _PinnedConnection
    conn = cls(target.host, target.port, timeout=connect_timeout, allow_private=allow_private)
    try:
        conn.connect()
    except BaseException:
        conn.close()
        raise
    return conn


def send(url: str, *, method: str = "POST", headers: dict | None = None, body: bytes = b"",
         allow_private: bool = False, connect_timeout: float = 5.0, read_timeout: float = 10.0
         ) -> Response:
    """One HTTP request, no redirects followed; raises OutboundRefused or OSError."""
    target = check_url(url, allow_private=allow_private)
    started = time.monotonic()
    conn = None
    try:
        conn = _open(target, allow_private=allow_private, connect_timeout=connect_timeout)
        response, _ = _exchange(conn, target, method, headers, body, read_timeout)
        return replace(response, elapsed_ms=int((time.monotonic() - started) * 1000))
    except (http.client.HTTPException, ssl.SSLError) as error:
        raise OSError(f"{type(error).__name__}: {error}") from None
    finally:
        if conn is not None:
            conn.close()


# A reused connection the server has meanwhile closed fails like this before any answer.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)


class Connections:
    """Keep-alive connections per (scheme, host, port) for a run of deliveries, safe to share
    between threads; `send` is `send` with reuse. Each connection was opened to an address
    checked when it was opened, so reuse cannot reach anything the check would refuse.

    A reused connection the server closed while it sat idle is retried once on a new one (at
    least once delivery: a receiver de-duplicates by webhook-id). `close()` closes the idle ones.
    """

    def __init__(self, per_host: int = 16):
        self.per_host = per_host
        self._idle: dict[tuple, list[_PinnedConnection]] = {}
        self._lock = threading.Lock()
        self.opened = 0  # connections made, for figures and tests

    def send(self, url: str, *, method: str = "POST", headers: dict | None = None,
             body: bytes = b"", allow_private: bool = False, connect_timeout: float = 5.0,
             read_timeout: float = 10.0) -> Response:
        target = check_url(url, allow_private=allow_private)
        key = (target.scheme, target.host, target.port, allow_private)
        started = time.monotonic()
        with self._lock:
            idle = self._idle.get(key)
            conn = idle.pop() if idle else None
        reused = conn is not None
        try:
            while True:
                if conn is None:
                    conn = _open(target, allow_private=allow_private,
                                 connect_timeout=connect_timeout)
                    with self._lock:
                        self.opened += 1
                try:
                    response, reusable = _exchange(conn, target, method, headers, body,
                                                   read_timeout)
                    break
                except _STALE:
                    if not reused:
                        raise
                    conn.close()
                    conn, reused = None, False
        except (http.client.HTTPException, ssl.SSLError) as error:
            if conn is not None:
                conn.close()
            raise OSError(f"{type(error).__name__}: {error}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if reusable:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.per_host:
                    idle.append(conn)
                    conn = None
        if conn is not None:
            conn.close()
        return replace(response, elapsed_ms=int((time.monotonic() - started) * 1000))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
