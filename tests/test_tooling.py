"""The test and lint tools are pinned: a new release of one cannot turn CI red by itself."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints-dev.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: constraints must be exact (==)"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def _dev_extra() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"]["dev"]]


def test_every_dev_tool_is_pinned_within_its_range():
    pins = _pins()
    for req in _dev_extra():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (dev extra) has no exact pin in constraints-dev.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {req}"


def test_make_install_uses_the_constraints_and_they_are_installed():
    install = (REPO / "Makefile").read_text().split("\ninstall:", 1)[1].split("\n\n", 1)[0]
    assert "-c constraints-dev.txt" in install
    for name, pinned in _pins().items():
        assert version(name) == pinned, f"{name} {version(name)} installed, {pinned} pinned"
