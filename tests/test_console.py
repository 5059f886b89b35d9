"""The console (SPEC §8) through Flask's test client, on both backends: sign-in and its cookie,
CSRF, the pages for every shipped type, dry runs that write nothing, tenant isolation, and
hostile input that only ever gets a 4xx page."""

from __future__ import annotations

import html
import json
import os
import re
import stat
import threading
from html.parser import HTMLParser
from pathlib import Path

import markupsafe
import pytest

from engine.loading.registry import load_registry
from tests.conftest import BASE, ROOT, TEST_MACHINES, close_app, headers, ledger, make_app
from webapp.console.auth import KEY_FILE, configured_key, instance_key

KEY = "console-test-key-0123456789abcdef0123456789abcdef"
MACHINES = ROOT / "machines"
COOKIE = "console_session"
REGISTERED = {"registrationNumber": "AB-1234"}
SCRIPT = "<script>alert(1)</script>"
BREAKOUT = '"><img src=x onerror=alert(1)>'
INVALID_STATE_TRANSITION = "101170021090"


# -- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture
def console_app(app_database):
    application = make_app(app_database, PARTICIPANTS_CONSOLE_SECRET_KEY=KEY)
    yield application
    close_app(application)


@pytest.fixture
def browser(console_app):
    """A test client that is not signed in."""
    return console_app.test_client()


@pytest.fixture
def signed_in(browser):
    """A test client signed in to tenant-a."""
    sign_in(browser)
    return browser


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client, tenant: str = "tenant-a", token: str = "token-a", **extra):
    form = client.get("/console/sign-in")
    assert form.status_code == 200
    return client.post("/console/sign-in", data={"tenant": tenant, "token": token,
                                                 "csrf_token": csrf_of(form.text), **extra})


def csrf(client) -> str:
    """The signed-in session's CSRF token, as a page's forms carry it."""
    return csrf_of(client.get("/console/").text)


def create(client, code: str, tenant: str = "a", **fields) -> str:
    """A vehicle made through the API (it must succeed); its id."""
    body = {"uniqueCode": code, "properties": {**REGISTERED, **fields.pop("properties", {})},
            **fields}
    response = client.post(f"{BASE}/vehicles", json=body, headers=headers(tenant))
    assert response.status_code == 202, response.text
    assert response.json["data"]["event"]["payloadValidated"] is True, response.json
    return response.json["data"]["id"]


def update(client, pid: str, body: dict, tenant: str = "a") -> dict:
    response = client.put(f"{BASE}/vehicles/{pid}", json=body, headers=headers(tenant))
    assert response.status_code == 202, response.text
    return response.json["data"]["event"]


def dry_run(client, plural: str = "vehicles", **fields):
    """POST the dry-run form with the given fields (others empty)."""
    form = {"start": "", "steps": "", "machine": "", "replay": "", **fields}
    page = client.get(f"/console/types/{plural}/dry-run")
    return client.post(f"/console/types/{plural}/dry-run",
                       data={**form, "csrf_token": csrf_of(page.text)})


def result_of(page: str) -> str:
    found = re.search(r'<section data-testid="dry-run-result".*?</section>', page, re.S)
    assert found, page[-3000:]
    return found.group(0)


def step_rows(page: str) -> list[tuple[int, str, str]]:
    """(index, outcome, row html) of each step row of a dry-run result."""
    return [(int(i), outcome, row) for i, outcome, row in re.findall(
        r'<tr data-step-index="(\d+)" data-outcome="(\w+)"[^>]*>(.*?)</tr>', result_of(page),
        re.S)]


def history_rows(page: str) -> list[str]:
    section = re.search(r'<section data-testid="event-history".*?</section>', page, re.S)
    assert section, page[-3000:]
    body = re.search(r"<tbody>(.*?)</tbody>", section.group(0), re.S).group(1)
    return re.findall(r"<tr[ >].*?</tr>", body, re.S)


def text(page: str) -> str:
    """The page's text, tags dropped and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def highlighted(page: str) -> list[str]:
    """The data-state of each highlighted diagram node."""
    found = []
    for tag in re.findall(r"<[^>]*data-highlighted=\"true\"[^>]*>", page):
        state = re.search(r'data-state="([^"]+)"', tag)
        found.append(html.unescape(state.group(1)) if state else tag)
    return found


class _Structure(HTMLParser):
    """What the accessibility checks need: fields and their labels, tables' captions and
    header scopes, and the page's landmarks."""

    def __init__(self):
        super().__init__()
        self.fields: list[dict] = []
        self.labels: set[str] = set()
        self.tables = 0
        self.captions = 0
        self.unscoped_th = 0
        self.tags: set[str] = set()
        self._in_thead = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag in ("input", "select", "textarea") and attrs.get("type") != "hidden":
            self.fields.append(attrs)
        elif tag == "label" and attrs.get("for"):
            self.labels.add(attrs["for"])
        elif tag == "table":
            self.tables += 1
        elif tag == "caption":
            self.captions += 1
        elif tag == "th" and "scope" not in attrs:
            self.unscoped_th += 1


def assert_accessible(page: str) -> None:
    """Landmarks, a skip link, a label for every field, a caption and scoped headers for
    every table."""
    found = _Structure()
    found.feed(page)
    assert {"header", "nav", "main", "footer"} <= found.tags or \
        {"header", "main", "footer"} <= found.tags
    assert 'class="skip-link" href="#main"' in page and 'id="main"' in page
    unlabelled = [f for f in found.fields if f.get("id") not in found.labels]
    assert unlabelled == []
    assert found.tables == found.captions
    assert found.unscoped_th == 0


# -- signing in ---------------------------------------------------------------------------------

def test_sign_in_with_a_valid_token_opens_the_console(browser):
    """The tenant id and its token sign in; the types page then lists the loaded types."""
    response = sign_in(browser)
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/"
    page = browser.get("/console/")
    assert page.status_code == 200
    assert 'href="/console/types/vehicles"' in page.text
    assert "Signed in to tenant <strong>tenant-a</strong>" in page.text
    assert_accessible(page.text)


@pytest.mark.parametrize("tenant, token", [
    ("tenant-a", "token-wrong"), ("tenant-b", "token-a"), ("tenant-a", "token-b")],
    ids=["unknown token", "token of another tenant", "another tenant's token"])
def test_sign_in_refuses_a_token_not_valid_for_the_tenant(browser, tenant, token):
    """An unknown token, or one of another tenant, is refused (401) and nothing opens."""
    response = sign_in(browser, tenant, token)
    assert response.status_code == 401
    assert "access token is unknown, revoked, or not valid for this tenant" in response.text
    assert 'name="token"' in response.text and token not in response.text
    assert browser.get("/console/").status_code == 303


def test_sign_in_form_is_labelled_and_the_token_is_a_password_field(browser):
    page = browser.get("/console/sign-in").text
    assert '<label for="tenant">Tenant id</label>' in page
    assert '<label for="token">Access token</label>' in page
    assert re.search(r'<input id="token" name="token" type="password"', page)
    assert '<button type="submit">Sign in</button>' in page
    assert_accessible(page)


def test_the_session_cookie_is_httponly_samesite_strict_and_for_the_console_only(browser):
    """The signed cookie is HttpOnly, SameSite=Strict, scoped to /console, and not Secure on
    plain http."""
    response = sign_in(browser)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert "httponly" in flags
    assert flags["samesite"] == "SameSite=Strict"
    assert flags["path"] == "Path=/console"
    assert "secure" not in flags
    assert "domain" not in flags


def test_the_session_cookie_is_secure_on_https(browser):
    form = browser.get("/console/sign-in", base_url="https://localhost")
    response = browser.post("/console/sign-in", base_url="https://localhost", data={
        "tenant": "tenant-a", "token": "token-a", "csrf_token": csrf_of(form.text)})
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"].split("; ")


def test_the_api_never_gets_a_session_cookie(signed_in):
    """API responses set no cookie, and carry none of the console's headers."""
    response = signed_in.get(f"{BASE}/vehicles", headers=headers())
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert "Content-Security-Policy" not in response.headers


@pytest.mark.parametrize("path", [
    "/console/", "/console/types/vehicles", "/console/types/vehicles/dry-run",
    "/console/types/vehicles/participants", "/console/participants/vehicles:x",
    "/console/types/nope"])
def test_every_page_redirects_to_sign_in_without_a_session(browser, path):
    """Signed out, every page (even one that does not exist) sends you to sign in, and back
    afterwards."""
    response = browser.get(path)
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("/console/sign-in?next=")
    assert sign_in(browser, next=path).headers["Location"] == path


def test_a_post_without_a_session_redirects_and_does_nothing(console_app, browser):
    before = ledger(console_app)
    response = browser.post("/console/types/vehicles/dry-run", data={"steps": "[]"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    assert ledger(console_app) == before


def test_a_forged_or_foreign_cookie_is_no_session(console_app, browser):
    """A cookie signed with another key, or tampered with, counts as signed out."""
    other = make_app(console_app.config["PARTICIPANTS_DATABASE"],
                     PARTICIPANTS_CONSOLE_SECRET_KEY="another-key-" + "9" * 40)
    try:
        foreign = other.test_client()
        sign_in(foreign)
        value = foreign.get_cookie(COOKIE, path="/console").value
    finally:
        close_app(other)
    browser.set_cookie(COOKIE, value, path="/console")
    assert browser.get("/console/").status_code == 303
    browser.set_cookie(COOKIE, value[:-2] + "xx", path="/console")
    assert browser.get("/console/").status_code == 303


def test_a_revoked_token_signs_the_console_out(console_app, signed_in):
    """The token is checked on every request: the same cookie, presented to an app whose token
    table no longer has the token, is signed out with a message."""
    value = signed_in.get_cookie(COOKIE, path="/console").value
    revoked = make_app(console_app.config["PARTICIPANTS_DATABASE"],
                       PARTICIPANTS_CONSOLE_SECRET_KEY=KEY,
                       PARTICIPANTS_ACCESS_TOKENS=json.dumps({"token-new": "tenant-a"}))
    try:
        client = revoked.test_client()
        client.set_cookie(COOKIE, value, path="/console")
        response = client.get("/console/types/vehicles")
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/console/sign-in")
        form = client.get("/console/sign-in")
        assert "You were signed out" in form.text
        assert client.get("/console/").status_code == 303
    finally:
        close_app(revoked)
    assert signed_in.get("/console/").status_code == 200  # the first app still has the token


def test_sign_out_ends_the_session(signed_in):
    response = signed_in.post("/console/sign-out", data={"csrf_token": csrf(signed_in)})
    assert response.status_code == 303
    assert signed_in.get("/console/").status_code == 303
    assert "You are signed out." in signed_in.get("/console/sign-in").text


def test_sign_in_goes_back_only_to_console_pages(browser):
    """`next` may only name a console page; anything else lands on the types page."""
    for target in ("//evil.example/", "https://evil.example/", "/elsewhere",
                   "/console/\\evil", "/console//evil.example"):
        assert sign_in(browser, next=target).headers["Location"] == "/console/", target
    assert sign_in(browser, next="/console/types/vehicles").headers["Location"] == \
        "/console/types/vehicles"


# -- CSRF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "", "wrong", "é" * 43], ids=["missing", "empty",
                                                                      "wrong", "non-ascii"])
def test_every_post_form_refuses_a_missing_or_wrong_csrf_token(console_app, signed_in, browser,
                                                                token):
    """Sign-in, sign-out and the dry run refuse a POST without the session's CSRF token (400)
    and do nothing."""
    extra = {} if token is None else {"csrf_token": token}
    before = ledger(console_app)
    response = signed_in.post("/console/types/vehicles/dry-run",
                              data={"steps": "- eventCode: E-022", **extra})
    assert response.status_code == 400
    assert "dry-run-result" not in response.text
    assert "Reload the page" in response.text
    response = signed_in.post("/console/sign-out", data=extra)
    assert response.status_code == 400
    assert signed_in.get("/console/").status_code == 200  # still signed in

    fresh = console_app.test_client()
    fresh.get("/console/sign-in")
    response = fresh.post("/console/sign-in",
                          data={"tenant": "tenant-a", "token": "token-a", **extra})
    assert response.status_code == 400
    assert fresh.get("/console/").status_code == 303  # not signed in
    assert ledger(console_app) == before


def test_another_sessions_csrf_token_is_refused(console_app, signed_in):
    other = console_app.test_client()
    sign_in(other)
    response = signed_in.post("/console/sign-out", data={"csrf_token": csrf(other)})
    assert response.status_code == 400


# -- the pages ----------------------------------------------------------------------------------

def test_security_headers_on_every_console_response(signed_in):
    for path in ("/console/", "/console/types/vehicles", "/console/static/console.css",
                 "/console/types/nope", "/console/no-such-page", "/console/sign-in"):
        with signed_in.get(path) as response:
            assert response.headers["Content-Security-Policy"] == (
                "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"), path
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
    assert signed_in.get("/console/").headers["Cache-Control"] == "no-store"
    with signed_in.get("/console/static/console.css") as css:
        assert css.status_code == 200 and css.mimetype == "text/css"
        assert ":focus" in css.text


def test_no_page_needs_a_script_or_another_host(signed_in):
    """No <script>, no inline style (the CSP forbids both), nothing from another host."""
    create(signed_in, "V-1", name="Truck")
    pid = re.search(r'href="/console/participants/([^"]+)"',
                    signed_in.get("/console/types/vehicles/participants").text).group(1)
    for path in ("/console/", "/console/types/vehicles", "/console/types/vehicles/dry-run",
                 "/console/types/vehicles/participants", f"/console/participants/{pid}"):
        page = signed_in.get(path).text
        assert "<script" not in page.lower(), path
        assert " style=" not in page and "<style" not in page, path
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page), path


@pytest.fixture
def shipped(apps):
    """A signed-in client of an app serving the real machines/ folder."""
    application = apps(PARTICIPANTS_MACHINES=str(MACHINES), PARTICIPANTS_CONSOLE_SECRET_KEY=KEY)
    client = application.test_client()
    sign_in(client)
    return client


def test_every_page_renders_for_every_shipped_type(shipped):
    """For each type of machines/: the types page lists it with every sub-state, its page draws
    every sub-state and lists each in the tables, the dry-run example runs as it is, and its
    participants page answers."""
    registry = load_registry(MACHINES)
    index = shipped.get("/console/")
    assert index.status_code == 200
    for plural, ptype in registry.items():
        definition = ptype.definition
        assert f'href="/console/types/{plural}"' in index.text
        assert f"<code>{Path(definition.source).name}</code>" in index.text
        for state in definition.sub_states:
            assert f"<code>{state}</code>" in index.text, (plural, state)

        page = shipped.get(f"/console/types/{plural}")
        assert page.status_code == 200, plural
        diagram = re.search(r'<div data-testid="state-diagram"[^>]*>(.*?)</div>', page.text,
                            re.S).group(1)
        drawn = set(re.findall(r'data-state="([^"]+)"', diagram))
        assert drawn == set(definition.sub_states), plural
        assert "Text equivalent of the diagram" in page.text or \
            "text equivalent of the diagram" in page.text
        for state in definition.sub_states:
            assert f'<th scope="row"><code>{state}</code></th>' in page.text, (plural, state)
        for code in definition.events:
            assert f"<code>{code}</code>" in page.text, (plural, code)
        for name in definition.attributes:
            assert f'<th scope="row"><code>{name}</code></th>' in page.text, (plural, name)
        assert_accessible(page.text)

        form = shipped.get(f"/console/types/{plural}/dry-run")
        assert form.status_code == 200
        assert 'data-testid="dry-run-form"' in form.text
        assert_accessible(form.text)
        fields = {name: html.unescape(value) for name, value in re.findall(
            r'<textarea id="(\w+)"[^>]*>(.*?)</textarea>', form.text, re.S)}
        assert fields["start"].startswith(f"state: {definition.initial_state}\n")
        ran = shipped.post(f"/console/types/{plural}/dry-run",
                           data={**fields, "replay": "", "csrf_token": csrf_of(form.text)})
        assert ran.status_code == 200, ran.text[-2000:]
        assert len(step_rows(ran.text)) == 1, plural

        listing = shipped.get(f"/console/types/{plural}/participants")
        assert listing.status_code == 200, plural
        assert "0 participants match" in listing.text
        assert_accessible(listing.text)


def test_the_type_page_shows_tables_and_links(signed_in):
    page = signed_in.get("/console/types/vehicles").text
    for caption in ("Attributes of a vehicle", "Events and the reasons each allows",
                    "Reason codes", "Templates: attribute rules narrowed for a category",
                    "Categories and their sub-categories",
                    "Transitions (text equivalent of the diagram): from, event, guard, to"):
        assert re.search(rf"<caption[^>]*>{re.escape(caption)}</caption>", page), caption
    assert 'aria-describedby="transitions-caption"' in page
    assert 'id="transitions-caption"' in page
    assert "Vehicle must be verified before activation" in page  # a guard
    assert "timer: after 30d in the sub-state" in page  # a ttl row
    assert 'href="/console/types/vehicles/dry-run"' in page
    assert 'href="/console/types/vehicles/participants"' in page
    assert "<code>heavyTruck</code>" in page and "Heavy truck" in page


def test_an_unknown_type_is_a_404_page(signed_in):
    response = signed_in.get("/console/types/nope")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "There is no participant type named &#39;nope&#39;." in response.text
    for path in ("/console/types/nope/dry-run", "/console/types/nope/participants"):
        assert signed_in.get(path).status_code == 404


# -- dry run ------------------------------------------------------------------------------------

def test_a_dry_run_shows_success_and_failure_and_highlights_the_reached_state(signed_in):
    """A verified vehicle activates (success); deactivating twice fails the second time with
    the invalid-state-transition code; the reached state is highlighted."""
    steps = [
        {"properties": {**REGISTERED, "verified": True, "capacityKg": 500},
         "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}},
        {"eventCode": "E-023", "reasonCode": "R-0001"},
        {"eventCode": "E-023", "reasonCode": "R-0001"},
    ]
    response = dry_run(signed_in, steps=json.dumps(steps, indent=2))
    assert response.status_code == 200, response.text[-3000:]
    rows = step_rows(response.text)
    assert [(i, outcome) for i, outcome, _ in rows] == [
        (0, "success"), (1, "success"), (2, "failure")]
    assert "✓ Success" in rows[0][2] and "active:active" in rows[0][2]
    assert "✗ Failure" in rows[2][2]
    assert INVALID_STATE_TRANSITION in rows[2][2]
    assert "invalid state transition" in rows[2][2]
    assert "E-022, E-024" in rows[1][2]  # available after the first deactivation
    result = result_of(response.text)
    assert "The participant ends in <code>inactive:inactive</code>" in result
    assert highlighted(response.text) == ["inactive:inactive"]
    assert response.text.count('data-testid="state-diagram"') == 1


def test_a_refused_step_shows_its_error_paths(signed_in):
    """A step refused by a guard keeps the state, and lists each error's path and message."""
    response = dry_run(signed_in, steps="- stateTransition: {eventCode: E-022}\n")
    ((index, outcome, row),) = step_rows(response.text)
    assert (index, outcome) == (0, "failure")
    assert "<code>$.properties.registrationNumber</code>" in row
    assert highlighted(response.text) == ["onboarding:pending"]


def test_the_form_keeps_what_was_typed(signed_in):
    start = "state: onboarding:pending\nproperties: {verified: true}\n"
    steps = "- eventCode: E-101\n  reasonCode: R-7001\n  data: {inspector: ann}\n"
    page = dry_run(signed_in, start=start, steps=steps, replay="").text
    assert html.escape(start, quote=False) in page
    assert html.escape(steps, quote=False) in page


def test_the_get_form_has_a_runnable_example(signed_in):
    page = signed_in.get("/console/types/vehicles/dry-run").text
    assert "state: onboarding:pending" in page
    assert "eventCode: E-022" in page and "reasonCode: R-0001" in page
    assert_accessible(page)
    assert '<button type="submit">Run</button>' in page


def test_a_dry_run_writes_nothing(console_app, signed_in):
    """Every kind of dry run (steps, a create start, a stored start, a draft, a replay)
    leaves every table's row count as it was."""
    pid = create(signed_in, "V-1", properties={"capacityKg": 500})
    update(signed_in, pid, {"stateTransition": {"eventCode": "E-022"}})
    before = ledger(console_app)
    draft = TEST_MACHINES.joinpath("vehicles.yaml").read_text()
    runs = [
        {"steps": "- eventCode: E-022\n"},
        {"start": json.dumps({"create": {"uniqueCode": "V-2", "properties": REGISTERED}}),
         "steps": "- properties: {verified: true}\n"},
        {"start": f"participantId: {pid}", "steps": "- eventCode: E-023\n"},
        {"machine": draft, "steps": "- eventCode: E-022\n"},
        {"machine": draft, "replay": pid},
    ]
    for fields in runs:
        response = dry_run(signed_in, **fields)
        assert response.status_code == 200, (fields, response.text[-2000:])
    assert ledger(console_app) == before


def test_a_create_start_shows_its_outcome(signed_in):
    refused = dry_run(signed_in, start=json.dumps({"create": {"uniqueCode": "V-9",
                                                              "properties": {}}}))
    result = result_of(refused.text)
    assert "Start: create" in result and "✗ Failure" in result
    assert "<code>$.properties.registrationNumber</code>" in result
    assert "There is no final state: the create was refused." in result
    assert highlighted(refused.text) == []
    accepted = dry_run(signed_in, start=json.dumps({"create": {"uniqueCode": "V-9",
                                                               "properties": REGISTERED}}))
    assert "ParticipantCreationSuccessEvent" in result_of(accepted.text)


def test_a_draft_with_a_lint_error_shows_the_problem_and_its_line(signed_in):
    draft = TEST_MACHINES.joinpath("vehicles.yaml").read_text().replace(
        "- {eventCode: E-023, destination: inactive}",
        "- {eventCode: E-023, destination: inactive:nowhere}")
    line = next(i for i, text in enumerate(draft.splitlines(), 1) if "nowhere" in text)
    response = dry_run(signed_in, machine=draft, steps="- eventCode: E-022\n")
    assert response.status_code == 200
    result = result_of(response.text)
    assert "Problems in the draft machine" in result
    assert "The draft machine has lint errors; nothing was decided." in result
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", result, re.S) if "nowhere" in r)
    assert f"<td>{line}</td>" in row and "<td>error</td>" in row
    assert re.search(r"<code>E\d{3}</code>", row)
    assert step_rows(response.text) == []
    assert highlighted(response.text) == []


def test_a_draft_decides_the_steps(signed_in):
    """A draft without the activation guard lets an unverified vehicle activate."""
    draft = _unguarded_draft()
    steps = json.dumps([{"properties": {**REGISTERED, "capacityKg": 5, "verified": False},
                         "stateTransition": {"eventCode": "E-022"}}])
    loaded = step_rows(dry_run(signed_in, steps=steps).text)
    drafted = dry_run(signed_in, machine=draft, steps=steps)
    assert [o for _, o, _ in loaded] == ["failure"]
    assert [o for _, o, _ in step_rows(drafted.text)] == ["success"]
    assert "Decided under the draft machine" in result_of(drafted.text)
    assert highlighted(drafted.text) == ["active:active"]


def _unguarded_draft() -> str:
    text = TEST_MACHINES.joinpath("vehicles.yaml").read_text()
    guard = ("            guard:\n"
             "              description: Vehicle must be verified before activation\n"
             "              schema: {required: [registrationNumber], properties: {verified: "
             "{const: true}}}\n")
    assert guard in text
    return text.replace(guard, "")


def test_replay_shows_which_recorded_requests_a_draft_decides_differently(signed_in):
    """A recorded activation refused by the guard succeeds under a draft without it: that row
    says 'differs', the create's row does not."""
    pid = create(signed_in, "V-1", properties={"capacityKg": 500})
    refused = update(signed_in, pid, {"stateTransition": {"eventCode": "E-022"}})
    assert refused["payloadValidated"] is False
    response = dry_run(signed_in, machine=_unguarded_draft(), replay=pid)
    assert response.status_code == 200, response.text[-2000:]
    rows = step_rows(response.text)
    assert [(i, o) for i, o, _ in rows] == [(0, "success"), (1, "success")]
    assert "differs" not in rows[0][2] and "same" in rows[0][2]
    assert "differs" in rows[1][2]
    assert "✗ Failure" in rows[1][2] and "✓ Success" in rows[1][2]
    assert "1 decided differently" in result_of(response.text)

    same = dry_run(signed_in, replay=pid)
    assert all("differs" not in row for _, _, row in step_rows(same.text))


@pytest.mark.parametrize("fields, status, message", [
    ({"steps": "- eventCode: [E-022\n"}, 400, "Steps, line 2, column 1: not valid YAML"),
    ({"steps": "eventCode: E-022\n"}, 400, "Steps must be a list of steps"),
    ({"steps": "- 1\n"}, 400, "$.steps[0]"),
    ({"steps": "- {eventCode: E-22}\n"}, 400, "$.steps[0].eventCode"),
    ({"steps": "- eventCode: E-022\n  eventCode: E-023\n"}, 400, "duplicate key"),
    ({"start": "- state: x\n"}, 400, "Start must be a mapping"),
    ({"start": "state: nowhere:nothing\n"}, 400, "is not a state of vehicles"),
    ({"start": "{state: onboarding:pending, participantId: x}"}, 400, "$.start"),
    ({"steps": json.dumps([{"eventCode": "E-022"}] * 1001)}, 400, "at most 1,000"),
    ({"steps": "[" * 200 + "]" * 200}, 400, "too large or nested too deeply"),
    ({"steps": "- properties: {name: \"a\\0b\"}\n"}, 400, "U+0000"),
    ({"replay": "vehicles:nobody"}, 404, "There is no participant"),
    ({"replay": "x" * 600}, 400, "at most 512"),
    ({"start": "participantId: vehicles:nobody"}, 404, "There is no participant"),
])
def test_a_malformed_dry_run_is_a_clear_4xx(console_app, signed_in, fields, status, message):
    before = ledger(console_app)
    response = dry_run(signed_in, **fields)
    assert response.status_code == status, response.text[-3000:]
    assert message in text(response.text), text(response.text)[-3000:]
    assert "dry-run-result" not in response.text
    assert 'data-testid="dry-run-form"' in response.text  # the form stays, to fix it
    assert ledger(console_app) == before


def test_billion_laughs_is_refused(signed_in):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    response = dry_run(signed_in, start=bomb)
    assert response.status_code == 400
    assert "too large" in response.text


def test_a_form_over_the_body_limit_is_413(console_app, signed_in):
    limit = console_app.config["MAX_CONTENT_LENGTH"]
    response = dry_run(signed_in, machine="#" * (limit + 1))
    assert response.status_code == 413
    assert "The form is larger than" in response.text and response.mimetype == "text/html"


# -- participants -------------------------------------------------------------------------------

def test_the_participants_list_filters_and_paginates(signed_in):
    """25 a page, newest first, Previous/Next keep the filters; term filters on an indexed
    attribute and on the state."""
    ids = [create(signed_in, f"V-{i:02d}", properties={"fuelType": "Electric" if i % 3 == 0
                                                       else "Diesel"}) for i in range(30)]
    update(signed_in, ids[0], {"properties": {"verified": True, "capacityKg": 9},
                               "stateTransition": {"eventCode": "E-022"}})
    first = signed_in.get("/console/types/vehicles/participants")
    assert first.status_code == 200
    assert "totalElements 30" in first.text
    links = re.findall(r'href="/console/participants/([^"]+)"', first.text)
    assert len(links) == 25 and links[0] == ids[-1]
    assert ">Next</a>" in first.text and ">Previous</a>" not in first.text
    following = html.unescape(re.search(r'href="([^"]+)" rel="next"', first.text).group(1))
    second = signed_in.get(following)
    assert len(re.findall(r'href="/console/participants/', second.text)) == 5
    assert ">Previous</a>" in second.text and ">Next</a>" not in second.text

    electric = signed_in.get("/console/types/vehicles/participants",
                             query_string={"attr.fuelType": "Electric"})
    assert "totalElements 10" in electric.text
    assert 'value="Electric"' in electric.text  # the filter stays in the form
    active = signed_in.get("/console/types/vehicles/participants",
                           query_string={"state": "active:active"})
    assert "totalElements 1" in active.text and ids[0] in active.text
    assert '<option value="active:active" selected>' in active.text
    both = signed_in.get("/console/types/vehicles/participants",
                         query_string={"state": "active:active", "attr.fuelType": "Diesel"})
    assert "totalElements 0" in both.text

    page = signed_in.get("/console/types/vehicles/participants",
                         query_string={"state": "onboarding:pending", "offset": "0",
                                       "plural": "x", "_external": "1"})
    assert "totalElements 29" in page.text
    following = html.unescape(re.search(r'href="([^"]+)" rel="next"', page.text).group(1))
    assert following == ("/console/types/vehicles/participants?state=onboarding:pending"
                         "&offset=25")


@pytest.mark.parametrize("query, message", [
    ({"state": "nowhere"}, "is not a sub-state of this type"),
    ({"offset": "-1"}, "must be a whole number from 0"),
    ({"offset": "ten"}, "must be a whole number from 0"),
    ({"offset": "9" * 30}, "must be a whole number from 0"),
    ({"attr.registrationNumber": "x" * 2000}, "at most 1,024"),
    ({"attr.registrationNumber": "a\x00b"}, "U+0000"),
])
def test_bad_filters_are_a_message_never_a_500(signed_in, query, message):
    response = signed_in.get("/console/types/vehicles/participants", query_string=query)
    assert response.status_code == 400
    assert message in text(response.text)


def test_typed_filters_of_the_shipped_types(shipped):
    """Number and boolean filters are typed; text that is not one is a message."""
    ok = shipped.get("/console/types/riders/participants",
                     query_string={"attr.codCashInHandInr": "12.5",
                                   "attr.backgroundCheckCleared": "true"})
    assert ok.status_code == 200 and "totalElements 0" in ok.text
    for query, message in (({"attr.codCashInHandInr": "lots"}, "must be a number"),
                           ({"attr.backgroundCheckCleared": "yes"}, "must be true or false"),
                           ({"attr.codCashInHandInr": "1e999"}, "must be a number")):
        response = shipped.get("/console/types/riders/participants", query_string=query)
        assert response.status_code == 400, query
        assert message in response.text


def test_the_participant_page_shows_history_with_a_failure_and_its_errors(signed_in):
    pid = create(signed_in, "V-1", name="Big one", properties={"capacityKg": 500})
    refused = update(signed_in, pid, {"properties": {"capacityKg": -5}})
    assert refused["payloadValidated"] is False
    update(signed_in, pid, {"properties": {"verified": True},
                            "stateTransition": {"eventCode": "E-022", "reasonCode": "R-0001"}})
    page = signed_in.get(f"/console/participants/{pid}")
    assert page.status_code == 200
    assert "Big one" in page.text and "<code>active:active</code>" in page.text
    assert highlighted(page.text) == ["active:active"]
    rows = history_rows(page.text)
    assert len(rows) == 3
    assert "ParticipantCreationSuccessEvent" in rows[0] and "✓ Success" in rows[0]
    assert "ParticipantUpdationFailedEvent" in rows[1] and "✗ Failure" in rows[1]
    assert refused["errorCode"] in rows[1]
    assert "<code>$.properties.capacityKg</code>" in rows[1]
    assert "E-022 / R-0001" in rows[2]
    assert '<th scope="row">capacityKg</th><td><code>500</code></td>' in page.text
    assert_accessible(page.text)


def test_a_long_history_is_paginated(signed_in):
    pid = create(signed_in, "V-1")
    for i in range(55):
        update(signed_in, pid, {"name": f"n{i}"})
    first = signed_in.get(f"/console/participants/{pid}")
    assert len(history_rows(first.text)) == 50
    following = html.unescape(re.search(r'href="([^"]+)" rel="next"', first.text).group(1))
    second = signed_in.get(following)
    assert len(history_rows(second.text)) == 6
    assert ">Previous</a>" in second.text
    assert signed_in.get(f"/console/participants/{pid}?offset=x").status_code == 400


# -- tenants ------------------------------------------------------------------------------------

def test_a_tenant_never_sees_another_tenants_participants(console_app, signed_in):
    pid = create(signed_in, "V-1", name="Secret")
    other = console_app.test_client()
    sign_in(other, "tenant-b", "token-b")
    page = other.get(f"/console/participants/{pid}")
    assert page.status_code == 404 and "Secret" not in page.text
    listing = other.get("/console/types/vehicles/participants")
    assert "totalElements 0" in listing.text and pid not in listing.text
    assert dry_run(other, start=f"participantId: {pid}").status_code == 404
    assert dry_run(other, replay=pid).status_code == 404
    assert signed_in.get(f"/console/participants/{pid}").status_code == 200


@pytest.mark.parametrize("pid", [
    "vehicles:nobody", "nope:abc", "vehicles", "vehicles:", "vehicles:a%00b",
    "vehicles:" + "a" * 5000, "VEHICLES:abc", "vehicles:%E2%80%AE"])
def test_an_unknown_or_malformed_participant_id_is_a_404_page(signed_in, pid):
    response = signed_in.get(f"/console/participants/{pid}")
    assert response.status_code == 404
    assert response.mimetype == "text/html"


# -- hostile input ------------------------------------------------------------------------------

def test_markup_in_participants_and_drafts_is_always_escaped(signed_in):
    """Names, properties, error messages, filters, form fields and a draft's description that
    hold markup are shown as text on every page, never as markup."""
    pid = create(signed_in, "V-1", name=SCRIPT,
                 properties={"address": {"city": SCRIPT, "zip": BREAKOUT},
                             "documents": [BREAKOUT]})
    update(signed_in, pid, {"properties": {SCRIPT: 1, "registrationNumber": BREAKOUT}})
    update(signed_in, pid, {"name": BREAKOUT})
    draft = TEST_MACHINES.joinpath("vehicles.yaml").read_text().replace(
        "description: Vehicles that carry shipments.",
        "description: " + json.dumps(f"{SCRIPT} {BREAKOUT}"))
    pages = [
        signed_in.get(f"/console/participants/{pid}"),
        signed_in.get("/console/types/vehicles/participants"),
        signed_in.get("/console/types/vehicles/participants",
                      query_string={"attr.registrationNumber": BREAKOUT}),
        signed_in.get("/console/types/vehicles/participants", query_string={"state": SCRIPT}),
        dry_run(signed_in, machine=draft, steps="- eventCode: E-022\n"),
        dry_run(signed_in, steps=f"- properties: {json.dumps({SCRIPT: BREAKOUT})}\n"),
        dry_run(signed_in, start=SCRIPT, steps=BREAKOUT),
        dry_run(signed_in, replay=SCRIPT),
        signed_in.get(f"/console/types/{SCRIPT}"),
        signed_in.get("/console/sign-in", query_string={"next": f"/console/{BREAKOUT}"}),
    ]
    for response in pages:
        assert response.status_code < 500
        assert SCRIPT not in response.text, response.request.url
        assert BREAKOUT not in response.text, response.request.url
        assert "<img" not in response.text
    escaped, breakout = "&lt;script&gt;alert(1)&lt;/script&gt;", str(markupsafe.escape(BREAKOUT))
    assert escaped in pages[0].text and breakout in pages[0].text  # properties, name
    assert f"<code>$.properties[&#34;{escaped}&#34;]</code>" in pages[0].text  # an error path
    assert f"<td>{breakout}</td>" in pages[1].text  # the name in the list
    assert f'value="{breakout}"' in pages[2].text  # the filter kept in its field
    assert escaped in result_of(pages[4].text)  # the draft's description
    assert "Decided under the draft machine" in pages[4].text


def test_hostile_sign_in_input_is_a_4xx(browser):
    for tenant, token in (("x" * 500, "token-a"), ("tenant-\u00e9", "token-a"),
                          ("tenant-a", "t" * 5000), ("", ""), ("tenant-a", "tok\x00en"),
                          (SCRIPT, BREAKOUT)):
        response = sign_in(browser, tenant, token)
        assert 400 <= response.status_code < 500, tenant
        assert SCRIPT not in response.text and BREAKOUT not in response.text
        assert browser.get("/console/").status_code == 303


@pytest.mark.parametrize("method, path, status", [
    ("POST", "/console/types/vehicles", 405),
    ("GET", "/console/sign-out", 405),
    ("PUT", "/console/types/vehicles/dry-run", 405),
    ("GET", "/console/no/such/page", 404),
    ("GET", "/console/static/nothing.css", 404),
    ("GET", "/console/types/%00", 404),
    ("GET", "/console/types/" + "v" * 3000, 404),
])
def test_wrong_methods_and_paths_are_html_4xx_pages(signed_in, method, path, status):
    response = signed_in.open(path, method=method, data={"csrf_token": csrf(signed_in)})
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert "<main" in response.text and "Traceback" not in response.text
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


# -- the session key ----------------------------------------------------------------------------

def test_the_key_file_is_made_once_with_mode_0600_and_read_by_every_process(tmp_path):
    """Many workers starting at once agree on one key; the file is private to its owner."""
    keys, errors = [], []

    def worker():
        try:
            keys.append(instance_key(tmp_path / "instance"))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(keys)) == 1 and re.fullmatch(r"[0-9a-f]{64}", keys[0])
    path = tmp_path / "instance" / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == keys[0]
    assert instance_key(tmp_path / "instance") == keys[0]


def test_without_the_setting_the_instance_folder_key_signs_the_session(app_database, tmp_path):
    """Two apps on one host without PARTICIPANTS_CONSOLE_SECRET_KEY share the instance key
    file, so a cookie of one is good at the other (as for several gunicorn workers)."""
    made = [make_app(app_database), make_app(app_database)]
    try:
        for application in made:
            application.instance_path = str(tmp_path)
        first, second = (a.test_client() for a in made)
        sign_in(first)
        assert (tmp_path / KEY_FILE).is_file()
        second.set_cookie(COOKIE, first.get_cookie(COOKIE, path="/console").value,
                          path="/console")
        assert second.get("/console/").status_code == 200
    finally:
        for application in made:
            close_app(application)


def test_a_short_secret_key_is_a_configuration_error():
    with pytest.raises(ValueError, match="PARTICIPANTS_CONSOLE_SECRET_KEY: expected at least 32"):
        configured_key("short")
    assert configured_key("") is None and configured_key(None) is None
    assert configured_key(KEY) == KEY
