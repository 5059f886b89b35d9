"""The bundled machines/ folder: lints clean, loads, and every type is usable."""

from __future__ import annotations

import shutil

import pytest

from engine.errors import DefinitionError, UnknownParticipantType
from engine.lint import lint_paths
from engine.loading.registry import load_registry
from engine.model.decisions import Change, decide
from tests.conftest import ROOT, TEST_MACHINES

MACHINES = ROOT / "machines"


def test_bundled_machines_lint_clean():
    """machines/ has no errors and no warnings."""
    assert [str(p) for p in lint_paths([MACHINES])] == []


def test_bundled_machines_load():
    """Every bundled type loads, with at least four types."""
    registry = load_registry(MACHINES)
    assert len(registry) >= 4
    for plural, ptype in registry.items():
        assert MACHINES.joinpath(f"{plural}.yaml").is_file()
        assert ptype.definition.initial_state in ptype.definition.sub_states


def test_every_file_declares_its_schema():
    """Each machine file starts with the yaml-language-server $schema comment."""
    for path in MACHINES.glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=../engine/schemas/"), path


def test_registry_refuses_definitions_with_lint_errors(tmp_path):
    """A folder with lint errors is refused with file:line positions in the message."""
    shutil.copy(TEST_MACHINES / "codes.yaml", tmp_path)
    text = (TEST_MACHINES / "vehicles.yaml").read_text()
    (tmp_path / "vehicles.yaml").write_text(text.replace("destination: active:active",
                                                         "destination: active:actve", 1))
    with pytest.raises(DefinitionError) as info:
        load_registry(tmp_path)
    assert any(" E202 " in p for p in info.value.problems)
    assert "vehicles.yaml:" in str(info.value)


def test_registry_refuses_a_missing_folder(tmp_path):
    """A folder that does not exist is a DefinitionError, not a crash."""
    with pytest.raises(DefinitionError):
        load_registry(tmp_path / "nope")


def test_unknown_type_is_a_domain_error(registry):
    """Asking for a type that is not loaded raises UnknownParticipantType."""
    with pytest.raises(UnknownParticipantType):
        registry["boats"]


def test_one_machine_per_type_without_models(registry):
    """Each type has one transitions Machine, built without auto transitions or models."""
    for ptype in registry.values():
        machine = ptype.machine.machine
        assert machine.models == []
        assert not machine.auto_transitions
        assert set(machine.states) == set(ptype.definition.sub_states)


def test_diagram_is_mermaid(vehicles):
    """The type's diagram comes from its Machine as a Mermaid state diagram."""
    text = vehicles.machine.diagram()
    assert "stateDiagram-v2" in text and "E-022" in text


def test_deciding_does_not_bind_models(vehicles):
    """Deciding many times never adds a model to the Machine."""
    for _ in range(100):
        decide(vehicles, None, Change(properties={"registrationNumber": "AB-1234"}))
    assert vehicles.machine.machine.models == []
