"""Supply chain: what `make` installs is exactly what requirements.lock pins, by hash.

Offline checks (no registry is asked): a dependency added to pyproject.toml without
refreshing the lock, a pin without hashes, or an install step that bypasses the lock
fails here, in CI, before it reaches a machine. The audit itself (pip-audit) needs the
advisory data and runs in `make lint`; docs/testing.md "Supply chain".
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def locked() -> dict[str, tuple[Version, int]]:
    """name → (pinned version, number of hashes) of every pin in the lock."""
    pins: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = (Version(match[2]), 0)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif not line.startswith(" "):
            current = None
    return pins


def requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares: runtime, every extra, build system."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        declared += extra
    declared += project["build-system"]["requires"]
    found = [Requirement(text) for text in declared]
    return [r for r in found if canonicalize_name(r.name) != "sipgw"]  # its own extras


def test_every_requirement_is_pinned_in_the_lock_with_hashes() -> None:
    pins = locked()
    assert pins, "requirements.lock holds no pin"
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement}: run `make lock`"
        )
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert unhashed == [], f"pins without a hash: {unhashed}"
    # The tools that build sipgw and audit the lock are locked too.
    for tool in ("setuptools", "wheel", "pip", "pip-audit", "pip-tools"):
        assert tool in pins, tool


def test_the_lock_says_how_it_was_made() -> None:
    head = LOCK.read_text().split("\n\n", 1)[0]
    assert "pip-compile" in head and "--generate-hashes" in head
    assert "--unsafe-package=sipgw" in head  # sipgw is installed from the work tree
    assert not re.search(r"^sipgw\b|file://", LOCK.read_text(), re.MULTILINE)


def test_make_deps_installs_only_from_the_lock(tmp_path: Path) -> None:
    """What `make deps` would run in a checkout without a venv (make -n: nothing runs)."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed")
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install-system-deps.sh").write_text("#!/bin/sh\n")
    (tmp_path / "scripts" / "install-system-deps.sh").chmod(0o755)
    plan = subprocess.run(
        [make, "-n", "deps"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    installs = [line for line in plan.splitlines() if " install " in line]
    assert len(installs) == 2, plan
    from_lock, itself = installs
    # Exactly the pins (the lock is the whole closure: nothing resolved again), then
    # proven consistent.
    assert "--require-hashes --no-deps -r requirements.lock" in from_lock
    assert re.search(r"pip\S* check", plan), plan
    assert "--no-deps" in itself and "--no-build-isolation" in itself
    # The stamp follows the lock: a changed lock installs again.
    (tmp_path / ".venv").mkdir()
    stamp = re.search(r"touch (\.venv/\.installed-\w+)", plan)
    assert stamp is not None, plan
    (tmp_path / stamp[1]).touch()
    assert (
        " install "
        not in subprocess.run(
            [make, "-n", "deps"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout
    )
    with (tmp_path / "requirements.lock").open("a") as lock:
        lock.write("# changed\n")
    again = subprocess.run(
        [make, "-n", "deps"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "--require-hashes --no-deps -r requirements.lock" in again


def test_lint_audits_the_lock_strictly() -> None:
    plan = subprocess.run(
        ["make", "-n", "audit"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    audit = next(line for line in plan.splitlines() if "pip-audit" in line)
    assert "--strict" in audit and "-r requirements.lock" in audit
    makefile = (REPO / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "audit" in lint
