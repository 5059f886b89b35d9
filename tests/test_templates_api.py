"""Templates through the API: defaults, narrowing, failures, and the type's description."""

from __future__ import annotations

from tests.conftest import BASE, headers

HEAVY = {"templateId": "heavyTruck", "category": "truck", "subCategory": "large"}


def create(client, code: str, properties: dict, **core):
    body = {"uniqueCode": code, "properties": {"registrationNumber": "AB-1234", **properties},
            **core}
    return client.post(f"{BASE}/vehicles", json=body, headers=headers()).get_json()["data"]


def test_template_defaults_and_rules_apply_on_create(client):
    """A participant created with a template gets its defaults and must meet its rules."""
    data = create(client, "T-1", {}, **HEAVY)
    assert data["event"]["payloadValidated"], data
    participant = client.get(f"{BASE}/vehicles/{data['id']}", headers=headers()).get_json()
    assert participant["data"]["properties"]["capacityKg"] == 10000
    assert participant["data"]["templateId"] == "heavyTruck"
    failed = create(client, "T-2", {"capacityKg": 200}, **HEAVY)["event"]
    assert (failed["payloadValidated"], failed["errorCode"]) == (False, "101170021001")
    assert "(template 'heavyTruck')" in failed["errors"][0]["message"]


def test_unknown_and_mismatched_templates_are_failure_events(client):
    """An unknown template and a template of another category fail with their own codes."""
    unknown = create(client, "T-3", {}, templateId="boat")["event"]
    assert (unknown["reason"], unknown["errorCode"]) == ("unknown template", "101170021030")
    mismatch = create(client, "T-4", {}, templateId="heavyTruck", category="bike")["event"]
    assert mismatch["errorCode"] == "101170021031"


def test_update_cannot_break_the_template(client):
    """An update that violates the participant's template is a failure and changes nothing."""
    pid = create(client, "T-5", {}, **HEAVY)["id"]
    reply = client.put(f"{BASE}/vehicles/{pid}", json={"properties": {"axles": 2}},
                       headers=headers()).get_json()["data"]["event"]
    assert reply["payloadValidated"] is False and reply["version"] == 1


def test_participant_types_show_templates(client):
    """GET /participant-types/{plural} lists each template with its overrides."""
    data = client.get(f"{BASE}/participant-types/vehicles", headers=headers()).get_json()["data"]
    heavy = data["templates"]["heavyTruck"]
    assert (heavy["category"], heavy["subCategory"]) == ("truck", "large")
    assert heavy["attributes"]["capacityKg"] == {
        "defaultValue": 10000, "validation": {"required": True, "range": {"min": 5000}}}
