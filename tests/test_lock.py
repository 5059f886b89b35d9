"""The lock file: every dependency pinned with hashes, and the suite runs on exactly those pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?: ; (?P<marker>[^\\]+?))? \\$")


def _pins() -> dict[str, tuple[Version, Marker | None, int]]:
    """name -> (version, marker, number of hashes) for every pin of the lock."""
    pins, current = {}, None
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            marker = Marker(match["marker"]) if match["marker"] else None
            current = canonicalize_name(match["name"])
            pins[current] = (Version(match["version"]), marker, 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, marker, hashes = pins[current]
            pins[current] = (version, marker, hashes + 1)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    build = [line for line in (ROOT / "requirements-build.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return [Requirement(r) for r in project["dependencies"] + extras + build]


def test_every_declared_dependency_is_pinned_within_its_bounds():
    """pyproject.toml's lower bounds and the lock agree: each dependency is locked, in range."""
    pins = _pins()
    problems = []
    for requirement in _declared():
        if requirement.marker and not requirement.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not in requirements.lock: run `make upgrade`")
        elif not requirement.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{requirement.name}=={pin[0]} is outside {requirement.specifier}")
    assert not problems, "\n".join(problems)


def test_every_pin_carries_hashes():
    """pip installs the lock with --require-hashes, so every pin needs at least one hash."""
    pins = _pins()
    assert len(pins) > 20
    assert [name for name, (_v, _m, hashes) in pins.items() if hashes == 0] == []


def test_the_suite_runs_on_the_locked_versions():
    """Every locked package that applies here is installed at exactly the locked version."""
    problems = []
    for name, (version, marker, _hashes) in _pins().items():
        if marker is not None and not marker.evaluate():
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is locked but not installed")
            continue
        if installed != version:
            problems.append(f"{name} {installed} is installed, the lock says {version}")
    assert not problems, "\n".join(problems)
