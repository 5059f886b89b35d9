"""The console (SPEC §8) in a real headless Chromium, against a real gunicorn on either backend.

The browser is Debian's `chromium` (PARTICIPANTS_TEST_CHROMIUM names another executable), driven
by Playwright's sync API. Without either the tests skip, except under CI=true, where they fail.
With PARTICIPANTS_SCREENSHOTS=<folder> (`make screenshots`), the type page and the dry-run page
are saved there as full-page PNGs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import requests

from engine.loading.registry import load_registry
from tests.conftest import BASE, ROOT, Server, assert_clean_log, headers, ledger

CHROMIUM = os.environ.get("PARTICIPANTS_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium calls home at start-up; on a closed network
# those connections are refused and slow every launch.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOTS = os.environ.get("PARTICIPANTS_SCREENSHOTS")
MACHINES = ROOT / "machines"
TIMEOUT_MS = 10_000

DOCUMENTS = [{"docType": kind, "docNumber": "DOC-1234"}
             for kind in ("registrationCertificate", "insurance", "pollutionCertificate")]
PAPERS = {"registrationNumber": "KA01AB1234", "payloadCapacityKg": 1000,
          "vin": "1HGCM82633A004352", "documents": DOCUMENTS}
# From the initial state: papers on file, then E-101 to onboarding:awaitingInspection.
SUBMIT_PAPERS = {"properties": PAPERS,
                 "stateTransition": {"eventCode": "E-101", "reasonCode": "R-0001"}}
# From onboarding:awaitingInspection: no inspection result, so neither E-102 guard holds.
INSPECT_WITHOUT_RESULT = {"stateTransition": {"eventCode": "E-102", "reasonCode": "R-1101"}}
GUARD_FAILED = "101170021094"
INVALID_ATTRIBUTES = "101170021001"

SCRIPT = "<script>window.__xss=1</script>"
ATTRIBUTE_BREAKOUT = '"><img src=x onerror="window.__xss=1">'


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


# -- the browser, the server, a page ------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: run `make setup`")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium, "
                     "or set PARTICIPANTS_TEST_CHROMIUM")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def console(database, tmp_path):
    """gunicorn on a fresh database of each backend with the real machines/ and the test tokens
    (token-a for tenant-a, token-b for tenant-b); its log is checked for tracebacks."""
    server = Server(database, tmp_path / "gunicorn.log",
                    extra_env={"PARTICIPANTS_MACHINES": str(MACHINES),
                               "PARTICIPANTS_CONSOLE_SECRET_KEY": "test-console-key-" + "0" * 32})
    yield server
    assert_clean_log(server.stop())


@pytest.fixture
def page(browser, console):
    """A fresh browser context (no cookies) on the console's server; every request the page
    makes must go to that server."""
    width = 1920 if SCREENSHOTS else 1280  # screenshots wide enough for a whole diagram
    context = browser.new_context(base_url=console.url, viewport={"width": width, "height": 900})
    elsewhere = []

    def only_the_server(route):
        if urlsplit(route.request.url).netloc == urlsplit(console.url).netloc:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    yield opened
    context.close()
    assert elsewhere == [], "the console loaded something from another host"


def expect(target):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def screenshot(page, name: str) -> None:
    """A full-page PNG in PARTICIPANTS_SCREENSHOTS, when it is set."""
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)


# -- the HTTP API beside the console ------------------------------------------------------------

def api(server, method: str, path: str, body=None, tenant: str = "a") -> dict:
    response = requests.request(method, f"{server.url}{BASE}{path}", json=body,
                                headers=headers(tenant), timeout=10)
    assert response.status_code in (200, 202), response.text
    return response.json()


def participant_count(server, plural: str) -> int:
    return api(server, "GET", f"/{plural}")["data"]["meta"]["totalElements"]


def create(server, plural: str, code: str, properties: dict, name: str | None = None) -> str:
    body = {"uniqueCode": code, "properties": properties, **({"name": name} if name else {})}
    data = api(server, "POST", f"/{plural}", body)["data"]
    assert data["event"]["payloadValidated"] is True, data
    return data["id"]


# -- the console's pages ------------------------------------------------------------------------

def sign_in(page, tenant: str = "tenant-a", token: str = "token-a") -> None:
    page.goto("/console/sign-in")
    page.locator("input[name=tenant]").fill(tenant)
    page.locator("input[name=token]").fill(token)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def diagram_node(page, state: str):
    return page.locator(f'[data-testid="state-diagram"] [data-state="{state}"]')


def dry_run(page, plural: str, steps: list[dict]):
    """Submit the dry-run form with `steps` (as JSON); returns the result's step rows."""
    page.goto(f"/console/types/{plural}/dry-run")
    form = page.get_by_test_id("dry-run-form")
    form.locator("textarea[name=steps]").fill(json.dumps(steps, indent=2))
    with page.expect_navigation():
        form.get_by_role("button", name="Run").click()
    result = page.get_by_test_id("dry-run-result")
    expect(result).to_be_visible()
    return result.locator("[data-step-index]")


def participant_page(participant_id: str) -> str:
    return f"/console/participants/{quote(participant_id, safe=':')}"


# -- the tests ----------------------------------------------------------------------------------

def test_signing_in_opens_the_types_page_and_a_wrong_token_stays_signed_out(page):
    """The sign-in form with a valid token lists the types; a wrong token shows an error and
    the console stays closed."""
    for wrong in ("token-wrong", "token-b"):  # unknown, and a real token of another tenant
        sign_in(page, token=wrong)
        expect(page.get_by_role("alert")).to_contain_text("access token")
        expect(page.locator("input[name=token]")).to_be_visible()
        page.goto("/console/")
        assert urlsplit(page.url).path == "/console/sign-in"
        expect(page.locator('a[href$="/console/types/vehicles"]')).to_have_count(0)

    sign_in(page)
    assert urlsplit(page.url).path == "/console/"
    expect(page.get_by_role("heading", level=1)).to_have_text("Participant types")
    expect(page.locator("input[name=token]")).to_have_count(0)
    for plural in load_registry(MACHINES):
        link = page.locator(f'a[href="/console/types/{plural}"]')
        expect(link).to_be_visible()
        expect(page.get_by_role("row").filter(has=link)).to_contain_text("No errors")


def test_the_type_page_draws_every_sub_state_and_transition(page):
    """/console/types/vehicles draws every sub-state of machines/vehicles.yaml as a visible node
    of the state diagram, and labels the transitions with their event codes."""
    definition = load_registry(MACHINES)["vehicles"].definition
    sign_in(page)
    page.goto("/console/types/vehicles")
    diagram = page.get_by_test_id("state-diagram")
    expect(diagram).to_be_visible()
    for state in definition.sub_states:
        expect(diagram_node(page, state)).to_be_visible()
    drawn = set(diagram.locator("[data-state]").evaluate_all(
        "nodes => nodes.map(n => n.dataset.state)"))
    assert drawn == set(definition.sub_states)
    codes = {t.event_code for s in definition.sub_states.values() for t in s.transitions}
    text = diagram.text_content()
    assert [code for code in sorted(codes) if code not in text] == []
    screenshot(page, "type-vehicles.png")


def test_a_dry_run_shows_each_step_highlights_the_reached_state_and_writes_nothing(page,
                                                                                   console):
    """A dry run shows a successful step, highlights the state it reached, shows a failing step
    with its error code, and writes nothing at all."""
    before, rows_before = participant_count(console, "vehicles"), ledger(console)
    sign_in(page)

    steps = dry_run(page, "vehicles", [SUBMIT_PAPERS])
    expect(steps).to_have_count(1)
    expect(steps.nth(0)).to_have_attribute("data-step-index", "0")
    expect(steps.nth(0)).to_have_attribute("data-outcome", "success")
    expect(diagram_node(page, "onboarding:awaitingInspection")).to_have_attribute(
        "data-highlighted", "true")
    expect(page.locator('[data-testid="state-diagram"] [data-highlighted="true"]')).to_have_count(1)
    screenshot(page, "dry-run-vehicles.png")

    steps = dry_run(page, "vehicles", [SUBMIT_PAPERS, INSPECT_WITHOUT_RESULT])
    expect(steps).to_have_count(2)
    expect(steps.nth(0)).to_have_attribute("data-outcome", "success")
    expect(steps.nth(1)).to_have_attribute("data-step-index", "1")
    expect(steps.nth(1)).to_have_attribute("data-outcome", "failure")
    expect(steps.nth(1)).to_contain_text(GUARD_FAILED)
    # A failed step leaves the state where it was: the reached state is still the first step's.
    expect(diagram_node(page, "onboarding:awaitingInspection")).to_have_attribute(
        "data-highlighted", "true")

    assert participant_count(console, "vehicles") == before
    assert ledger(console) == rows_before


def test_the_participant_page_shows_the_history_with_failures_and_their_errors(page, console):
    """A participant's page lists its events oldest first, the refused update with its error
    code and errors, and highlights the participant's state on the diagram."""
    pid = create(console, "vehicles", "V-1", {"registrationNumber": "KA01AB1234",
                                              "payloadCapacityKg": 1000})
    api(console, "PUT", f"/vehicles/{pid}", SUBMIT_PAPERS)
    refused = api(console, "PUT", f"/vehicles/{pid}", {"properties": {"manufactureYear": 1990}})
    assert refused["data"]["event"]["errorCode"] == INVALID_ATTRIBUTES

    sign_in(page)
    page.goto(participant_page(pid))
    history = page.get_by_test_id("event-history")
    expect(history).to_be_visible()
    rows = history.locator("tbody tr")
    expect(rows).to_have_count(3)
    assert [rows.nth(i).get_attribute("data-outcome") for i in range(3)] == [
        "success", "success", "failure"]
    expect(rows.nth(0)).to_contain_text("ParticipantCreationSuccessEvent")
    expect(rows.nth(1)).to_contain_text("E-101")
    expect(rows.nth(2)).to_contain_text(INVALID_ATTRIBUTES)
    expect(rows.nth(2)).to_contain_text("$.properties.manufactureYear")
    assert [i for i, text in enumerate(rows.all_inner_texts()) if INVALID_ATTRIBUTES in text] \
        == [2]
    expect(diagram_node(page, "onboarding:awaitingInspection")).to_have_attribute(
        "data-highlighted", "true")


def test_markup_in_names_and_properties_is_shown_as_text_and_never_runs(page, console):
    """A participant whose name and a property hold markup is shown literally on its page and in
    the list; no script runs and no dialog opens."""
    dialogs, errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    pid = create(console, "hubs", "H-1", {"hubCode": "BLR-01", "city": ATTRIBUTE_BREAKOUT},
                 name=SCRIPT)

    sign_in(page)
    for path in (participant_page(pid), "/console/types/hubs/participants"):
        page.goto(path)
        expect(page.get_by_text(SCRIPT, exact=False).first).to_be_visible()
        expect(page.get_by_text(ATTRIBUTE_BREAKOUT, exact=False).first).to_be_visible()
        assert page.evaluate("typeof window.__xss") == "undefined", path
        assert page.locator("img[src=x]").count() == 0, path
    assert dialogs == []
    assert errors == []


def _focus_order(page, presses: int = 40) -> list[dict]:
    """What Tab focuses, press by press, from the top of a freshly loaded page."""
    seen = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        seen.append(page.evaluate(
            "() => { const e = document.activeElement; return {tag: e.tagName.toLowerCase(),"
            " name: e.getAttribute('name'), href: e.getAttribute('href'),"
            " text: (e.innerText || e.value || '').trim()}; }"))
    return seen


def _labelled(page, form) -> None:
    """Every visible field of `form` has a label that page.get_by_label finds it by."""
    fields = form.locator("input:not([type=hidden]), textarea, select")
    assert fields.count() > 0
    for i in range(fields.count()):
        field = fields.nth(i)
        label = field.evaluate("e => e.labels.length ? e.labels[0].innerText.trim() : ''")
        assert label, field.evaluate("e => e.outerHTML")
        expect(page.get_by_label(label, exact=True)).to_have_attribute(
            "name", field.get_attribute("name"))


def test_tab_reaches_the_skip_link_then_the_fields_and_every_field_has_a_label(page):
    """From the top of the sign-in page, Tab reaches the skip link first (Enter on it moves the
    focus to the main content), then the tenant and token fields; on the sign-in and dry-run
    pages every field has a label."""
    page.goto("/console/sign-in")
    order = _focus_order(page, presses=10)
    assert order[0]["tag"] == "a" and (order[0]["href"] or "").startswith("#"), order
    assert "skip" in order[0]["text"].lower(), order
    target = order[0]["href"][1:]
    expect(page.locator(f'[id="{target}"]')).to_have_count(1)
    page.reload()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the skip link moves the focus past the header
    assert page.evaluate("document.activeElement.id") == target
    names = [f["name"] for f in order]
    assert "tenant" in names and "token" in names, order
    assert names.index("tenant") < names.index("token"), order
    assert {"tag": "button", "name": None, "href": None, "text": "Sign in"} in \
        order[names.index("token"):], order
    _labelled(page, page.locator("form").filter(has=page.locator("input[name=token]")))

    sign_in(page)
    page.goto("/console/types/vehicles/dry-run")
    order = _focus_order(page)
    assert "skip" in order[0]["text"].lower(), order
    assert "steps" in [f["name"] for f in order], order
    _labelled(page, page.get_by_test_id("dry-run-form"))
