"""Shared fixtures: the test machine folder and its loaded registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent
TEST_MACHINES = Path(__file__).resolve().parent / "data" / "machines"


@pytest.fixture(scope="session")
def registry():
    return load_registry(TEST_MACHINES)


@pytest.fixture(scope="session")
def vehicles(registry):
    return registry["vehicles"]
