"""The decision API: every outcome kind, combined updates, and atomic failures."""

from __future__ import annotations

import pytest

from engine.model import failures as F
from engine.model.decisions import Change, Snapshot, decide, merge_patch

VALID = {"registrationNumber": "AB-1234", "fuelType": "Diesel", "verified": False}
ACTIVE = {**VALID, "verified": True, "capacityKg": 1000}

# (id, state, properties, change, expected kind or None, expected state, expected issue paths)
CASES = [
    ("attribute update", "onboarding:pending", VALID,
     Change(properties={"capacityKg": 10}), None, "onboarding:pending", []),
    ("combined update passes the guard only thanks to its own properties",
     "onboarding:pending", VALID,
     Change(properties={"verified": True, "capacityKg": 5}, event_code="E-022",
            reason_code="R-0001"),
     None, "active:active", []),
    ("bare main-state destination resolves to its default sub-state",
     "active:active", ACTIVE, Change(event_code="E-023"), None, "inactive:inactive", []),
    ("exclusive guards choose the first destination", "onboarding:pending", VALID,
     Change(properties={"inspectionPassed": True}, event_code="E-101"),
     None, "onboarding:inspected", []),
    ("exclusive guards choose the second destination", "onboarding:pending", VALID,
     Change(properties={"inspectionPassed": False}, event_code="E-101"),
     None, "onboarding:failedInspection", []),
    ("invalid state transition", "onboarding:pending", VALID,
     Change(event_code="E-023"), F.INVALID_STATE_TRANSITION, None,
     ["$.stateTransition.eventCode"]),
    ("terminal state has no way out", "inactive:dead", VALID,
     Change(event_code="E-022"), F.INVALID_STATE_TRANSITION, None,
     ["$.stateTransition.eventCode"]),
    ("unknown event", "onboarding:pending", VALID,
     Change(event_code="E-999"), F.UNKNOWN_EVENT, None, ["$.stateTransition.eventCode"]),
    ("undeclared reason", "active:active", ACTIVE,
     Change(event_code="E-023", reason_code="R-9999"), F.REASON_NOT_ALLOWED, None,
     ["$.stateTransition.reasonCode"]),
    ("declared reason the event does not allow", "active:active", ACTIVE,
     Change(event_code="E-023", reason_code="R-5334"), F.REASON_NOT_ALLOWED, None,
     ["$.stateTransition.reasonCode"]),
    ("guard fails", "onboarding:pending", VALID,
     Change(properties={"capacityKg": 5}, event_code="E-022"), F.GUARD_FAILED, None,
     ["$.properties.verified"]),
    ("destination invariant fails", "onboarding:pending", VALID,
     Change(properties={"verified": True}, event_code="E-022"), F.INVARIANT_FAILED, None,
     ["$.properties.capacityKg"]),
    ("attribute-only change is held to the current sub-state's invariant",
     "active:active", ACTIVE, Change(properties={"capacityKg": None}),
     F.INVARIANT_FAILED, None, ["$.properties.capacityKg"]),
    ("valid transition with an invalid attribute fails with the attribute reported",
     "onboarding:pending", VALID,
     Change(properties={"verified": True, "capacityKg": -1}, event_code="E-022"),
     F.INVALID_ATTRIBUTES, None, ["$.properties.capacityKg"]),
    ("valid attributes with an invalid transition fail as an invalid transition",
     "onboarding:pending", VALID,
     Change(properties={"capacityKg": 10}, event_code="E-024"),
     F.INVALID_STATE_TRANSITION, None, ["$.stateTransition.eventCode"]),
    ("invalid transition and invalid attributes are reported together",
     "onboarding:pending", VALID,
     Change(properties={"capacityKg": "heavy", "nope": 1}, event_code="E-024"),
     F.INVALID_STATE_TRANSITION, None,
     ["$.stateTransition.eventCode", "$.properties.nope", "$.properties.capacityKg"]),
    ("unknown attribute", "onboarding:pending", VALID,
     Change(properties={"colour": "red"}), F.UNKNOWN_ATTRIBUTE, None, ["$.properties.colour"]),
    ("every bad value is reported with its path", "onboarding:pending", VALID,
     Change(properties={"registrationNumber": "x", "axles": 2.5, "fuelType": "Coal",
                        "documents": ["a", 1], "address": {"city": 5}}),
     F.INVALID_ATTRIBUTES, None,
     ["$.properties.registrationNumber", "$.properties.axles", "$.properties.fuelType",
      "$.properties.documents", "$.properties.address"]),
    ("removing a required attribute", "onboarding:pending", VALID,
     Change(properties={"registrationNumber": None}), F.INVALID_ATTRIBUTES, None,
     ["$.properties.registrationNumber"]),
    ("array item count range", "onboarding:pending", VALID,
     Change(properties={"documents": ["a", "b", "c", "d"]}), F.INVALID_ATTRIBUTES, None,
     ["$.properties.documents"]),
    ("booleans are not numbers", "onboarding:pending", VALID,
     Change(properties={"capacityKg": True}), F.INVALID_ATTRIBUTES, None,
     ["$.properties.capacityKg"]),
    ("category not declared", "onboarding:pending", VALID,
     Change(core={"category": "boat"}), F.INVALID_CATEGORY, None, ["$.category"]),
    ("subCategory not in its category", "onboarding:pending", VALID,
     Change(core={"category": "truck", "subCategory": "huge"}), F.INVALID_CATEGORY, None,
     ["$.subCategory"]),
    ("subCategory of a category", "onboarding:pending", VALID,
     Change(core={"category": "truck", "subCategory": "large"}), None,
     "onboarding:pending", []),
    ("owner outside allowedOwners", "onboarding:pending", VALID,
     Change(core={"owner": "drivers:42"}), F.INVALID_OWNER, None, ["$.owner"]),
    ("owner inside allowedOwners", "onboarding:pending", VALID,
     Change(core={"owner": "operators:42"}), None, "onboarding:pending", []),
    ("event data validations on the state-event API", "onboarding:pending",
     {**VALID, "inspectionPassed": True},
     Change(event_code="E-101", event_data={"inspector": "Bob", "score": 101},
            event_path="$"),
     F.INVALID_EVENT_DATA, None, ["$.data.inspector", "$.data.score"]),
    ("missing required event data", "onboarding:pending", {**VALID, "inspectionPassed": True},
     Change(event_code="E-101", event_data={}, event_path="$"),
     F.INVALID_EVENT_DATA, None, ["$.data.inspector"]),
    ("valid event data", "onboarding:pending", {**VALID, "inspectionPassed": True},
     Change(event_code="E-101", event_data={"inspector": "bob", "score": 99},
            event_path="$", reason_code="R-7001"),
     None, "onboarding:inspected", []),
]


@pytest.mark.parametrize(
    ("state", "properties", "change", "kind", "expected_state", "paths"),
    [case[1:] for case in CASES], ids=[case[0] for case in CASES],
)
def test_decision_table(vehicles, state, properties, change, kind, expected_state, paths):
    """Each request gets the outcome or the failure kind, with every problem's path."""
    result = decide(vehicles, Snapshot(state, properties), change)
    if kind is None:
        assert result.ok, result
        assert result.state == expected_state
        assert result.transitioned == (change.event_code is not None)
    else:
        assert not result.ok
        assert result.kind is kind
        assert result.error_code == kind.code
        assert [i.path for i in result.issues] == paths


def test_invalid_state_transition_matches_the_seed(vehicles):
    """An event without a transition from the state fails exactly as the seed's example."""
    result = decide(vehicles, Snapshot("onboarding:pending", VALID), Change(event_code="E-023"))
    assert (result.reason, result.error_code) == ("invalid state transition", "101170021090")


def test_success_applies_the_patch(vehicles):
    """A successful combined update returns the patched properties and the new state."""
    result = decide(vehicles, Snapshot("onboarding:pending", VALID, {"name": "A"}),
                    Change(properties={"verified": True, "capacityKg": 5}, event_code="E-022",
                           core={"name": "B"}))
    assert result.properties == {**VALID, "verified": True, "capacityKg": 5}
    assert result.core == {"name": "B"}
    assert result.previous_state == "onboarding:pending"


def test_failure_leaves_the_input_untouched(vehicles):
    """A failed decision never mutates the participant it was given."""
    properties = dict(VALID)
    decide(vehicles, Snapshot("onboarding:pending", properties),
           Change(properties={"verified": True, "capacityKg": -5}, event_code="E-022"))
    assert properties == VALID


def test_create_starts_in_the_initial_state_with_defaults(vehicles):
    """A create starts in the first main state's default sub-state, with defaultValues."""
    result = decide(vehicles, None, Change(properties={"registrationNumber": "AB-1234"}))
    assert result.ok
    assert result.state == "onboarding:pending"
    assert result.properties == {"registrationNumber": "AB-1234", "fuelType": "Diesel",
                                 "verified": False}
    assert result.previous_state is None


def test_create_reports_missing_required_attributes(vehicles):
    """A create without a required attribute fails and names it."""
    result = decide(vehicles, None, Change(properties={}))
    assert result.kind is F.INVALID_ATTRIBUTES
    assert [i.path for i in result.issues] == ["$.properties.registrationNumber"]


def test_create_can_override_a_default(vehicles):
    """An explicit value replaces the defaultValue on create."""
    result = decide(vehicles, None,
                    Change(properties={"registrationNumber": "AB-1234", "fuelType": "CNG"}))
    assert result.properties["fuelType"] == "CNG"


@pytest.mark.parametrize(("target", "patch", "expected"), [
    ({"a": 1}, {"a": None}, {}),
    ({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}, {"a": {"c": 2, "d": 3}}),
    ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
    ({"a": 1}, {"b": {"c": None}}, {"a": 1, "b": {}}),
    ({"a": {"b": 1}}, {"a": 5}, {"a": 5}),
])
def test_merge_patch_follows_rfc_7396(target, patch, expected):
    """Objects merge recursively, null removes a key, anything else replaces."""
    assert merge_patch(target, patch) == expected


# -- templates -----------------------------------------------------------------------------------

HEAVY = {"templateId": "heavyTruck", "category": "truck", "subCategory": "large"}


def test_template_defaults_apply_on_create(vehicles):
    """A create with a template gets the template's defaults over the type's."""
    result = decide(vehicles, None, Change(properties={"registrationNumber": "AB-1234"},
                                           core=HEAVY))
    assert result.ok, result
    assert result.properties["capacityKg"] == 10000
    result = decide(vehicles, None, Change(properties={"registrationNumber": "AB-1234"},
                                           core={"templateId": "anyVehicle"}))
    assert result.properties["fuelType"] == "Electric"


def test_template_narrows_validation(vehicles):
    """Values the type allows but the template forbids fail, naming the template."""
    result = decide(vehicles, None, Change(
        properties={"registrationNumber": "AB-1234", "capacityKg": 100, "axles": 2}, core=HEAVY))
    assert result.kind is F.INVALID_ATTRIBUTES
    assert [i.path for i in result.issues] == ["$.properties.capacityKg", "$.properties.axles"]
    assert all("(template 'heavyTruck')" in i.message for i in result.issues)


def test_template_required_attribute(vehicles):
    """An attribute the template requires cannot be removed."""
    current = Snapshot("onboarding:pending", {**VALID, "capacityKg": 9000}, HEAVY)
    result = decide(vehicles, current, Change(properties={"capacityKg": None}))
    assert result.kind is F.INVALID_ATTRIBUTES


def test_unknown_template_is_its_own_failure(vehicles):
    """A templateId that names no template fails with its own code."""
    result = decide(vehicles, None, Change(properties={"registrationNumber": "AB-1234"},
                                           core={"templateId": "boat"}))
    assert (result.kind, [i.path for i in result.issues]) == (F.UNKNOWN_TEMPLATE,
                                                               ["$.templateId"])
    assert result.error_code == "101170021030"


def test_template_of_another_category_is_its_own_failure(vehicles):
    """A template whose category differs from the participant's fails with its own code."""
    result = decide(vehicles, None, Change(properties={"registrationNumber": "AB-1234"},
                                           core={**HEAVY, "subCategory": "small"}))
    assert result.kind is F.TEMPLATE_MISMATCH
    assert result.error_code == "101170021031"
    assert [i.path for i in result.issues] == ["$.subCategory"]


def test_switching_template_on_update_fills_missing_defaults(vehicles):
    """An update that takes a template gets its defaults only where values are missing."""
    current = Snapshot("onboarding:pending", {**VALID, "fuelType": "CNG"})
    result = decide(vehicles, current, Change(core={"templateId": "anyVehicle"}))
    assert result.ok and result.properties["fuelType"] == "CNG"
