"""Outbound URL safety: what check_url refuses at request time and send() at connect time.

Names are answered by an in-process resolver (socket.getaddrinfo patched for the test), so DNS
rebinding to loopback can be shown without a real DNS server; a loopback "canary" receiver
counts every TCP connection that reaches it.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from engine.delivery.outbound import (
    Connections,
    OutboundRefused,
    check_url,
    is_public,
    parse_literal,
    send,
)
from tests.conftest import BASE, close_app, headers, make_app
from tests.receivers import Receiver, Reply, rows

REGISTERED = {"registrationNumber": "AB-1234"}

LOOPBACK_AND_PRIVATE = [
    pytest.param("http://127.0.0.1/", id="loopback"),
    pytest.param("http://2130706433/", id="loopback-decimal"),
    pytest.param("http://0177.0.0.1/", id="loopback-octal"),
    pytest.param("http://017700000001/", id="loopback-octal-whole"),
    pytest.param("http://0x7f.0.0.1/", id="loopback-hex"),
    pytest.param("http://0x7f000001/", id="loopback-hex-whole"),
    pytest.param("http://127.1/", id="loopback-short"),
    pytest.param("http://127.0.1:8080/x", id="loopback-short-3"),
    pytest.param("http://127.255.255.254/", id="loopback-slash-8"),
    pytest.param("http://0.0.0.0/", id="unspecified"),
    pytest.param("http://0/", id="unspecified-short"),
    pytest.param("http://10.0.0.1/", id="10/8"),
    pytest.param("http://167772161/", id="10/8-decimal"),
    pytest.param("http://172.16.0.1/", id="172.16/12"),
    pytest.param("http://172.31.255.254/", id="172.16/12-top"),
    pytest.param("http://0xac100001/", id="172.16/12-hex"),
    pytest.param("http://192.168.1.1/", id="192.168/16"),
    pytest.param("http://0300.0250.0.1/", id="192.168/16-octal"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="metadata"),
    pytest.param("https://169.254.169.254/", id="metadata-https"),
    pytest.param("http://2852039166/", id="metadata-decimal"),
    pytest.param("http://0xa9.0xfe.0xa9.0xfe/", id="metadata-hex"),
    pytest.param("http://100.64.0.1/", id="cgnat"),
    pytest.param("http://100.127.255.254/", id="cgnat-top"),
    pytest.param("http://224.0.0.1/", id="multicast"),
    pytest.param("http://255.255.255.255/", id="broadcast"),
    pytest.param("http://198.18.0.1/", id="benchmarking"),
    pytest.param("http://240.0.0.1/", id="reserved"),
    pytest.param("http://[::1]/", id="ipv6-loopback"),
    pytest.param("http://[0:0:0:0:0:0:0:1]:8080/", id="ipv6-loopback-long"),
    pytest.param("http://[::]/", id="ipv6-unspecified"),
    pytest.param("http://[fe80::1]/", id="ipv6-link-local"),
    pytest.param("http://[fe80::1%25eth0]/", id="ipv6-link-local-zone"),
    pytest.param("http://[fc00::1]/", id="ipv6-unique-local"),
    pytest.param("http://[fd12:3456::1]/", id="ipv6-unique-local-fd"),
    pytest.param("http://[ff02::1]/", id="ipv6-multicast"),
    pytest.param("http://[::ffff:127.0.0.1]/", id="mapped-loopback"),
    pytest.param("http://[::ffff:7f00:1]/", id="mapped-loopback-hex"),
    pytest.param("http://[::ffff:169.254.169.254]/", id="mapped-metadata"),
    pytest.param("http://[::ffff:10.0.0.1]/", id="mapped-private"),
    pytest.param("http://[64:ff9b::7f00:1]/", id="nat64-loopback"),
    pytest.param("http://[64:ff9b::169.254.169.254]/", id="nat64-metadata"),
    pytest.param("http://[64:ff9b:1::a00:1]/", id="nat64-local-private"),
    pytest.param("http://[2002:7f00:1::]/", id="6to4-loopback"),
    pytest.param("http://[2002:a9fe:a9fe::1]/", id="6to4-metadata"),
    pytest.param("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", id="teredo"),
    pytest.param("http://[::127.0.0.1]/", id="ipv4-compatible-loopback"),
    pytest.param("http://[::ffff:0:127.0.0.1]/", id="ipv4-translated-loopback"),
]

LOCAL_NAMES = [
    pytest.param("http://localhost/", id="localhost"),
    pytest.param("http://LOCALHOST:8080/cb", id="localhost-upper"),
    pytest.param("http://localhost.localdomain/", id="localhost-localdomain"),
    pytest.param("http://ip6-localhost/", id="ip6-localhost"),
    pytest.param("http://api.localhost/", id="sub-localhost"),
    pytest.param("http://printer.local/", id="mdns-local"),
    pytest.param("http://metadata.google.internal/computeMetadata/v1/", id="internal"),
    pytest.param("http://localhost./", id="localhost-trailing-dot"),
    pytest.param("http://127\u30020\u30020\u30021/", id="ideographic-full-stops"),
]

NOT_HTTP = [
    pytest.param("http://user:pass@example.com/", id="credentials"),
    pytest.param("http://user@example.com/", id="username"),
    pytest.param("http://:@example.com/", id="empty-credentials"),
    pytest.param("http://example.com@127.0.0.1/", id="credentials-to-loopback"),
    pytest.param("ftp://example.com/", id="ftp"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("gopher://example.com:70/_GET", id="gopher"),
    pytest.param("dict://example.com:11211/stat", id="dict"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("//example.com/cb", id="scheme-relative"),
    pytest.param("example.com/cb", id="no-scheme"),
    pytest.param("http:///cb", id="no-host"),
    pytest.param("http://[::1/", id="broken-brackets"),
    pytest.param("http://example.com:99999/", id="port-out-of-range"),
    pytest.param("http://example.com /cb", id="space"),
    pytest.param(" http://example.com/cb", id="leading-space"),
    pytest.param("\thttp://example.com/cb", id="leading-tab"),
    pytest.param("http://example.com/cb\r\nX-Injected: 1", id="crlf"),
    pytest.param("http://exa\nmple.com/cb", id="newline-in-host"),
]

VECTORS = LOOPBACK_AND_PRIVATE + LOCAL_NAMES + NOT_HTTP


@pytest.fixture
def canary():
    """A loopback listener that must never be reached by a refused request."""
    with Receiver() as r:
        yield r


@pytest.fixture
def resolver(monkeypatch, canary):
    """Answers every name with the canary's loopback address; `answers` overrides per name."""
    real = socket.getaddrinfo
    calls = []
    answers: dict[str, list[str]] = {}

    def fake(host, port, *args, **kwargs):
        if parse_literal(str(host)) is not None:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        addresses = answers.get(host, ["127.0.0.1"])
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, canary.port) if ":" not in a else (a, canary.port, 0, 0))
                for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    fake.calls, fake.answers = calls, answers
    return fake


@pytest.fixture
def strict_app(database):
    """The service with PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS=0, as in production."""
    app = make_app(database, PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS="0")
    yield app
    close_app(app)


# -- check_url ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", VECTORS)
def test_check_url_refuses(url):
    """Not-public addresses in any spelling, local names and non-http URLs are refused."""
    with pytest.raises(OutboundRefused):
        check_url(url, allow_private=False)


@pytest.mark.parametrize("url", NOT_HTTP)
def test_check_url_refuses_bad_urls_even_when_private_addresses_are_allowed(url):
    """Allowing loopback receivers never allows credentials, other schemes or whitespace."""
    with pytest.raises(OutboundRefused):
        check_url(url, allow_private=True)


@pytest.mark.parametrize(("url", "target"), [
    ("http://93.184.216.34/cb", ("http", "93.184.216.34", 80, "/cb")),
    ("https://8.8.8.8:8443/x?y=1", ("https", "8.8.8.8", 8443, "/x?y=1")),
    ("http://[2606:4700:4700::1111]/", ("http", "2606:4700:4700::1111", 80, "/")),
    ("https://hooks.example.com", ("https", "hooks.example.com", 443, "/")),
])
def test_check_url_accepts_public_urls(url, target):
    """A public literal (or a name, resolved later) passes, parsed into scheme, host, port, path."""
    checked = check_url(url, allow_private=False)
    assert (checked.scheme, checked.host, checked.port, checked.path) == target


def test_check_url_allows_loopback_when_configured():
    """PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS=1 is what lets tests use loopback receivers."""
    assert check_url("http://127.0.0.1:5000/cb", allow_private=True).port == 5000


@pytest.mark.parametrize(("text", "address"), [
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"), ("[::1]", "::1"), ("fe80::1%eth0", "fe80::1"),
    ("93.184.216.34", "93.184.216.34"), ("example.com", None), ("1.2.3.4.5", None),
])
def test_parse_literal_reads_every_form_a_resolver_accepts(text, address):
    """parse_literal reads the historic IPv4 shorthands and bracketed IPv6."""
    parsed = parse_literal(text)
    assert (None if parsed is None else str(parsed)) == address


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700:4700::1111", True), ("::ffff:93.184.216.34", True),
    ("127.0.0.1", False), ("100.64.0.1", False), ("::ffff:169.254.169.254", False),
    ("64:ff9b::a9fe:a9fe", False), ("2002:c0a8:101::", False), ("ff0e::1", False),
])
def test_is_public(address, public):
    """Globally routable unicast only, looking inside embedded IPv4 forms."""
    assert is_public(ipaddress.ip_address(address)) is public


# -- send ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", VECTORS)
def test_send_refuses_before_connecting(url, resolver, canary):
    """send() refuses every vector; names resolved to loopback never reach the canary."""
    with pytest.raises(OutboundRefused):
        send(url, body=b"{}", connect_timeout=0.5, read_timeout=0.5)
    assert canary.connections == 0


def test_a_name_that_resolves_to_loopback_is_refused_at_connect_time(resolver, canary):
    """DNS rebinding: the name passes check_url, but its address is checked before connecting."""
    url = f"http://rebind.example:{canary.port}/cb"
    assert check_url(url, allow_private=False).host == "rebind.example"
    with pytest.raises(OutboundRefused, match="127.0.0.1"):
        send(url, body=b"{}")
    assert resolver.calls == ["rebind.example"]
    assert canary.connections == 0
    # The same request where loopback is allowed does reach the canary: the refusal was real.
    assert send(url, body=b"{}", allow_private=True).status == 200
    assert canary.connections == 1
    assert [r.path for r in canary.received()] == ["/cb"]


def test_every_resolved_address_is_checked(resolver, canary):
    """One private address among public ones refuses the whole name."""
    resolver.answers["mixed.example"] = ["93.184.216.34", "127.0.0.1"]
    with pytest.raises(OutboundRefused):
        send(f"http://mixed.example:{canary.port}/", body=b"{}")
    resolver.answers["mixed6.example"] = ["2606:4700:4700::1111", "::ffff:127.0.0.1"]
    with pytest.raises(OutboundRefused):
        send(f"http://mixed6.example:{canary.port}/", body=b"{}")
    assert canary.connections == 0


def test_a_name_is_resolved_once_and_the_checked_address_is_used(resolver, canary):
    """A rebinding resolver gets one question: the connection goes to the answer that was
    checked, not to a second lookup's."""
    resolver.answers["flip.example"] = ["127.0.0.1"]
    reply = send(f"http://flip.example:{canary.port}/once", allow_private=True)
    assert reply.status == 200
    assert resolver.calls == ["flip.example"]
    (got,) = canary.received("/once")
    assert got.headers["host"].startswith("flip.example")


def test_a_redirect_to_the_metadata_address_is_not_followed(canary, resolver):
    """send() returns a 3xx as it is: neither the metadata address nor a loopback hop is tried."""
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    canary.program("/to-metadata", Reply(302, location=metadata))
    canary.program("/hop", Reply(307, location=canary.url("/second-hop")))
    canary.program("/to-rebind", Reply(301, location=f"http://rebind.example:{canary.port}/x"))

    for path in ("/to-metadata", "/hop", "/to-rebind"):
        reply = send(canary.url(path), body=b"{}", allow_private=True)
        assert 300 <= reply.status < 400
    assert reply.headers["location"].startswith("http://rebind.example")
    assert [r.path for r in canary.received()] == ["/to-metadata", "/hop", "/to-rebind"]
    assert canary.connections == 3
    assert resolver.calls == []


# -- the API and the dispatcher with private addresses refused ----------------------------------

@pytest.mark.parametrize("field", ["callback", "onRequest", "onError"])
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/cb", "http://2130706433/", "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::7f00:1]/", "http://localhost/", "http://u:p@example.com/",
    "ftp://example.com/", "http://example.com /x",
])
def test_a_refused_url_in_a_create_is_a_400_naming_the_field(strict_app, field, url):
    """The request is refused before anything is written; the error names the field's path."""
    client = strict_app.test_client()
    body = {"uniqueCode": "V-1", "properties": REGISTERED, field: {"url": url}}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers())
    assert response.status_code == 400, response.get_data(as_text=True)
    errors = response.json["error"]["additionalInfo"]["errors"]
    assert [e["path"] for e in errors] == [f"$.{field}.url"]
    for table in ("events", "outbox", "participants", "idempotency"):
        assert rows(strict_app, f"SELECT COUNT(*) FROM {table}") == [(0,)], table


def test_every_refused_url_of_an_update_and_a_state_event_is_listed(strict_app):
    """Update and state-event requests are checked the same way, all fields at once."""
    client = strict_app.test_client()
    created = client.post(f"{BASE}/vehicles", json={"uniqueCode": "V-1", "properties": REGISTERED},
                          headers=headers())
    pid = created.json["data"]["id"]
    bad = {"callback": {"url": "http://10.0.0.1/"}, "onRequest": {"url": "http://[::1]/"},
           "onError": {"url": "http://169.254.169.254/"}}
    update = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {}, **bad},
                        headers=headers())
    event = client.put(f"{BASE}/vehicles/{pid}/state/event", headers=headers(), json={
        "eventCode": "E-022", "timestamp": 1_700_000_000, "source": {"appId": "t"}, **bad})
    for response in (update, event):
        assert response.status_code == 400, response.get_data(as_text=True)
        assert sorted(e["path"] for e in response.json["error"]["additionalInfo"]["errors"]) == [
            "$.callback.url", "$.onError.url", "$.onRequest.url"]
    assert rows(strict_app, "SELECT COUNT(*) FROM events") == [(1,)]


def test_a_public_callback_is_accepted_when_private_ones_are_refused(strict_app):
    """The check refuses only what it should: a public literal is a normal 202."""
    body = {"uniqueCode": "V-1", "properties": REGISTERED,
            "callback": {"url": "http://93.184.216.34/cb"}}
    response = strict_app.test_client().post(f"{BASE}/vehicles", json=body, headers=headers())
    assert response.status_code == 202
    assert rows(strict_app, "SELECT url, status FROM outbox") == [
        ("http://93.184.216.34/cb", "pending")]


def test_a_callback_name_rebound_to_loopback_is_a_failed_delivery(strict_app, resolver, canary):
    """The name is accepted at request time; the dispatcher refuses its loopback address, marks
    the delivery failed with the reason, and never connects."""
    url = f"http://rebind.example:{canary.port}/cb"
    body = {"uniqueCode": "V-1", "properties": REGISTERED, "callback": {"url": url}}
    response = strict_app.test_client().post(f"{BASE}/vehicles", json=body, headers=headers())
    assert response.status_code == 202
    dispatcher = strict_app.extensions["participants"].dispatcher()
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0

    assert canary.connections == 0
    ((status, attempts),) = rows(strict_app, "SELECT status, attempts FROM outbox")
    assert (status, attempts) == ("failed", 1)
    ((code, error, outcome),) = rows(strict_app,
                                     "SELECT status_code, error, outcome FROM deliveries")
    assert (code, outcome) == (None, "failed")
    assert error.startswith("refused") and "127.0.0.1" in error


def test_a_waited_hook_name_rebound_to_loopback_fails_the_operation(strict_app, resolver,
                                                                     canary):
    """A waited onRequest hook is checked at connect time too: a failure event, no connection."""
    hook = {"url": f"http://rebind.example:{canary.port}/hook", "onResponse": {"wait": True}}
    body = {"uniqueCode": "V-1", "properties": REGISTERED, "onRequest": hook}
    response = strict_app.test_client().post(f"{BASE}/vehicles", json=body, headers=headers())
    assert response.status_code == 202, response.get_data(as_text=True)
    event = response.json["data"]["event"]
    assert event["payloadValidated"] is False
    assert event["errors"][0]["path"] == "$.onRequest.url"
    assert "127.0.0.1" in event["errors"][0]["message"]
    assert canary.connections == 0


# -- keep-alive connections ---------------------------------------------------------------------

def test_connections_reuse_one_connection_per_host():
    """Requests to a receiver that keeps connections alive share one; each gets its answer."""
    with Receiver(keep_alive=True) as receiver, Connections() as connections:
        receiver.program("/a", Reply(200, body={"n": 1}), Reply(201, body={"n": 2}))
        answers = [connections.send(receiver.url("/a"), body=b'{"x": 1}', allow_private=True)
                   for _ in range(3)]
        assert [a.status for a in answers] == [200, 201, 201]
        assert answers[0].body == b'{"n": 1}'
        assert (connections.opened, receiver.connections) == (1, 1)
        assert len(receiver.received("/a")) == 3


def test_connections_open_a_new_one_when_the_server_closes_each():
    """An HTTP/1.0 receiver closes after every answer: nothing is kept, nothing is lost."""
    with Receiver() as receiver, Connections() as connections:
        for _ in range(3):
            assert connections.send(receiver.url("/b"), allow_private=True).status == 200
        assert (connections.opened, receiver.connections) == (3, 3)


def test_connections_check_every_url_before_reusing_anything():
    """A pooled connection is never a way around the address checks."""
    with Receiver(keep_alive=True) as receiver, Connections() as connections:
        assert connections.send(receiver.url("/c"), allow_private=True).status == 200
        with pytest.raises(OutboundRefused):
            connections.send(receiver.url("/c"), allow_private=False)
        assert len(receiver.received("/c")) == 1
