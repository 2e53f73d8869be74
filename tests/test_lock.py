"""The lock files agree with pyproject.toml (issue 14 item 7; no network, well under a second).

``requirements.lock`` pins what the image installs (pyproject's dependencies) and
``requirements-dev.lock`` what ``scripts/setup.sh`` installs (those plus the ``dev`` and ``data``
extras); ``bash scripts/lock.sh`` writes both. The torch pair is deliberately in neither: it is
installed by its own pinned step (setup.sh's default ``TORCH_PACKAGES``, the Dockerfile's
``TORCH_VERSION`` / ``TORCHVISION_VERSION``), and those pins are checked here instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "hssl-search"
TORCH_PAIR = {"torch", "torchvision"}
# What comes with the torch pair's own build and so must not be locked (scripts/lock.sh).
TORCH_BUILD = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*(;\s*(?P<marker>.+))?$"
)
RELOCK = "re-lock with `bash scripts/lock.sh` (README: Reproducible installs)"


@dataclass
class Pin:
    name: str
    version: Version
    marker: str | None
    via: list[str] = field(default_factory=list)


def read_lock(path: Path) -> list[Pin]:
    """Every pin of a uv/pip-compile output file with its ``# via`` annotations."""
    pins: list[Pin] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not line.startswith((" ", "#")):
            match = ENTRY.match(stripped)
            assert match, f"{path.name}: not an exact pin: {line!r}; {RELOCK}"
            name = canonicalize_name(match["name"])
            pins.append(Pin(name, Version(match["version"]), match["marker"]))
        elif pins and stripped.startswith("#") and line.startswith(" "):
            text = stripped.lstrip("#").strip()
            text = text.removeprefix("via").strip()
            if text:
                pins[-1].via.append(text)
    return pins


def pyproject_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


LOCKS = {  # lock file → the extras it covers (what installs from it)
    "requirements.lock": (),
    "requirements-dev.lock": ("dev", "data"),
}


@pytest.fixture(params=sorted(LOCKS))
def lock(request) -> tuple[str, list[Pin], list[Requirement]]:
    path = ROOT / request.param
    assert path.is_file(), f"{request.param} is missing; {RELOCK}"
    return request.param, read_lock(path), pyproject_requirements(*LOCKS[request.param])


def test_every_dependency_is_pinned_at_an_admitted_version(lock):
    name, pins, reqs = lock
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
    problems = []
    for req in reqs:
        key = canonicalize_name(req.name)
        if key in TORCH_PAIR:
            continue  # its own pinned step: test_torch_pair_pins_fit_pyproject
        if key not in by_name:
            problems.append(f"{req} is not in {name}")
            continue
        for pin in by_name[key]:  # a universal lock may pin one per Python/platform split
            if not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{name} pins {pin.name}=={pin.version}, pyproject says {req}")
    assert not problems, "; ".join(problems) + f"; {RELOCK}"


def test_nothing_top_level_is_unknown_and_the_torch_build_is_not_locked(lock):
    name, pins, reqs = lock
    declared = {canonicalize_name(r.name) for r in reqs}
    problems = []
    for pin in pins:
        if TORCH_BUILD.match(pin.name):
            problems.append(f"{pin.name} (installed with the torch pair, never locked)")
        elif not pin.via:
            problems.append(f"{pin.name} (no `# via`: who needs it?)")
        elif any(v.startswith(PROJECT) for v in pin.via) and pin.name not in declared:
            problems.append(f"{pin.name} (top-level but not a dependency in pyproject.toml)")
    assert not problems, f"{name}: " + "; ".join(problems) + f"; {RELOCK}"


def effective(pins: list[Pin]) -> dict[str, Version]:
    """The pins that apply on the image's and CI's platform: Linux x86_64, CPython 3.11."""
    env = {
        "python_full_version": "3.11.7",
        "python_version": "3.11",
        "sys_platform": "linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
    }
    return {p.name: p.version for p in pins if p.marker is None or Marker(p.marker).evaluate(env)}


def test_dev_lock_pins_the_image_lock_versions():
    """.venv and CI test exactly the versions the image installs."""
    image = effective(read_lock(ROOT / "requirements.lock"))
    dev = effective(read_lock(ROOT / "requirements-dev.lock"))
    differ = {n: f"{dev.get(n)} (image {v})" for n, v in image.items() if dev.get(n) != v}
    assert not differ, f"requirements-dev.lock differs from requirements.lock: {differ}; {RELOCK}"


def test_torch_pair_pins_fit_pyproject():
    """The torch pair's own step pins the same versions in setup.sh and the Dockerfile, and
    pyproject's specifiers admit them."""
    setup = (ROOT / "scripts/setup.sh").read_text()
    default = re.search(r'else default_torch="([^"]+)"', setup)
    assert default, "scripts/setup.sh: no default_torch for x86_64"
    setup_pins = dict(p.split("==") for p in default[1].split())
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    docker_pins = {
        "torch": re.search(r"^ARG TORCH_VERSION=(\S+)", dockerfile, re.M)[1],
        "torchvision": re.search(r"^ARG TORCHVISION_VERSION=(\S+)", dockerfile, re.M)[1],
    }
    assert setup_pins == docker_pins, f"setup.sh {setup_pins} != Dockerfile {docker_pins}"
    for req in pyproject_requirements():
        if canonicalize_name(req.name) in TORCH_PAIR:
            version = Version(setup_pins[canonicalize_name(req.name)])
            assert req.specifier.contains(version), f"pyproject's {req} refuses {version}"
