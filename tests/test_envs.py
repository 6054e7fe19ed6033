"""The three dependency lists agree, and the running interpreter has what the lock says.

envs/requirements.txt  top-level packages, pinned with == (the venv of `make`)
envs/requirements.lock the full resolved set (pip constraints)
envs/jwst.yaml         the conda environment of `--sdm conda`, same pins under `pip:`
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import yaml

ENVS = Path(__file__).resolve().parents[1] / "envs"
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(?P<version>[^\s;#]+))?\s*(?:[;#].*)?$")


def canonical(name: str) -> str:
    """PEP 503 normalised project name: `Jinja2`, `scikit_image` -> `jinja2`, `scikit-image`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(lines) -> dict[str, str | None]:
    """canonical name -> pinned version (None when unpinned); fails on anything but `name` or `name==version`."""
    pins: dict[str, str | None] = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = REQUIREMENT.match(line)
        assert match, f"cannot parse requirement {raw.strip()!r} (expected name or name==version)"
        name = canonical(match["name"])
        assert name not in pins, f"{match['name']} listed twice"
        pins[name] = match["version"]
    return pins


@pytest.fixture(scope="module")
def requirements() -> dict[str, str | None]:
    return parse_requirements((ENVS / "requirements.txt").read_text().splitlines())


@pytest.fixture(scope="module")
def lock() -> dict[str, str | None]:
    pins = parse_requirements((ENVS / "requirements.lock").read_text().splitlines())
    unpinned = sorted(name for name, version in pins.items() if version is None)
    assert not unpinned, f"requirements.lock must pin every package; unpinned: {unpinned}"
    return pins


@pytest.fixture(scope="module")
def conda_pip() -> dict[str, str | None]:
    env = yaml.safe_load((ENVS / "jwst.yaml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "envs/jwst.yaml needs exactly one `pip:` list"
    return parse_requirements(pip_lists[0])


def test_every_pin_matches_the_lock(requirements, lock):
    missing = sorted(name for name in requirements if name not in lock)
    assert not missing, f"in requirements.txt but not in requirements.lock: {missing}"
    differ = {
        name: (version, lock[name])
        for name, version in requirements.items()
        if version is not None and version != lock[name]
    }
    assert not differ, f"requirements.txt pin != requirements.lock (txt, lock): {differ}"


def test_every_pin_is_in_the_conda_env(requirements, conda_pip):
    pinned = {name: version for name, version in requirements.items() if version is not None}
    missing = sorted(set(pinned) - set(conda_pip))
    assert not missing, f"pinned in requirements.txt but missing from envs/jwst.yaml pip list: {missing}"
    differ = {name: (version, conda_pip[name]) for name, version in pinned.items() if conda_pip[name] != version}
    assert not differ, f"requirements.txt pin != envs/jwst.yaml pin (txt, yaml): {differ}"


def test_conda_env_pins_nothing_else(requirements, conda_pip):
    extra = sorted(set(conda_pip) - set(requirements))
    assert not extra, f"envs/jwst.yaml pip list has packages that requirements.txt lacks: {extra}"
    unpinned = sorted(name for name, version in conda_pip.items() if version is None)
    assert not unpinned, f"envs/jwst.yaml pip list leaves these unpinned: {unpinned}"


def test_installed_versions_match_the_lock(requirements, lock):
    """The interpreter running the tests (normally .venv) has the locked version of each top-level package."""
    wrong = {}
    for name in requirements:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != lock.get(name):
            wrong[name] = (installed, lock.get(name))
    assert not wrong, (
        f"installed != requirements.lock (installed, lock): {wrong}; "
        "reinstall with `rm -f .venv/.installed && make venv`"
    )
