"""constraints.txt pins the whole environment; pyproject.toml the direct dependencies.

`make setup` installs with both, so they must agree, and the constraints must
cover every package that stylepipe (with its test extra) pulls in: a new
dependency added to pyproject.toml without `make lock` would otherwise be
installed at whatever version is newest on the day.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"constraints.txt:{number}: not `name==version`: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[key] = version.strip()
    return pins


def test_pyproject_pins_are_the_constraints():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = constraints()
    direct = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    differ = []
    for text in direct:
        req = Requirement(text)
        (spec,) = req.specifier  # exact pins only
        assert spec.operator == "==", f"pyproject.toml: {text} is not an exact pin"
        if pins.get(canonicalize_name(req.name)) != spec.version:
            differ.append(f"{req.name}: pyproject {spec.version}, constraints {pins.get(canonicalize_name(req.name))}")
    assert not differ, "pyproject.toml and constraints.txt disagree (run `make lock`): " + "; ".join(differ)


def requirement_closure(root: str, extras: set[str]) -> set[str]:
    """Every distribution that installing ``root[extras]`` brings in, by its installed metadata."""
    seen: set[str] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            key = canonicalize_name(req.name)
            if key not in seen:
                seen.add(key)
                todo.append((req.name, set(req.extras)))
    return seen


def test_constraints_cover_everything_stylepipe_installs():
    needed = requirement_closure("stylepipe", {"test"})
    assert {"torch", "dvc", "snakemake", "pytest", "dvc-data"} <= needed  # the walk reaches transitive ones
    missing = sorted(needed - constraints().keys())
    assert not missing, f"not in constraints.txt (run `make lock`): {missing}"


def test_installed_versions_are_the_constraints():
    """What `make setup` installed is what the file says (the suite runs in that environment)."""
    pins = constraints()
    differ = [f"{name} {metadata.version(name)} (constraints: {pins[name]})"
              for name in sorted(requirement_closure("stylepipe", {"test"}))
              if name in pins and metadata.version(name) != pins[name]]
    assert not differ, "installed versions differ from constraints.txt (rerun `make setup`): " + ", ".join(differ)
